"""Shared fixtures: the offline assets folder (skipped cleanly when absent) and generated images."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"

#: Keras reference means of idealo's NIMA on the sample AVA images (assets/nima_idealo/README.txt).
IDEALO_KERAS_MEANS = {
    "42039.jpg": 5.154,
    "42040.jpg": 4.232,
    "42041.jpg": 5.450,
    "42042.jpg": 5.164,
    "42044.jpg": 5.729,
    "800749.jpg": 6.081,
}


def asset(relative: str) -> Path:
    """Path of a file under the shared assets folder, or skip the test when it is not there."""
    path = ASSETS / relative
    if not path.exists():
        pytest.skip(f"offline asset not available: {relative}")
    return path


@pytest.fixture
def idealo_weights(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make idealo's NIMA weights findable through BEHOLDER_WEIGHTS_PATH; the cache is a temp dir."""
    folder = asset("nima_idealo/weights_mobilenet_aesthetic_0.07.hdf5").parent
    monkeypatch.setenv("BEHOLDER_WEIGHTS_PATH", str(folder))
    return folder


@pytest.fixture(scope="session")
def shared_onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export cache for the session: entries are keyed by content and verified on use, so
    sharing them is safe, and the default model is exported once rather than once per test."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(autouse=True)
def isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, shared_onnx_cache: Path
) -> Path:
    """Never read or write the user's real cache from tests."""
    cache = tmp_path_factory.mktemp("beholder-cache")
    monkeypatch.setenv("BEHOLDER_CACHE", str(cache))
    monkeypatch.setenv("BEHOLDER_ONNX_CACHE", str(shared_onnx_cache))
    return cache


@pytest.fixture
def sample_images() -> Path:
    return asset("ava_sample/images")


def make_photo(
    path: Path, size=(320, 240), seed: int = 0, mode: str = "RGB", fmt: str = "JPEG", **save
) -> Path:
    """Write a smooth, photo-like test image in any PIL mode and format."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x / max(width, 1), y / max(height, 1), (x + y) / (width + height)], -1) * 255
    pixels = np.clip(pixels * rng.uniform(0.4, 1.0, 3) + rng.normal(0, 8, pixels.shape), 0, 255).astype(
        np.uint8
    )
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **save)
    return path


#: Debian's Chromium (installed by .ci/install-browser.sh); "" when absent.
CHROMIUM = next(
    (
        p
        for p in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or "")
        if p
    ),
    "",
)
#: Headless and quiet: without the background-networking flags Chromium keeps calling home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    """A headless Chromium driven by playwright (no browser download); skips cleanly without either."""
    if not CHROMIUM or not os.path.exists(CHROMIUM):
        pytest.skip("chromium not installed (run .ci/install-browser.sh)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()

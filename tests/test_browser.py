"""The web page end to end: `beholder serve` in a subprocess, driven by headless Chromium.

Needs Debian's ``chromium`` (``.ci/install-browser.sh``) and the ``playwright`` Python package
(which drives an existing Chromium; no browser download). Skips cleanly without them. The
screenshot goes to ``$BEHOLDER_TEST_ARTIFACTS`` (default: the test's tmp_path).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_photos(folder: Path) -> list:
    """Three different generated 'photos': a warm gradient, a cool one, and a busy noisy one."""
    y, x = np.mgrid[0:300, 0:400]
    looks = {
        "sunset.jpg": np.stack([200 + 0 * x, 120 + y / 6, 60 + x / 10], -1),
        "lake.jpg": np.stack([40 + 0 * x, 90 + x / 8, 160 + y / 4], -1),
        "clutter.jpg": np.random.default_rng(0).integers(0, 255, (300, 400, 3)),
    }
    paths = []
    for name, pixels in looks.items():
        path = folder / name
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture
def server(tmp_path):
    env = dict(os.environ)
    port = free_port()
    # idealo's trained model ships in the package, so the screenshot shows meaningful scores.
    command = [sys.executable, "-m", "beholder", "serve", "--model", "nima-mobilenet-idealo"]
    command += ["--port", str(port), "--runtime", "torch", "--log-level", "warning"]
    log = (tmp_path / "server.log").open("w+")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"beholder serve exited with {process.returncode}:\n{log.read()}")
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("beholder serve did not answer /healthz within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("BEHOLDER_TEST_ARTIFACTS") or tmp_path / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_web_page_ranks_dropped_photos(server, browser, artifacts, tmp_path):
    photos = write_photos(tmp_path)
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(server)
    page.wait_for_function("document.querySelector('#model').textContent.includes('runtime torch')")

    page.set_input_files("#file-input", [str(p) for p in photos])
    page.wait_for_function(
        "document.querySelectorAll('#results .card:not(.error)').length === 3", timeout=60_000
    )

    cards = page.locator("#results .card")
    assert cards.count() == 3
    shown = [float(cards.nth(i).locator(".mean").inner_text()) for i in range(3)]
    exact = [float(cards.nth(i).get_attribute("data-mean")) for i in range(3)]
    assert exact == sorted(exact, reverse=True)  # ranked best first
    assert shown == [round(m, 2) for m in exact]
    # Each card says what its mean means: the share of AVA photos rated lower.
    percentiles = [float(cards.nth(i).get_attribute("data-percentile")) for i in range(3)]
    assert percentiles == sorted(percentiles, reverse=True)  # monotone in the mean
    labels = [cards.nth(i).locator(".percentile").inner_text() for i in range(3)]
    assert labels == [f"beats {int(p + 0.5)}% of AVA" for p in percentiles]  # JavaScript's Math.round
    assert [cards.nth(i).locator(".rank").inner_text() for i in range(3)] == ["#1", "#2", "#3"]
    names = [cards.nth(i).locator(".name").inner_text() for i in range(3)]
    assert sorted(names) == sorted(p.name for p in photos)
    for i in range(3):
        bars = cards.nth(i).locator("svg.chart rect.bar")
        assert bars.count() == 10
        total = sum(float(bars.nth(k).get_attribute("data-probability")) for k in range(10))
        assert total == pytest.approx(1.0, abs=1e-4)
        assert cards.nth(i).locator("img").evaluate("img => img.complete && img.naturalWidth > 0")
    page.screenshot(path=str(artifacts / "web-page-ranked.png"), full_page=True)

    # A file that is not an image becomes an error card that names it; the ranking stays.
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    page.set_input_files("#file-input", [str(notes)])
    page.wait_for_selector("#results .card.error")
    error = page.locator("#results .card.error")
    assert "notes.txt" in error.locator(".name").inner_text()
    assert "not an image" in error.locator(".message").inner_text()
    assert page.locator("#results .card:not(.error)").count() == 3
    assert "could not be scored" in page.locator("#status").inner_text()
    page.screenshot(path=str(artifacts / "web-page-with-error.png"), full_page=True)

    # Self-contained: everything the page loaded came from this server or from the dropped files.
    foreign = [u for u in requests if not u.startswith((server, "blob:", "data:"))]
    assert foreign == []
    assert (artifacts / "web-page-ranked.png").stat().st_size > 10_000

"""HEIC, AVIF and camera RAW: they open, score like PNG, and a missing extra names its package."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from beholder import formats
from beholder.errors import ImageLoadError
from beholder.imageio import open_image
from beholder.preprocessing import load_input
from raw_images import make_dng


def _scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A textured scene: shapes with edges, smooth shading and moderate grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 37.0) * np.cos(y / 23.0)], -1) * 200
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(width / 40, width / 4)
        pixels[(x - cx) ** 2 + (y - cy) ** 2 < r**2] = rng.uniform(0, 255, 3)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _mean_score(model, path: Path) -> float:
    import torch

    batch = torch.from_numpy(load_input(path, model.preprocessing))[None]
    with torch.no_grad():
        probabilities = torch.softmax(model(batch), dim=-1)[0].numpy()
    return float(probabilities @ np.arange(1, 11))


@pytest.mark.slow
def test_heic_avif_and_dng_preview_score_like_png(tmp_path: Path, idealo_weights: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pytest.importorskip("rawpy")
    pytest.importorskip("tifffile")
    from beholder.models import create_model

    model = create_model(progress=False)
    photo = _scene(1200, 900)
    png = tmp_path / "photo.png"
    photo.save(png)
    pillow_heif.register_heif_opener()
    photo.save(tmp_path / "photo.heic", quality=95)
    photo.save(tmp_path / "photo.avif", quality=95, subsampling="4:4:4")  # lossy 4:2:0 alone moves 0.04
    make_dng(tmp_path / "photo.dng", (2400, 1800), preview=photo)
    reference = _mean_score(model, png)
    for suffix in ("heic", "avif", "dng"):
        path = tmp_path / f"photo.{suffix}"
        assert open_image(path).size == (1200, 900), path
        assert abs(_mean_score(model, path) - reference) <= 0.02, (
            suffix,
            _mean_score(model, path),
            reference,
        )


def test_heif_files_open_under_any_name(tmp_path: Path) -> None:
    pytest.importorskip("pillow_heif").register_heif_opener()  # to write the file
    path = tmp_path / "IMG_0001.jpg"  # a misnamed HEIC, as phones and transfer tools produce
    _scene(160, 120).save(tmp_path / "x.heic", quality=90)
    path.write_bytes((tmp_path / "x.heic").read_bytes())
    assert formats.sniff_heif(path.read_bytes()[:64]) == "heif"
    assert open_image(path).size == (160, 120)


def test_avif_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (60, 40), (200, 10, 10))
    image.paste((10, 10, 200), (30, 0, 60, 40))  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: the right half ends at the bottom
    path = tmp_path / "rotated.avif"
    try:
        image.save(path, exif=exif, quality=95)
    except KeyError:
        pytest.skip("this Pillow cannot write AVIF")
    upright = open_image(path)
    assert upright.size == (40, 60)
    assert upright.getpixel((20, 5))[0] > 150 and upright.getpixel((20, 55))[2] > 150


def test_missing_heif_extra_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    path = tmp_path / "a.heic"
    _scene(64, 48).save(path, quality=90)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if not installed
    monkeypatch.setattr(formats, "_heif_registered", False)
    with pytest.raises(ImageLoadError, match=r"a\.heic: .*pip install 'beholder\[heif\]'"):
        open_image(path)


def test_missing_raw_extra_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "IMG_1.CR2"
    path.write_bytes(b"II*\x00" + bytes(64))
    monkeypatch.setitem(sys.modules, "rawpy", None)
    with pytest.raises(
        ImageLoadError, match=r"IMG_1\.CR2: camera RAW files need rawpy: pip install 'beholder\[raw\]'"
    ):
        open_image(path)


def test_raw_without_preview_is_demosaiced_at_half_size(tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    pytest.importorskip("tifffile")
    path = make_dng(tmp_path / "bare.dng", (640, 480))
    image = open_image(path)
    assert image.mode == "RGB" and image.size == (320, 240)


def test_raw_small_thumbnails_are_not_previews() -> None:
    rawpy = pytest.importorskip("rawpy")
    small = SimpleNamespace(format=rawpy.ThumbFormat.BITMAP, data=np.zeros((120, 160, 3), np.uint8))
    large = SimpleNamespace(format=rawpy.ThumbFormat.BITMAP, data=np.zeros((2000, 3000, 3), np.uint8))
    assert formats.choose_preview(small, (6000, 4000)) is None
    assert formats.choose_preview(large, (6000, 4000)).size == (3000, 2000)


def test_corrupt_raw_is_a_named_error(tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    path = tmp_path / "broken.nef"
    path.write_bytes(b"not a raw file at all" * 100)
    with pytest.raises(ImageLoadError, match=r"broken\.nef: unreadable camera RAW file"):
        open_image(path)

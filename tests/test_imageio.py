"""Image loading: odd modes become RGB, EXIF rotation is applied, bad files give named errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_images import bad_files, huge_png_header, odd_mode_files
from beholder.errors import ImageLoadError
from beholder.imageio import open_image


def test_odd_modes_convert_to_rgb(tmp_path: Path) -> None:
    for path, mode in odd_mode_files(tmp_path).items():
        assert Image.open(path).mode.startswith(mode[0])
        image = open_image(path)
        assert image.mode == "RGB" and image.size == (320, 240), path


def test_sixteen_bit_greyscale_keeps_its_tones(tmp_path: Path) -> None:
    path = odd_mode_files(tmp_path)
    grey16 = next(p for p, mode in path.items() if mode == "I;16")
    pixels = np.asarray(open_image(grey16))
    # A 0..65535 ramp must become a 0..255 ramp, not a clipped white image.
    assert pixels[0, 0, 0] == 0 and pixels[-1, -1, 0] == 255
    assert 100 < pixels[120, 160, 0] < 156


def test_alpha_is_composited_on_white(tmp_path: Path) -> None:
    path = tmp_path / "transparent.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert open_image(path).getpixel((3, 3)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = open_image(path)
    assert image.size == (20, 40)
    top = np.asarray(image)[2, 10]
    assert top[0] > 200 and top[2] < 60  # the red half is now on top


def test_every_bad_file_gives_an_error_naming_it(tmp_path: Path) -> None:
    for path, words in bad_files(tmp_path).items():
        with pytest.raises(ImageLoadError) as info:
            open_image(path)
        assert words in info.value.problem, (path, info.value.problem)
        assert str(info.value).startswith(path)


def test_pixel_limit_is_per_call(tmp_path: Path) -> None:
    global_limit = Image.MAX_IMAGE_PIXELS
    path = tmp_path / "small.png"
    Image.new("RGB", (100, 100)).save(path)
    assert open_image(path, max_pixels=10_000).size == (100, 100)
    with pytest.raises(ImageLoadError, match="too many pixels"):
        open_image(path, max_pixels=9_999)
    # The global PIL limit is untouched.
    assert global_limit == Image.MAX_IMAGE_PIXELS


def test_bomb_header_fails_before_decoding(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="too many pixels"):
        open_image(huge_png_header(tmp_path / "bomb.png"))


def test_bytes_and_pil_inputs(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("P", (5, 4)).save(path)
    assert open_image(path.read_bytes(), name="upload.png").size == (5, 4)
    with pytest.raises(ImageLoadError, match=r"upload\.bin: empty"):
        open_image(b"", name="upload.bin")
    assert open_image(Image.new("L", (3, 3))).mode == "RGB"

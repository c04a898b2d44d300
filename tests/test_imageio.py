"""Image loading: odd modes become RGB, EXIF rotation is applied, bad files give named errors."""

from __future__ import annotations

import builtins
import errno
import os
import threading
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_images import (
    bad_files,
    corrupt_exif_jpeg,
    huge_png_header,
    nan_float_tiff,
    odd_mode_files,
    sixteen_bit_grey_png,
)
from beholder.errors import ImageLoadError
from beholder.imageio import IMAGE_SUFFIXES, DecodeBudget, open_image


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


def test_grey_with_associated_alpha_converts_like_its_unpremultiplied_form(tmp_path: Path) -> None:
    """A greyscale TIFF whose ExtraSamples says 'associated alpha' opens in Pillow's mode 'La'."""
    import io
    import struct

    straight = Image.new("LA", (40, 30), (100, 128))
    buffer = io.BytesIO()
    straight.save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    tag = data.find(struct.pack("<HHI", 338, 3, 1))  # ExtraSamples, SHORT, one value: 2 (unassociated)
    data[tag + 8 : tag + 10] = struct.pack("<H", 1)  # 1: associated (premultiplied) alpha
    path = tmp_path / "grey_associated_alpha.tif"
    path.write_bytes(bytes(data))
    assert Image.open(path).mode == "La"
    expected = np.asarray(open_image(Image.open(path).convert("LA")))
    assert np.array_equal(np.asarray(open_image(path)), expected)
    assert np.array_equal(np.asarray(open_image(Image.open(path))), expected)


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


def _problem(source, **kwargs) -> str:
    with pytest.raises(ImageLoadError) as info:
        open_image(source, **kwargs)
    assert str(info.value).startswith(str(source))
    return info.value.problem


def test_unreadable_file_says_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "locked.png"
    Image.new("RGB", (8, 8)).save(path)
    if os.geteuid() == 0:  # root reads anything: make the open fail as it does for other users
        real_open = builtins.open

        def deny(file, *args, **kwargs):
            if os.fspath(file) == str(path):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", deny)
    else:
        path.chmod(0)
    assert _problem(str(path)) == "permission denied (cannot read the file)"


def test_symlink_loop_and_broken_link_are_named(tmp_path: Path) -> None:
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    assert _problem(str(loop)) == "symbolic link loop"
    dangling = tmp_path / "dangling.jpg"
    dangling.symlink_to(tmp_path / "gone.jpg")
    assert "broken symbolic link" in _problem(str(dangling))


def test_special_files_are_not_regular_files(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it would block: the check must come before any open
    assert _problem(str(fifo)) == "not a regular file (a FIFO)"
    assert _problem("/dev/zero") == "not a regular file (a character device)"


def test_pillow_and_numpy_warnings_stay_off_stderr(tmp_path: Path) -> None:
    sources = [corrupt_exif_jpeg(tmp_path / "exif.jpg"), nan_float_tiff(tmp_path / "nan.tif")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = [open_image(path) for path in sources]
    assert [str(w.message) for w in caught] == []
    assert images[0].size == (64, 48)
    pixels = np.asarray(images[1])
    assert pixels[0, 0, 0] == 0 and pixels[5, 0, 0] == 255 and pixels[-1, -1, 0] == 255


def test_bomb_message_quotes_beholders_limit(tmp_path: Path) -> None:
    problem = _problem(str(huge_png_header(tmp_path / "bomb.png")), max_pixels=50_000_000)
    assert "900,000,000 pixels" in problem and "limit 50,000,000" in problem
    assert "178956970" not in problem and "DOS" not in problem


def test_sixteen_bit_conversion_has_no_full_size_float_copy(tmp_path: Path) -> None:
    width, height = 3000, 2000
    path = sixteen_bit_grey_png(tmp_path / "grey16.png", width, height)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc; Pillow's own pixels are not counted
    try:
        image = open_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One float64 copy of the image alone would be 48 MB.
    assert peak < width * height * 8 / 2, f"peak {peak / 1e6:.1f} MB"
    row = np.asarray(image)[1000, :, 0]
    expected = np.clip(np.linspace(0, 65535, width).astype(np.uint16) / 65535 * 255 + 0.5, 0, 255)
    assert np.array_equal(row, expected.astype(np.uint8))


def test_decode_is_bounded_by_bytes_not_only_pixels(tmp_path: Path) -> None:
    # 4 MP of 16-bit grey is within any pixel limit, but needs 2 + 1 + 4 bytes a pixel to become RGB.
    path = sixteen_bit_grey_png(tmp_path / "grey16.png", 2000, 2000)
    problem = _problem(str(path), max_bytes=20_000_000)
    assert problem == "too large to decode: needs about 28 MB (2000x2000 I;16) > limit 20 MB"
    assert open_image(path, max_bytes=30_000_000).size == (2000, 2000)


def test_an_oversized_jpeg_is_decoded_at_a_reduced_scale(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (1600, 1200), (10, 200, 30)).save(path)
    image = open_image(path, max_bytes=4 * 1600 * 1200)  # full size needs 8 bytes a pixel
    assert image.size == (800, 600)
    assert np.asarray(image)[300, 400].tolist() == pytest.approx([10, 200, 30], abs=3)


def test_decode_budget_reserves_and_waits() -> None:
    budget = DecodeBudget(1000)
    assert budget.acquire(600) == 600
    assert budget.acquire(600, blocking=False) == 0  # would exceed the budget
    assert budget.acquire(400, blocking=False) == 400
    budget.release(400)
    budget.release(600)
    with budget.reserve(5000) as amount:  # larger than the budget: clamped, so it runs alone
        assert amount == 1000 and budget.acquire(1, blocking=False) == 0
    assert budget.in_use == 0 and budget.high_water == 1000
    with pytest.raises(ValueError):
        DecodeBudget(0)


def test_decode_budget_bounds_concurrent_decodes(tmp_path: Path) -> None:
    paths = []
    for index in range(8):
        paths.append(tmp_path / f"{index}.png")
        Image.new("RGB", (200, 200), (index * 20, 0, 0)).save(paths[-1])
    one = 200 * 200 * 8  # RGB: stored pixels plus the converted copy
    budget = DecodeBudget(2 * one + one // 2)  # room for two decodes at once, not three
    results: dict = {}
    start = threading.Barrier(len(paths))

    def work(path: Path) -> None:
        start.wait()
        results[path] = open_image(path, budget=budget).getpixel((0, 0))

    threads = [threading.Thread(target=work, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[p] for p in paths] == [(i * 20, 0, 0) for i in range(8)]
    assert one <= budget.high_water <= 2 * one and budget.in_use == 0


def test_scans_include_modern_and_raw_formats() -> None:
    assert {".avif", ".heic", ".heif", ".dng", ".cr2", ".nef", ".arw"} <= IMAGE_SUFFIXES

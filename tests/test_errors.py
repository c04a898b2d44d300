"""Per-file errors read as one line wherever they are printed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from beholder.errors import ImageLoadError


def test_a_multi_line_decoder_message_becomes_one_line():
    error = ImageLoadError("a.heic", "corrupt image data (Invalid input: end of file\n)\n")
    assert error.problem == "corrupt image data (Invalid input: end of file )"
    assert "\n" not in str(error)


def test_a_truncated_heic_is_reported_on_one_line(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    pixels = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    whole = tmp_path / "whole.heic"
    Image.fromarray(pixels).save(whole)
    truncated = tmp_path / "half.heic"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    from beholder.imageio import open_image

    with pytest.raises(ImageLoadError) as caught:
        open_image(truncated)
    assert "\n" not in str(caught.value)
    assert str(truncated) in str(caught.value)


def test_a_png_whose_text_chunk_inflates_past_pillows_limit_says_so(tmp_path):
    from PIL import PngImagePlugin

    from beholder.imageio import open_image

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 1024), zip=True)  # compresses tiny
    path = tmp_path / "text-bomb.png"
    Image.new("RGB", (32, 32)).save(path, pnginfo=info)
    with pytest.raises(ImageLoadError, match="metadata chunk \\(text or ICC profile\\) inflates past"):
        open_image(path)


def test_a_png_whose_icc_profile_inflates_past_pillows_limit_says_so(tmp_path):
    import io
    import struct
    import zlib

    from PIL import PngImagePlugin

    from beholder.imageio import open_image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buffer, "PNG")
    data = buffer.getvalue()
    payload = b"icc\x00\x00" + zlib.compress(bytes(PngImagePlugin.MAX_TEXT_CHUNK + 1024))
    chunk = struct.pack(">I", len(payload)) + b"iCCP" + payload + struct.pack(">I", zlib.crc32(b"iCCP" + payload))
    path = tmp_path / "icc-bomb.png"
    path.write_bytes(data[:33] + chunk + data[33:])  # after the signature and IHDR
    with pytest.raises(ImageLoadError, match="metadata chunk \\(text or ICC profile\\) inflates past"):
        open_image(path)

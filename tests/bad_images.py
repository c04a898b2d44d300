"""A zoo of bad and odd image files for the robustness tests."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import make_photo


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def huge_png_header(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A tiny file whose PNG header claims 900 megapixels: a decompression bomb's signature."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    return path


def bad_files(folder: Path) -> dict[str, str]:
    """Write one file per kind of bad input; returns {path: expected words in the error}."""
    folder.mkdir(parents=True, exist_ok=True)
    good = make_photo(folder / "source.jpg", size=(400, 300))
    data = good.read_bytes()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = folder / "corrupt.jpg"
    corrupt.write_bytes(data[:200] + bytes(len(data) - 400) + data[-200:])
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    text = folder / "notes.jpg"
    text.write_text("this is not an image\n")
    good.unlink()
    return {
        str(truncated): "truncated",
        str(corrupt): "corrupt",
        str(empty): "empty",
        str(text): "not an image",
        str(huge_png_header(folder / "bomb.png")): "too many pixels",
        str(folder / "missing.jpg"): "not found",
    }


def odd_mode_files(folder: Path) -> dict[str, str]:
    """Valid images in modes that need conversion to RGB; returns {path: source mode}."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "grey.png": ("L", "PNG"),
        "grey_alpha.png": ("LA", "PNG"),
        "palette.png": ("P", "PNG"),
        "rgba.png": ("RGBA", "PNG"),
        "cmyk.jpg": ("CMYK", "JPEG"),
    }
    written = {}
    for name, (mode, fmt) in files.items():
        written[str(make_photo(folder / name, mode=mode, fmt=fmt))] = mode
    sixteen = folder / "grey16.png"
    ramp = (np.linspace(0, 65535, 240 * 320).reshape(240, 320)).astype(np.uint16)
    Image.fromarray(ramp).save(sixteen)
    written[str(sixteen)] = "I;16"
    return written


def corrupt_exif_jpeg(path: Path) -> Path:
    """A valid JPEG whose EXIF block claims more IFD entries than it holds (Pillow warns on it)."""
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 40) + b"\x12\x01\x03\x00"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 80, 40)).save(buffer, "JPEG", exif=b"Exif\x00\x00" + tiff)
    path.write_bytes(buffer.getvalue())
    return path


def nan_float_tiff(path: Path) -> Path:
    """A 32-bit float greyscale TIFF with NaN and infinite pixels (numpy warns when casting them)."""
    values = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    values[:4] = np.nan
    values[4:8] = np.inf
    Image.fromarray(values).save(path)
    return path


def sixteen_bit_grey_png(path: Path, width: int, height: int) -> Path:
    """A 16-bit greyscale PNG of a horizontal ramp: tiny on disk, huge decoded."""
    ramp = np.linspace(0, 65535, width, dtype=np.float64).astype(np.uint16)
    Image.fromarray(np.broadcast_to(ramp, (height, width)).copy()).save(path, compress_level=9)
    return path

"""Robust image loading: every odd or broken input becomes RGB or a clear :class:`ImageLoadError`.

Used by scoring, data preparation and the HTTP service, so that all of them agree on what an
image is. Nothing here touches PIL's global flags (``LOAD_TRUNCATED_IMAGES``, ``MAX_IMAGE_PIXELS``):
truncated files must fail loudly, and the pixel limit is a per-call argument.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from beholder.errors import ImageLoadError

ImageSource = Union[str, os.PathLike, bytes, BinaryIO, Image.Image]

#: Default pixel limit: 128 megapixels, far above any camera photo, far below a decompression bomb.
DEFAULT_MAX_PIXELS = 128_000_000

#: File name suffixes treated as images when scanning directories.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

# Alpha is composited on white: a transparent product cut-out is judged as it would look on a page.
_BACKGROUND = (255, 255, 255)


def describe(source: ImageSource, name: Optional[str] = None) -> str:
    """A human name for ``source`` to use in messages."""
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return "<PIL image>"
    return getattr(source, "name", None) or "<bytes>"


def open_image(
    source: ImageSource,
    *,
    name: Optional[str] = None,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    draft_size: Optional[Tuple[int, int]] = None,
) -> Image.Image:
    """Open, fully decode, EXIF-rotate and convert ``source`` to an 8-bit RGB image.

    Args:
        source: a path, raw bytes, a binary file object or a PIL image.
        name: how to name the input in error messages (defaults to the path).
        max_pixels: refuse images with more pixels than this (decompression bombs); None disables.
        draft_size: for JPEGs, let libjpeg decode at a reduced scale no smaller than this (w, h).
            Only pass it when the model's preprocessing downsizes with an antialiasing filter.

    Raises:
        ImageLoadError: naming the input and the problem (missing, empty, not an image, truncated,
            too many pixels, unsupported mode).
    """
    label = describe(source, name)
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source), label)
    try:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise ImageLoadError(label, "file not found")
            if path.is_dir():
                raise ImageLoadError(label, "is a directory, not an image")
            if path.stat().st_size == 0:
                raise ImageLoadError(label, "empty file (0 bytes)")
            fp: Union[str, BinaryIO] = os.fspath(path)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageLoadError(label, "empty file (0 bytes)")
            fp = io.BytesIO(bytes(source))
        else:
            fp = source
        with warnings.catch_warnings():
            # PIL warns (instead of raising) between MAX_IMAGE_PIXELS and twice that; we decide below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(fp)
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise ImageLoadError(
                label, f"too many pixels ({width}x{height} = {width * height:,} > limit {max_pixels:,})"
            )
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", draft_size)
        image.load()  # decode now: truncation and corruption surface here, with the file name
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image, label)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(label, f"too many pixels (decompression bomb guard): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(label, "not an image, or an unsupported image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        problem = "truncated image data" if "truncated" in text.lower() else f"corrupt image data ({text})"
        raise ImageLoadError(label, problem) from exc


def _to_rgb(image: Image.Image, label: str) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, keeping the look (alpha on white, 16-bit rescaled)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: PIL's convert() clips at 255, which turns most photos white.
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        grey = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        peak = 1.0 if array.max() <= 1.0 else 255.0
        grey = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, _BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    try:
        return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    except (ValueError, OSError) as exc:
        raise ImageLoadError(label, f"unsupported image mode {mode!r}") from exc


def is_image_file(path: Union[str, os.PathLike]) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES

"""Photo formats beyond Pillow's own: HEIC/HEIF (pillow-heif), AVIF (Pillow, else pillow-heif) and RAW.

Each lives behind an optional extra (``beholder[heif]``, ``beholder[raw]``) and is imported only
when a file of that kind turns up, so a missing package is a per-file :class:`ImageLoadError` that
names what to install, never an import error at start-up.

Camera RAW files (DNG, CR2, NEF, ARW...) go through rawpy (LibRaw). Their embedded full-size JPEG
preview is what the camera itself shows and is fast to decode, so it is used when there is one;
otherwise the sensor data is demosaiced at half size (still far above any model input).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, features

from beholder.errors import ImageLoadError

log = logging.getLogger(__name__)

HEIF_SUFFIXES = frozenset({".heic", ".heif", ".hif", ".heics", ".heifs", ".avif", ".avifs"})
#: Camera RAW suffixes LibRaw reads; decoded through rawpy.
RAW_SUFFIXES = frozenset(
    {".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef"}
)

# ISO-BMFF brands (the ``ftyp`` box) of HEIF-family files.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1", b"mif2"}
)
_HEIF_INSTALL = "HEIC/HEIF images need pillow-heif: pip install 'beholder[heif]' (or pip install pillow-heif)"
_RAW_INSTALL = "camera RAW files need rawpy: pip install 'beholder[raw]' (or pip install rawpy)"

_register_lock = threading.Lock()
_heif_registered = False


def sniff_heif(head: bytes) -> str | None:
    """'avif', 'heif' or None, from the first bytes of a file (its ``ftyp`` box)."""
    if len(head) < 12 or head[4:8] != b"ftyp":
        return None
    box_size = int.from_bytes(head[:4], "big")
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, min(box_size, len(head)) - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heif"
    return None


def ensure_heif_support(kind: str, label: str) -> None:
    """Make Pillow able to open ``kind`` ('heif' or 'avif'), or raise naming the package to install."""
    global _heif_registered
    if kind == "avif" and features.check_module("avif"):
        return  # Pillow's own AVIF plugin
    with _register_lock:
        if _heif_registered:
            return
        try:
            import pillow_heif
        except ImportError as exc:
            if kind == "avif":
                raise ImageLoadError(
                    label,
                    "AVIF needs a Pillow built with AVIF support (recent Pillow wheels) or pillow-heif < 1.0",
                ) from exc
            raise ImageLoadError(label, _HEIF_INSTALL) from exc
        pillow_heif.register_heif_opener()
        if kind == "avif" and hasattr(pillow_heif, "register_avif_opener"):
            pillow_heif.register_avif_opener()  # pillow-heif < 1.0 still carries AVIF
        _heif_registered = True


def is_raw_name(name: str | None) -> bool:
    return bool(name) and os.path.splitext(str(name))[1].lower() in RAW_SUFFIXES


# LibRaw's ``sizes.flip`` -> the PIL transposition that displays the image upright.
_RAW_FLIPS = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def choose_preview(thumb: Any, sensor_size: tuple[int, int]) -> Image.Image | None:
    """The embedded preview as a (lazy) PIL image if it is a full-size one, else None.

    ``thumb`` is rawpy's ``extract_thumb()`` result. A preview counts as full-size when its longer side
    is at least half the sensor's: cameras also embed 160x120 thumbnails, useless for scoring.
    """
    import rawpy

    if thumb.format == rawpy.ThumbFormat.JPEG:
        image = Image.open(io.BytesIO(bytes(thumb.data)))
    elif thumb.format == rawpy.ThumbFormat.BITMAP:
        image = Image.fromarray(np.ascontiguousarray(thumb.data))
    else:
        return None
    if 2 * max(image.size) < max(sensor_size):
        log.debug("RAW preview %s too small for sensor %s; demosaicing", image.size, sensor_size)
        return None
    return image


def open_raw(
    fp: BinaryIO, label: str, reserve: Callable[[int], AbstractContextManager[Any]]
) -> tuple[Image.Image, Image.Transpose | None]:
    """Open a camera RAW file: (image, transposition still to apply for LibRaw's orientation).

    The full-size JPEG preview is returned lazily (not decoded yet, so the caller's pixel and memory
    guards apply to it); a half-size demosaic runs here, inside ``reserve(estimated bytes)``.
    """
    try:
        import rawpy
    except ImportError as exc:
        raise ImageLoadError(label, _RAW_INSTALL) from exc
    try:
        with rawpy.imread(fp) as raw:
            sizes = raw.sizes
            flip = _RAW_FLIPS.get(sizes.flip)
            try:
                preview = choose_preview(raw.extract_thumb(), (sizes.width, sizes.height))
            except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
                preview = None
            if preview is not None:
                # A JPEG preview's own EXIF orientation, when it has one, is applied by the caller.
                return preview, flip
            # LibRaw holds the 16-bit mosaic plus a 16-bit RGB half-size image, then our 8-bit copy.
            with reserve(sizes.raw_width * sizes.raw_height * 2 + sizes.width * sizes.height * 3):
                pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
            # postprocess() already applies the orientation.
            return Image.fromarray(pixels), None
    except ImageLoadError:
        raise
    except (rawpy.LibRawError, rawpy.NotSupportedError) as exc:
        raise ImageLoadError(label, f"unreadable camera RAW file ({type(exc).__name__}: {exc})") from exc

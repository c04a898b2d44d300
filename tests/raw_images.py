"""Minimal DNG files for the RAW tests: a Bayer mosaic, optionally with an embedded JPEG preview."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

# DNG tags LibRaw needs to take a TIFF for a DNG: versions, camera model, CFA layout, a colour
# matrix (identity), black and white levels.
_DNG_TAGS = [
    (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
    (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
    (50708, "s", 0, "Beholder Test", True),  # UniqueCameraModel
    (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
    (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
    (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),  # ColorMatrix1
    (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
    (50717, "I", 1, 4095, True),  # WhiteLevel
]


class _StoredAsIs(dict):
    """A codec table whose every entry returns its input: the strips handed over are already JPEG.

    tifffile looks a compressor up even for pre-encoded strips and has no JPEG encoder without
    imagecodecs; the lookup is all it needs here.
    """

    def __getitem__(self, key):
        return lambda data, *args, **kwargs: data

    def __contains__(self, key) -> bool:
        return True


def make_dng(path: Path, mosaic_size: tuple[int, int], preview: Image.Image | None = None) -> Path:
    """Write a DNG of ``mosaic_size`` (w, h) with random 12-bit Bayer data, and ``preview`` as JPEG."""
    tifffile = __import__("tifffile")
    width, height = mosaic_size
    mosaic = (np.random.default_rng(0).random((height, width)) * 3000 + 500).astype(np.uint16)
    codecs = tifffile.TIFF.COMPRESSORS
    tifffile.TIFF.COMPRESSORS = _StoredAsIs()
    try:
        with tifffile.TiffWriter(path) as writer:
            writer.write(mosaic, photometric=32803, subfiletype=0, extratags=_DNG_TAGS)
            if preview is not None:
                buffer = io.BytesIO()
                preview.save(buffer, "JPEG", quality=98, subsampling=0)  # 4:4:4, as cameras write previews
                writer.write(
                    iter([buffer.getvalue()]),
                    shape=(preview.height, preview.width, 3),
                    dtype="uint8",
                    photometric="ycbcr",
                    compression=7,
                    subfiletype=1,
                    subsampling=(1, 1),
                    rowsperstrip=preview.height,
                )
    finally:
        tifffile.TIFF.COMPRESSORS = codecs
    return path

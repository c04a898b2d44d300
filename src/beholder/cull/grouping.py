"""Shoot order and grouping: when each frame was taken, and which consecutive frames are one moment.

Frames are ordered by their capture time and fall into one group when each is within
``group_seconds`` of the previous frame and looks like a frame already in the group. "Looks
like" is the similarity of perceptual hashes (pHash, from the well-kept ``imagehash`` library):
a DCT of a 32x32 greyscale copy keeps the low frequencies, which survive a few pixels of camera
shake, re-encoding and small exposure changes, and differ between scenes. docs/culling.md gives
the measurements behind this choice over the model's pooled features.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: EXIF tags (Exif IFD) read for the capture time.
EXIF_IFD = 0x8769
DATETIME_ORIGINAL = 36867
SUBSEC_TIME_ORIGINAL = 37521
DATETIME = 306  # IFD0 "DateTime": the last change, a fallback some cameras fill instead

#: Bits of the perceptual hash (8x8 DCT coefficients).
HASH_SIZE = 8
HASH_BITS = HASH_SIZE * HASH_SIZE


@dataclass(frozen=True)
class CaptureTime:
    """Seconds since the epoch (naive local time of the camera) and where the time came from."""

    seconds: float
    source: str  # "exif" | "mtime" | "none"

    def text(self) -> str:
        if self.source == "none":
            return ""
        stamp = dt.datetime.fromtimestamp(self.seconds, tz=dt.timezone.utc)
        return stamp.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def parse_exif_time(value: Any, subsec: Any = None) -> float | None:
    """``'YYYY:MM:DD HH:MM:SS'`` (+ SubSecTime digits) -> seconds, or None when absent or malformed."""
    if not isinstance(value, str):
        return None
    text = value.strip().rstrip("\x00")
    try:
        stamp = dt.datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    seconds = stamp.timestamp()
    digits = "".join(ch for ch in str(subsec or "") if ch.isdigit())
    if digits:  # SubSecTime is the decimal fraction's digits: "3" and "30" both mean 0.3 s
        seconds += int(digits) / 10 ** len(digits)
    return seconds


def capture_time(image: Image.Image | None, path: str | None = None) -> CaptureTime:
    """EXIF DateTimeOriginal (+ SubSecTimeOriginal), else the file's modification time.

    ``image`` is the decoded photo (None when it could not be decoded: only the file time is left).
    """
    seconds = None
    try:
        if image is not None:
            exif = image.getexif()
            ifd = exif.get_ifd(EXIF_IFD)
            seconds = parse_exif_time(ifd.get(DATETIME_ORIGINAL), ifd.get(SUBSEC_TIME_ORIGINAL))
            if seconds is None:
                seconds = parse_exif_time(exif.get(DATETIME))
    except Exception:  # a broken EXIF block must not cost the photo; its file time still orders it
        log.debug("unreadable EXIF in %s", path, exc_info=True)
    if seconds is not None:
        return CaptureTime(seconds, "exif")
    if path is not None:
        try:
            return CaptureTime(os.stat(path).st_mtime, "mtime")
        except OSError:
            pass
    return CaptureTime(0.0, "none")


def perceptual_hash(image: Image.Image) -> np.ndarray:
    """pHash of ``image`` as a flat boolean array of :data:`HASH_BITS` bits."""
    import imagehash

    return np.asarray(imagehash.phash(image, hash_size=HASH_SIZE).hash, dtype=bool).ravel()


def hash_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """1 - Hamming distance / bits: 1.0 for equal hashes, about 0.5 for unrelated images."""
    return 1.0 - float(np.count_nonzero(a != b)) / a.size


def shoot_order(times: Sequence[CaptureTime], names: Sequence[str]) -> list[int]:
    """Indices in shoot order: by capture time, then by name (stable for equal or missing times)."""
    return sorted(range(len(names)), key=lambda i: (times[i].seconds, names[i]))


def group_frames(
    order: Sequence[int],
    times: Sequence[CaptureTime],
    hashes: Sequence[np.ndarray],
    *,
    group_seconds: float,
    similarity: float,
) -> list[list[int]]:
    """Split frames (indices in shoot order) into groups of consecutive, alike frames.

    A frame joins the current group when it is at most ``group_seconds`` after the group's last
    frame and its hash similarity to some frame of the group is at least ``similarity``;
    comparing with every member (not only the last) keeps a burst together across one blurred
    frame. Otherwise it starts a new group.
    """
    groups: list[list[int]] = []
    for index in order:
        if groups:
            current = groups[-1]
            close = abs(times[index].seconds - times[current[-1]].seconds) <= group_seconds
            if close and max(hash_similarity(hashes[index], hashes[m]) for m in current) >= similarity:
                current.append(index)
                continue
        groups.append([index])
    return groups

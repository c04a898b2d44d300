"""The cull pipeline: decode each photo once, hash it, score it, group the shoot, pick and rate.

Memory stays bounded on long shoots: photos are decoded ``batch_size`` at a time on a thread pool
(the next batch while the model scores this one),
each decode yields the capture time, a small thumbnail (kept as JPEG bytes, for the report and the
perceptual hash) and the full image for the model, and the full images are dropped once their
batch is scored. The model sees exactly what ``beholder score`` would give it (same decode, same
JPEG draft size), so ``cull`` and ``score`` agree on every mean.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from beholder.cull.grouping import (
    CaptureTime,
    capture_time,
    group_frames,
    perceptual_hash,
    shoot_order,
)
from beholder.cull.stars import choose_picks, shoot_percentiles, stars_from_percentile
from beholder.errors import ConfigError, ImageLoadError
from beholder.files import progress_bar
from beholder.imageio import open_image

log = logging.getLogger(__name__)

#: Longest side of the report's thumbnails (also what the perceptual hash is computed from).
THUMBNAIL_SIZE = 400
THUMBNAIL_QUALITY = 82


@dataclass
class CulledPhoto:
    """One photo of the shoot and everything cull decided about it."""

    path: str
    time: CaptureTime
    mean: float | None = None
    std: float | None = None
    distribution: list[float] | None = None
    error: str | None = None
    group: int | None = None  # 1-based, in shoot order; None for unreadable photos
    pick: bool = False
    shoot_percentile: float | None = None
    ava_percentile: float | None = None
    stars: int | None = None
    width: int | None = None
    height: int | None = None
    thumbnail: bytes | None = field(default=None, repr=False)  # JPEG bytes
    phash: np.ndarray | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "group": self.group,
            "pick": self.pick,
            "stars": self.stars,
            "mean": self.mean,
            "std": self.std,
            "percentile": self.ava_percentile,
            "shoot_percentile": self.shoot_percentile,
            "distribution": self.distribution,
            "time": self.time.text(),
            "time_source": self.time.source,
            "width": self.width,
            "height": self.height,
            "error": self.error,
        }


@dataclass
class CullResult:
    """Photos in shoot order (readable ones first, then unreadable ones) and their groups."""

    photos: list[CulledPhoto]
    groups: list[list[int]]  # indices into ``photos``, groups in shoot order
    options: dict[str, Any]

    @property
    def failures(self) -> list[CulledPhoto]:
        return [p for p in self.photos if not p.ok]

    def to_dict(self) -> dict[str, Any]:
        return {
            "options": self.options,
            "photos": [p.to_dict() for p in self.photos],
            "groups": [[self.photos[i].path for i in group] for group in self.groups],
        }


def _thumbnail(image: Image.Image) -> Image.Image:
    scale = THUMBNAIL_SIZE / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # reducing_gap: box-reduce by an integer factor first, then filter: fast on 12 MP photos.
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _decode(path: str, max_pixels: int | None, draft_size) -> tuple[CulledPhoto, Image.Image | None]:
    """Decode once; from that one image come the time, the thumbnail, the hash and the model input."""
    try:
        image = open_image(path, max_pixels=max_pixels, draft_size=draft_size)
    except ImageLoadError as exc:
        return CulledPhoto(path, capture_time(None, path), error=exc.problem), None
    photo = CulledPhoto(path, capture_time(image, path), width=image.width, height=image.height)
    try:
        small = _thumbnail(image)
        photo.phash = perceptual_hash(small)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=THUMBNAIL_QUALITY)
        photo.thumbnail = buffer.getvalue()
    except Exception as exc:  # one odd photo must not stop the shoot; it is listed as unreadable
        log.debug("hashing failed for %s", path, exc_info=True)
        photo.error = f"{type(exc).__name__}: {exc}"
        return photo, None
    return photo, image


def analyse(paths: Sequence[str], scorer, *, progress: bool | None = None) -> list[CulledPhoto]:
    """Decode, hash and score every photo (in input order), ``scorer.batch_size`` at a time.

    The next batch decodes on the thread pool while the model scores this one, so at most two
    batches of full-size images are in memory.
    """
    try:
        import imagehash  # noqa: F401  (checked here, once, rather than failing on every photo)
    except ImportError as exc:
        raise ConfigError("culling needs the imagehash package: pip install 'beholder[cull]'") from exc
    photos: list[CulledPhoto] = []
    chunk_size = max(1, int(getattr(scorer, "batch_size", 32)))
    workers = max(1, int(getattr(scorer, "workers", 2)))
    max_pixels = getattr(scorer, "max_pixels", None)
    draft_size = getattr(scorer, "draft_size", None)
    chunks = [paths[start : start + chunk_size] for start in range(0, len(paths), chunk_size)]
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="beholder-cull") as pool,
        progress_bar(progress, total=len(paths), unit="photo", desc="culling") as bar,
    ):

        def submit(chunk: Sequence[str]) -> list[Future]:
            return [pool.submit(_decode, path, max_pixels, draft_size) for path in chunk]

        pending = submit(chunks[0]) if chunks else []
        for number in range(len(chunks)):
            decoded = [future.result() for future in pending]
            pending = submit(chunks[number + 1]) if number + 1 < len(chunks) else []
            _score(scorer, decoded)
            photos.extend(photo for photo, _ in decoded)
            bar.update(len(decoded))
            del decoded  # this batch's full-size images go now
    return photos


def _score(scorer, decoded: list[tuple[CulledPhoto, Image.Image | None]]) -> None:
    readable = [(photo, image) for photo, image in decoded if image is not None]
    if not readable:
        return
    results = scorer.score([image for _, image in readable], names=[p.path for p, _ in readable])
    for (photo, _), result in zip(readable, results):
        if result.error is not None:
            photo.error = result.error
        else:
            photo.mean, photo.std = result.mean, result.std
            photo.distribution = list(result.distribution)


def decide(
    photos: list[CulledPhoto], *, group_seconds: float, similarity: float, keep: int, model: str = ""
) -> CullResult:
    """Group the readable photos, choose picks and give stars; unreadable ones are listed last."""
    from beholder.percentiles import percentile

    if keep < 1:
        raise ValueError(f"--keep must be at least 1, got {keep}")
    readable = [p for p in photos if p.ok]
    order = shoot_order([p.time for p in readable], [p.path for p in readable])
    readable = [readable[i] for i in order]
    times, hashes = [p.time for p in readable], [p.phash for p in readable]
    groups = group_frames(
        range(len(readable)), times, hashes, group_seconds=group_seconds, similarity=similarity
    )
    means = [float(p.mean) for p in readable]
    picks = choose_picks(groups, means, keep)
    for number, group in enumerate(groups, start=1):
        for index in group:
            readable[index].group = number
            readable[index].pick = index in picks
    for photo, value in zip(readable, shoot_percentiles(means)):
        photo.shoot_percentile = float(value)
        photo.stars = stars_from_percentile(value)
        photo.ava_percentile = float(percentile(photo.mean))
    failed = sorted((p for p in photos if not p.ok), key=lambda p: p.path)
    options = {"group_seconds": group_seconds, "similarity": similarity, "keep": keep, "model": model}
    return CullResult(readable + failed, groups, options)


def cull(
    paths: Sequence[str],
    scorer,
    *,
    group_seconds: float = 2.0,
    similarity: float = 0.9,
    keep: int = 1,
    progress: bool | None = None,
) -> CullResult:
    """Cull a shoot: see :func:`analyse` and :func:`decide`."""
    photos = analyse(paths, scorer, progress=progress)
    return decide(
        photos,
        group_seconds=group_seconds,
        similarity=similarity,
        keep=keep,
        model=getattr(scorer, "name", ""),
    )

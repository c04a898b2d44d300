"""The prepare pipeline: validate, measure and resize images once, at ingest, into a manifest.

One pipeline serves every label source. :func:`prepare` (AVA.txt + a directory of ``<id>.jpg``)
and :func:`beholder.data.labels.prepare_labels` (a CSV of the user's own ratings) each turn their
labels into a table with a text ``key`` per image and the file it names, then call
:func:`prepare_images` here, which validates and measures every image, writes the resized JPEG
cache, remembers per-image results for incremental reruns, and :func:`write_prepared` writes
``manifest.parquet``, ``rejected.csv`` and ``prepare.json``.

Paths in the manifest are stored relative to the prepared directory (absolute only where no
relative path exists, e.g. another drive), so the directory can be moved;
:func:`beholder.data.manifest.load_manifest` returns them absolute.

The module is longer than 500 lines because it is the one pipeline in one place: its options and
their limits, the bounded parallel map, the per-image work, the incremental state, the shared
assembly of outputs and the AVA entry point. Split further, each part would only make sense next
to the others.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as _dt
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from PIL import Image

from beholder import __version__
from beholder.data.ava import (
    ROW_REASONS,
    assign_splits,
    default_test_list,
    find_images,
    parse_ava_txt,
    read_image_list,
    rejected_frame,
)
from beholder.data.manifest import MANIFEST_COLUMNS, MANIFEST_FILE, PREPARE_SUMMARY_FILE, SPLITS
from beholder.errors import ConfigError, ImageLoadError
from beholder.files import (
    PathLike,
    atomic_write,
    make_temp,
    progress_bar,
    remove_stale_temporaries,
    write_json,
)
from beholder.imageio import DEFAULT_MAX_PIXELS, open_image

log = logging.getLogger(__name__)

#: Why an image is rejected (after its label row was accepted).
IMAGE_REASONS = ("missing_file", "unreadable_file", "corrupt_image", "too_large", "too_small")
REJECTED_FILE = "rejected.csv"
SUMMARY_FILE = PREPARE_SUMMARY_FILE
STATE_FILE = "prepare_state.parquet"  # per-image results for incremental reruns (internal)

RESAMPLE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
#: Allowed side of the cache images, in pixels: a 100000-pixel side would need tens of GB per image.
IMAGE_SIZE_RANGE = (32, 2048)
#: Allowed decode threads.
WORKERS_RANGE = (1, 256)

_EXIF_ORIENTATION = 0x0112
_STATE_COLUMNS = [
    "key",
    "source_path",
    "source_bytes",
    "source_mtime_ns",
    "cache_sig",
    "status",
    "detail",
    "width",
    "height",
    "mode",
    "format",
    "cache_written",
]
#: Columns :func:`prepare_images` adds for each usable image.
IMAGE_COLUMNS = ["key", "source_path", "cache_path", "file_bytes", "width", "height", "mode", "format"]

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class CacheOptions:
    """How images are validated and cached; every field but ``workers`` changes the cached pixels."""

    image_size: tuple[int, int] = (256, 256)
    jpeg_quality: int = 95
    resample: str = "bilinear"
    min_side: int = 64
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    fast_decode: bool = True
    workers: int = 1

    @property
    def cache_name(self) -> str:
        return f"{self.image_size[0]}x{self.image_size[1]}_q{self.jpeg_quality}_{self.resample}"

    @property
    def signature(self) -> str:
        """Everything that changes the cached pixels; a different signature means "decode again"."""
        return f"{self.cache_name}_{'draft' if self.fast_decode else 'full'}_maxpx{self.max_pixels}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_size": list(self.image_size),
            "jpeg_quality": self.jpeg_quality,
            "resample": self.resample,
            "min_side": self.min_side,
            "max_pixels": self.max_pixels,
            "fast_decode": self.fast_decode,
            "workers": self.workers,
        }


def _in_range(name: str, value: Any, low: float, high: float | None = None) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        allowed = f"{low}..{high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{name} must be an integer in {allowed}, got {value!r}")


def cache_options(
    *,
    image_size: int | Sequence[int] = 256,
    jpeg_quality: int = 95,
    resample: str = "bilinear",
    min_side: int = 64,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    fast_decode: bool = True,
    workers: int | None = None,
) -> CacheOptions:
    """Checked :class:`CacheOptions` (ConfigError naming the option and its allowed range).

    Args:
        image_size: cache size (32..2048), an int for a square or (width, height); the aspect ratio
            is not kept (NIMA resizes to 256x256 before cropping).
        jpeg_quality, resample: cache JPEG quality and resize filter (a key of :data:`RESAMPLE_FILTERS`).
        min_side: images with a shorter side (in pixels) are rejected as ``too_small``.
        max_pixels: images with more pixels are rejected as ``too_large``; None disables the guard.
        fast_decode: let libjpeg decode JPEGs at a reduced scale before an antialiasing resize (the
            whole file is still decoded, so truncation is still caught); ignored for ``nearest``.
        workers: decode threads (default: min(8, CPUs)).
    """
    size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
    if len(size) != 2:
        raise ConfigError(f"image_size must be an int or (width, height), got {image_size!r}")
    for side in size:
        _in_range("image_size", side, *IMAGE_SIZE_RANGE)
    if resample not in RESAMPLE_FILTERS:
        raise ConfigError(f"unknown resample {resample!r}; choose from {', '.join(RESAMPLE_FILTERS)}")
    _in_range("jpeg_quality", jpeg_quality, 1, 100)
    _in_range("min_side", min_side, 1)
    if max_pixels is not None:
        _in_range("max_pixels", max_pixels, 1)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    _in_range("workers", workers, *WORKERS_RANGE)
    return CacheOptions(
        (int(size[0]), int(size[1])), jpeg_quality, resample, min_side, max_pixels, bool(fast_decode), workers
    )


def relative_to(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` in POSIX form, or absolute where no relative path exists."""
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


# --------------------------------------------------------------------------------------------------
# Bounded parallel map


def imap_bounded(
    executor: cf.Executor, fn: Callable[[T], R], items: Iterable[T], max_in_flight: int
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` as jobs finish, with at most ``max_in_flight`` submitted at a time.

    Bounding the queue keeps memory flat on 255k items and lets Ctrl-C stop after the jobs in flight
    instead of after the whole queue. When a job raises, no new job is submitted, queued jobs are
    cancelled, the jobs already running are waited for and every result that did finish is yielded;
    then the first exception propagates. So a failure midway never loses finished work.
    """
    iterator = iter(items)
    pending: dict[cf.Future, T] = {}
    failure: BaseException | None = None
    try:
        for item in itertools.islice(iterator, max(1, max_in_flight)):
            pending[executor.submit(fn, item)] = item
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            finished: list[tuple[T, R]] = []
            for future in done:
                item = pending.pop(future)
                if future.cancelled():
                    continue
                error = future.exception()
                if error is not None:
                    if failure is None:
                        failure = error
                        for queued in pending:  # running jobs cannot be cancelled: they finish
                            queued.cancel()
                    continue
                finished.append((item, future.result()))
                if failure is None:
                    for following in itertools.islice(iterator, 1):
                        pending[executor.submit(fn, following)] = following
            yield from finished
        if failure is not None:
            raise failure
    finally:
        for future in pending:
            future.cancel()


# --------------------------------------------------------------------------------------------------
# Per-image work (runs in worker threads: PIL releases the GIL while decoding, resizing and encoding)


@dataclass(frozen=True)
class _ImageJob:
    key: str
    source: str
    cache: str
    options: CacheOptions


def _probe(path: str) -> tuple[int, int, str, str] | None:
    """Header-only look: (width, height after EXIF orientation, mode, format), or None if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            mode, fmt = image.mode, image.format or ""
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            except Exception:  # broken EXIF: open_image decides whether the image is usable
                orientation = 1
    except Exception:
        return None
    if orientation in (5, 6, 7, 8):  # rotated by 90 degrees: open_image transposes these
        width, height = height, width
    return width, height, mode, fmt


def _unreadable(path: str) -> str | None:
    """Why ``path`` cannot be read as a regular file (permissions, a FIFO, an I/O error), or None.

    Checked before decoding, so that a file we may not read is reported as such and never as
    "corrupt image data" (which is what a failed decode of it would say).
    """
    try:
        if not os.path.isfile(path):
            return "not a regular file" if os.path.exists(path) else None
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"cannot read the file: {exc.strerror or exc}"
    return None


def _reason(problem: str) -> str:
    if problem.startswith("too many pixels"):
        return "too_large"
    if problem.startswith("file not found"):
        return "missing_file"
    return "corrupt_image"


def _process_image(job: _ImageJob) -> dict[str, Any]:
    """Validate one image (full decode), measure it and write its resized cache file."""
    options = job.options
    unreadable = _unreadable(job.source)
    if unreadable is not None:
        return {"status": "unreadable_file", "detail": unreadable}
    probe = _probe(job.source)
    # JPEG DCT-domain downscaling (draft) is only equivalent when the resize filter antialiases.
    draft = options.fast_decode and probe is not None and options.resample != "nearest"
    try:
        side = max(options.image_size)
        image = open_image(
            job.source, max_pixels=options.max_pixels, draft_size=(side, side) if draft else None
        )
    except ImageLoadError as exc:
        return {"status": _reason(exc.problem), "detail": exc.problem}
    width, height, mode, fmt = probe if probe is not None else (*image.size, image.mode, "")
    result: dict[str, Any] = {
        "status": "ok",
        "detail": "",
        "width": width,
        "height": height,
        "mode": mode,
        "format": fmt,
        "cache_written": False,
    }
    if min(width, height) < options.min_side:
        return result  # too small: measured, but no cache file (assembly rejects it)
    resized = image.resize(options.image_size, RESAMPLE_FILTERS[options.resample])
    cache = Path(job.cache)
    fd, tmp = make_temp(cache.parent, f".{cache.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            resized.save(handle, "JPEG", quality=options.jpeg_quality)
        os.replace(tmp, cache)  # a killed run never leaves a half-written cache file under its name
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    result["cache_written"] = True
    return result


# --------------------------------------------------------------------------------------------------
# Incremental state


def _load_state(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # a damaged state file only costs a full rerun
        log.warning("ignoring unreadable %s (%s): every image is processed again", path, exc)
        return {}
    if list(frame.columns) == ["image_id", *_STATE_COLUMNS[1:]]:  # written before keys were text
        frame = frame.rename(columns={"image_id": "key"})
    if list(frame.columns) != _STATE_COLUMNS:
        return {}
    return {str(row["key"]): {**row, "key": str(row["key"])} for row in frame.to_dict("records")}


def _save_state(path: Path, state: dict[str, dict[str, Any]]) -> None:
    frame = pd.DataFrame([state[k] for k in sorted(state)], columns=_STATE_COLUMNS)
    frame = frame.astype(
        {
            "key": "str",
            "source_bytes": "int64",
            "source_mtime_ns": "int64",
            "width": "Int64",
            "height": "Int64",
            "cache_written": "bool",
        }
    )
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _is_usable(entry: dict[str, Any], min_side: int) -> bool:
    return entry["status"] == "ok" and min(int(entry["width"]), int(entry["height"])) >= min_side


# --------------------------------------------------------------------------------------------------
# The shared pipeline


@dataclass
class ImageResults:
    """What :func:`prepare_images` found: usable images, rejections, and how much work it did."""

    images: pd.DataFrame  # IMAGE_COLUMNS, one row per usable image
    rejections: list[tuple[Any, str, str]]  # (key, reason, detail)
    processed: int
    reused: int


def prepare_images(
    sources: Sequence[tuple[str, Path | None, str]],
    out_dir: Path,
    options: CacheOptions,
    *,
    missing_detail: Callable[[str], str] = lambda key: "file not found",
    progress: bool | None = None,
) -> ImageResults:
    """Validate, measure and cache the images of ``sources``: ``(key, source file or None, cache file name)``.

    A rerun is incremental: images whose file (path, size, mtime) and cache settings are unchanged,
    and whose cache file still exists, are not decoded again (``prepare_state.parquet``). A failure
    midway (a full disk, Ctrl-C) saves every finished result before it propagates.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = out_dir / "cache" / options.cache_name
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Temporaries of a run killed with kill -9 (nothing else can clean up after SIGKILL).
    stale = remove_stale_temporaries(cache_dir) + remove_stale_temporaries(out_dir)
    if stale:
        log.info("removed %d temporary files left by an interrupted run", stale)
    state_path = out_dir / STATE_FILE
    old_state = _load_state(state_path)
    state: dict[str, dict[str, Any]] = {}
    jobs: list[tuple[_ImageJob, dict[str, Any]]] = []
    rejections: list[tuple[Any, str, str]] = []
    reused = 0
    for key, source, cache_name in sources:
        try:
            stat = source.stat() if source is not None else None
        except FileNotFoundError:  # a vanished file, a dangling link
            stat = None
        except OSError as exc:  # a symlink loop, a directory we may not search, an I/O error
            rejections.append((key, "unreadable_file", f"cannot read the file: {exc.strerror or exc}"))
            continue
        if stat is None:
            rejections.append((key, "missing_file", missing_detail(key)))
            continue
        cache = cache_dir / cache_name
        identity = {
            "key": key,
            "source_path": relative_to(source, out_dir),
            "source_bytes": stat.st_size,
            "source_mtime_ns": stat.st_mtime_ns,
            "cache_sig": options.signature,
        }
        old = old_state.get(key)
        unchanged = old is not None and all(old[k] == v for k, v in identity.items())
        if unchanged and (
            not _is_usable(old, options.min_side) or (old["cache_written"] and cache.is_file())
        ):
            state[key] = old
            reused += 1
            continue
        jobs.append((_ImageJob(key, str(source), str(cache), options), identity))

    log.info("%d images to process, %d unchanged, %d missing", len(jobs), reused, len(rejections))
    _run_jobs(jobs, state, old_state, state_path, options.workers, progress)

    usable: list[dict[str, Any]] = []
    for key, _, cache_name in sources:
        entry = state.get(key)
        if entry is None:
            continue
        if entry["status"] != "ok":
            rejections.append((key, entry["status"], entry["detail"]))
        elif not _is_usable(entry, options.min_side):
            size = f"{entry['width']}x{entry['height']}"
            rejections.append((key, "too_small", f"{size}, shorter side < {options.min_side} px"))
        else:
            usable.append(
                {
                    "key": key,
                    "source_path": entry["source_path"],
                    "cache_path": relative_to(cache_dir / cache_name, out_dir),
                    "file_bytes": entry["source_bytes"],
                    "width": int(entry["width"]),
                    "height": int(entry["height"]),
                    "mode": entry["mode"],
                    "format": entry["format"],
                }
            )
    images = pd.DataFrame(usable, columns=IMAGE_COLUMNS).astype({"key": str})
    return ImageResults(images, rejections, processed=len(jobs), reused=reused)


def _run_jobs(
    jobs: list[tuple[_ImageJob, dict[str, Any]]],
    state: dict[str, dict[str, Any]],
    old_state: dict[str, dict[str, Any]],
    state_path: Path,
    workers: int,
    progress: bool | None,
) -> None:
    """Process ``jobs`` on ``workers`` threads into ``state``; save the state, also on failure."""
    bar = progress_bar(progress, total=len(jobs), desc="prepare", unit="img")
    try:
        with cf.ThreadPoolExecutor(workers) as pool:
            results = imap_bounded(pool, lambda item: _process_image(item[0]), jobs, 4 * workers)
            with contextlib.closing(results):  # cancels queued jobs at once on Ctrl-C
                for (job, identity), result in results:
                    entry = dict.fromkeys(_STATE_COLUMNS)
                    entry.update(identity)
                    entry.update({"detail": "", "mode": "", "format": "", "cache_written": False})
                    entry.update(result)
                    state[job.key] = entry
                    bar.update(1)
    except BaseException as exc:
        # Ctrl-C, a full disk, a vanished directory: keep what was done so a rerun starts from there.
        _save_state(state_path, {**old_state, **state})
        log.warning(
            "stopped by %s: saved %d image results; rerun to continue", type(exc).__name__, len(state)
        )
        raise
    finally:
        bar.close()
    _save_state(state_path, state)


def write_prepared(
    out_dir: Path,
    manifest: pd.DataFrame,
    rejected: pd.DataFrame,
    summary: dict[str, Any],
) -> None:
    """Write ``manifest.parquet`` (MANIFEST_COLUMNS first, then extras), ``rejected.csv``, ``prepare.json``."""
    extras = [column for column in manifest.columns if column not in MANIFEST_COLUMNS and column != "key"]
    manifest = manifest[MANIFEST_COLUMNS + extras].reset_index(drop=True)
    atomic_write(out_dir / MANIFEST_FILE, lambda tmp: manifest.to_parquet(tmp, index=False))
    atomic_write(out_dir / REJECTED_FILE, lambda tmp: rejected.to_csv(tmp, index=False))
    write_json(out_dir / SUMMARY_FILE, summary)
    log.info("wrote %s (%d rows) and %s", out_dir / MANIFEST_FILE, len(manifest), out_dir / REJECTED_FILE)


def summary_base(
    inputs: dict[str, Any],
    options: dict[str, Any],
    out_dir: Path,
    cache: CacheOptions,
    manifest: pd.DataFrame,
    rejected: pd.DataFrame,
    results: ImageResults,
    reasons: Sequence[str],
    seconds: float,
) -> dict[str, Any]:
    """The keys of ``prepare.json`` common to every label source (see docs/data.md)."""
    reason_counts = rejected["reason"].value_counts()
    return {
        "beholder_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "options": {**options, **cache.as_dict()},
        "cache_dir": relative_to(out_dir / "cache" / cache.cache_name, out_dir),
        "manifest_rows": len(manifest),
        "splits": {name: int((manifest["split"] == name).sum()) for name in SPLITS},
        "rejected_total": len(rejected),
        "rejected": {reason: int(reason_counts.get(reason, 0)) for reason in reasons},
        "images": {"processed": results.processed, "reused": results.reused},
        "seconds": round(seconds, 3),
        "images_per_second": round(results.processed / seconds, 2)
        if results.processed and seconds > 0
        else None,
    }


# --------------------------------------------------------------------------------------------------
# AVA


def prepare(
    ava_txt: PathLike,
    images_dir: PathLike,
    out_dir: PathLike,
    *,
    test_list: PathLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    progress: bool | None = None,
    **cache: Any,
) -> dict[str, Any]:
    """Validate, measure and resize the AVA images; write the manifest, rejections and summary.

    Args:
        ava_txt: AVA.txt-format label file.
        images_dir: directory of ``<image id>.<ext>`` files (what ``download`` writes).
        out_dir: the prepared directory (created).
        test_list: official test id list; None looks for ``aesthetics_image_lists/generic_test.jpgl``
            beside ``ava_txt`` and, failing that, makes no test split (with a warning).
        val_fraction, seed: the seeded validation split, see :func:`beholder.data.ava.assign_splits`.
            Splits are decided from the label rows alone, so they do not move when more images arrive.
        progress: show a progress bar; None shows it only on a terminal.
        cache: ``image_size``, ``jpeg_quality``, ``resample``, ``min_side``, ``max_pixels``,
            ``fast_decode``, ``workers``: see :func:`cache_options`, which checks them.

    Returns:
        the summary also written to ``prepare.json``.

    Raises:
        ConfigError: missing inputs or invalid options (before any work is done).
    """
    start = time.perf_counter()
    options = cache_options(**cache)
    images_dir = Path(images_dir).absolute()
    if not images_dir.is_dir():
        raise ConfigError(f"images directory not found: {images_dir}")
    out_dir = Path(out_dir).absolute()

    labels, row_rejections = parse_ava_txt(ava_txt)
    if test_list is None:
        test_list = default_test_list(ava_txt)
        if test_list is not None:
            log.info("using the official test list found beside AVA.txt: %s", test_list)
        else:
            log.warning("no test list given: no test split (results will not compare with the papers)")
    test_ids = read_image_list(test_list) if test_list is not None else set()
    labels["split"] = assign_splits(labels["image_id"], test_ids, val_fraction=val_fraction, seed=seed)

    files = find_images(images_dir)
    ids = labels["image_id"].tolist()
    results = prepare_images(
        [(str(i), files.get(i), f"{i}.jpg") for i in ids],
        out_dir,
        options,
        missing_detail=lambda key: f"no file {key}.jpg (or another image suffix) in the images directory",
        progress=progress,
    )

    # Assemble: the label columns and split come from AVA.txt, the rest from the per-image results.
    labels["key"] = pd.Series([str(i) for i in ids], index=labels.index, dtype=str)
    manifest = labels.merge(results.images, on="key", how="inner", validate="one_to_one")
    manifest = manifest.astype(
        {"image_id": "int64", "file_bytes": "int64", "width": "int64", "height": "int64"}
    )
    manifest["aspect_ratio"] = manifest["width"] / manifest["height"]
    manifest = manifest.sort_values("image_id", kind="stable")
    for column in ("split", "source_path", "cache_path", "mode", "format"):
        manifest[column] = manifest[column].astype(str)
    image_rejections = rejected_frame([(int(k), r, d) for k, r, d in results.rejections])
    rejected = pd.concat([row_rejections, image_rejections], ignore_index=True).astype({"image_id": "Int64"})

    label_ids = set(ids)
    summary = summary_base(
        {
            "ava_txt": str(Path(ava_txt).absolute()),
            "images": str(images_dir),
            "test_list": str(Path(test_list).absolute()) if test_list is not None else None,
        },
        {"val_fraction": val_fraction, "seed": seed},
        out_dir,
        options,
        manifest,
        rejected,
        results,
        ROW_REASONS + IMAGE_REASONS,
        time.perf_counter() - start,
    )
    summary.update(
        {
            "label_rows": len(labels) + len(row_rejections),
            "test_list_ids": len(test_ids),
            "test_list_ids_without_label": len(test_ids - label_ids),
            "unlabelled_image_files": len(set(files) - label_ids),
        }
    )
    write_prepared(out_dir, manifest, rejected, summary)
    return summary

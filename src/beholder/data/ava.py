"""AVA labels, official splits, and ``prepare``: validate, measure and resize the images once, at ingest.

AVA (Murray et al., CVPR 2012) ships ``AVA.txt``: one row per image with 15 whitespace-separated
integer columns -- index, image id, the counts of votes for scores 1..10, two semantic tag ids and
the challenge id. NIMA (Talebi & Milanfar, 2018) trains on the normalised vote distribution.

``prepare`` turns ``AVA.txt`` plus a directory of downloaded images into ``manifest.parquet`` (one
row per usable image, see :data:`MANIFEST_COLUMNS`), ``rejected.csv`` (every row or image left out,
with a reason from :data:`ROW_REASONS` / :data:`IMAGE_REASONS`), ``prepare.json`` (counts, timing)
and a resized JPEG cache. Later stages trust the manifest; :func:`load_manifest` fails loudly.

Paths in the manifest are stored relative to the prepared directory (absolute only where no
relative path exists, e.g. another drive), so the directory can be moved; :func:`load_manifest`
returns them absolute.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime as _dt
import itertools
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from beholder import __version__
from beholder.data.manifest import MANIFEST_COLUMNS, MANIFEST_FILE, SPLITS, load_manifest  # noqa: F401
from beholder.errors import ConfigError, ImageLoadError
from beholder.imageio import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, open_image

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

SCORES = np.arange(1, 11, dtype=np.float64)  # the AVA rating scale, 1..10
VOTE_COLUMNS = [f"votes_{i}" for i in range(1, 11)]
#: Columns of the good-rows table returned by :func:`parse_ava_txt`.
LABEL_COLUMNS = ["image_id", *VOTE_COLUMNS, "n_votes", "mean", "std", "tag1", "tag2", "challenge_id"]
REJECTED_COLUMNS = ["image_id", "reason", "detail"]

#: Why a line of AVA.txt is rejected.
ROW_REASONS = ("bad_column_count", "non_integer_field", "negative_value", "zero_votes", "duplicate_id")
#: Why an image is rejected (after its row was accepted).
IMAGE_REASONS = ("missing_file", "corrupt_image", "too_large", "too_small")

REJECTED_FILE = "rejected.csv"
SUMMARY_FILE = "prepare.json"
STATE_FILE = "prepare_state.parquet"  # per-image results for incremental reruns (internal)

RESAMPLE_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

_N_COLUMNS = 15
_MAX_FIELD = 2**31 - 1  # largest absolute value accepted in an AVA.txt column
_EXIF_ORIENTATION = 0x0112
_STATE_COLUMNS = [
    "image_id",
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

T = TypeVar("T")
R = TypeVar("R")


# --------------------------------------------------------------------------------------------------
# Labels


def distribution_from_votes(votes: Any) -> np.ndarray:
    """Normalise vote counts over scores 1..10 into probabilities.

    Args:
        votes: counts of shape (10,) or (N, 10) (list, array or DataFrame of ``votes_1..votes_10``).

    Returns:
        float64 array of the same shape whose last axis sums to 1.

    Raises:
        ValueError: wrong last dimension, negative counts, or a row with no votes.
    """
    counts = np.asarray(votes, dtype=np.float64)
    if counts.ndim not in (1, 2) or counts.shape[-1] != 10:
        raise ValueError(f"votes must have shape (10,) or (N, 10), got {counts.shape}")
    if (counts < 0).any():
        raise ValueError("vote counts must not be negative")
    totals = counts.sum(axis=-1, keepdims=True)
    if (totals == 0).any():
        raise ValueError("a row has no votes; its distribution is undefined")
    return counts / totals


def _mean_std(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of distributions over 1..10 (DESIGN: mean = sum(i * p_i))."""
    mean = probs @ SCORES  # (N,)
    var = (probs * (SCORES[None, :] - mean[:, None]) ** 2).sum(axis=1)
    return mean, np.sqrt(var)


def _parse_int(token: str) -> Optional[int]:
    """A plain ASCII integer that fits the manifest's int64 columns, else None.

    ``int()`` alone also accepts ``"1_000"`` and non-ASCII digits; AVA.txt is plain ASCII digits.
    """
    if not token.isascii() or "_" in token:
        return None
    try:
        value = int(token)
    except ValueError:
        return None
    # Far above any AVA value; bounded so that ten vote counts still sum within int64.
    return value if abs(value) <= _MAX_FIELD else None


def _first_int(fields: Sequence[str], index: int) -> Optional[int]:
    return _parse_int(fields[index]) if index < len(fields) else None


def _read_ava_rows(path: PathLike) -> tuple[list[list[int]], list[tuple[Optional[int], str, str]]]:
    """Parse AVA.txt into good rows (14 ints: id, 10 votes, tag1, tag2, challenge) and rejections."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"AVA label file not found: {path}")
    good: list[list[int]] = []
    rejected: list[tuple[Optional[int], str, str]] = []
    first_line: dict[int, int] = {}
    # errors="replace": stray bytes become a non_integer_field rejection instead of a crash.
    with open(path, encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue  # blank lines (a trailing newline, say) are not rows
            if len(fields) != _N_COLUMNS:
                rejected.append(
                    (
                        _first_int(fields, 1),
                        "bad_column_count",
                        f"line {lineno}: {len(fields)} columns, expected {_N_COLUMNS}",
                    )
                )
                continue
            values: list[int] = []
            for position, token in enumerate(fields, 1):
                value = _parse_int(token)
                if value is None:
                    rejected.append(
                        (
                            _first_int(fields, 1),
                            "non_integer_field",
                            f"line {lineno}: column {position} is {token[:20]!r}, not an integer "
                            f"(or beyond +-{_MAX_FIELD})",
                        )
                    )
                    break
                values.append(value)
            else:
                image_id = values[1]
                negative = [pos for pos, value in enumerate(values[1:], 2) if value < 0]
                if negative:
                    rejected.append(
                        (image_id, "negative_value", f"line {lineno}: column {negative[0]} is negative")
                    )
                elif sum(values[2:12]) == 0:
                    rejected.append((image_id, "zero_votes", f"line {lineno}: no votes"))
                elif image_id in first_line:
                    rejected.append(
                        (
                            image_id,
                            "duplicate_id",
                            f"line {lineno}: id already on line {first_line[image_id]} (first one kept)",
                        )
                    )
                else:
                    first_line[image_id] = lineno
                    good.append(values[1:])
    return good, rejected


def _rejected_frame(items: Sequence[tuple[Optional[int], str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(list(items), columns=REJECTED_COLUMNS)
    frame["image_id"] = frame["image_id"].astype("Int64")  # NA when the id itself is unreadable
    frame["reason"] = frame["reason"].astype(str)
    frame["detail"] = frame["detail"].astype(str)
    return frame


def parse_ava_txt(path: PathLike) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Parse an AVA.txt-format file.

    Returns:
        ``(labels, rejected)``: ``labels`` has :data:`LABEL_COLUMNS`, one row per accepted line in
        file order, with ``n_votes``, ``mean`` and ``std`` of the vote distribution; ``rejected`` has
        ``image_id`` (nullable), ``reason`` (one of :data:`ROW_REASONS`) and ``detail`` (line number
        and what is wrong). Malformed lines never raise; for a duplicated id the first valid line wins.

    Raises:
        ConfigError: the file does not exist.
    """
    good, rejected = _read_ava_rows(path)
    table = np.asarray(good, dtype=np.int64).reshape(-1, 14)
    votes = table[:, 1:11]
    totals = votes.sum(axis=1)
    if len(table):
        mean, std = _mean_std(votes / totals[:, None])
    else:
        mean = std = np.zeros(0)
    labels = pd.DataFrame({"image_id": table[:, 0]})
    for i, column in enumerate(VOTE_COLUMNS):
        labels[column] = votes[:, i]
    labels["n_votes"] = totals
    labels["mean"] = mean
    labels["std"] = std
    labels["tag1"] = table[:, 11]
    labels["tag2"] = table[:, 12]
    labels["challenge_id"] = table[:, 13]
    return labels, _rejected_frame(rejected)


def read_image_list(path: PathLike) -> set[int]:
    """Read an AVA image list (``*.jpgl``: one integer id per line; blank lines and ``#`` ignored).

    Raises:
        ConfigError: the file is missing or a line is not an integer id.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"image list not found: {path}")
    ids: set[int] = set()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            token = line.strip()
            if not token or token.startswith("#"):
                continue
            if not (token.isascii() and token.isdigit()):
                raise ConfigError(f"{path}:{lineno}: expected an integer image id, got {token[:40]!r}")
            ids.add(int(token))
    return ids


def assign_splits(
    image_ids: Iterable[int], test_ids: Iterable[int], *, val_fraction: float = 0.1, seed: int = 0
) -> np.ndarray:
    """Assign ``train``/``val``/``test`` to each id (same order as ``image_ids``).

    ``test`` is every id in ``test_ids`` (the official list). Of the other ids, sorted ascending,
    ``round(val_fraction * n)`` chosen by ``numpy.random.default_rng(seed).permutation`` are ``val``;
    the rest are ``train``. The result depends only on the ids, the list, the fraction and the seed.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = np.asarray(list(image_ids), dtype=np.int64)
    test = np.isin(ids, np.fromiter(set(test_ids), dtype=np.int64))
    rest = np.unique(ids[~test])  # sorted, so the draw does not depend on the file order
    n_val = round(val_fraction * len(rest))
    val_ids = rest[np.random.default_rng(seed).permutation(len(rest))[:n_val]]
    splits = np.full(len(ids), "train", dtype=object)
    splits[np.isin(ids, val_ids)] = "val"
    splits[test] = "test"
    return splits


# --------------------------------------------------------------------------------------------------
# Small shared helpers


def find_images(images_dir: PathLike) -> dict[int, Path]:
    """Map image id -> file for files named ``<id>.<image suffix>`` directly in ``images_dir``.

    When an id has several files, ``.jpg`` wins, then ``.jpeg``, then the alphabetically first suffix;
    among equal suffixes ``<id>`` wins over zero-padded stems, then the first name.
    Temporary download files (``*.part``) and other names are ignored.
    """
    found: dict[int, Path] = {}
    rank: dict[int, tuple[int, str, bool, str]] = {}
    with os.scandir(images_dir) as entries:
        for entry in entries:
            stem, dot, suffix = entry.name.rpartition(".")
            suffix = (dot + suffix).lower()
            if not dot or suffix not in IMAGE_SUFFIXES or not (stem.isascii() and stem.isdigit()):
                continue
            if not entry.is_file():
                continue
            image_id = int(stem)
            # Ties ("7.jpg" and "07.jpg") go to the canonical name, then the name: never scandir's order.
            key = ({".jpg": 0, ".jpeg": 1}.get(suffix, 2), suffix, stem != str(image_id), entry.name)
            if image_id not in rank or key < rank[image_id]:
                rank[image_id] = key
                found[image_id] = Path(entry.path)
    return found


def imap_bounded(
    executor: cf.Executor, fn: Callable[[T], R], items: Iterable[T], max_in_flight: int
) -> Iterator[tuple[T, R]]:
    """Yield ``(item, fn(item))`` as jobs finish, with at most ``max_in_flight`` submitted at a time.

    Bounding the queue keeps memory flat on 255k items and lets Ctrl-C stop after the jobs in flight
    instead of after the whole queue. Exceptions from ``fn`` propagate; unstarted jobs are cancelled.
    """
    iterator = iter(items)
    pending: dict[cf.Future, T] = {}
    try:
        for item in itertools.islice(iterator, max(1, max_in_flight)):
            pending[executor.submit(fn, item)] = item
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                for following in itertools.islice(iterator, 1):
                    pending[executor.submit(fn, following)] = following
                yield item, future.result()
    finally:
        for future in pending:
            future.cancel()


def make_temp(directory: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """Create a new, uniquely named file opened for writing: ``(fd, path)``.

    Unlike ``tempfile.mkstemp`` (mode 0600) the file gets the permissions of any new file (umask),
    since it is renamed into place as an output.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        name = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary file in the same directory and rename: readers never see half a file."""
    fd, tmp = make_temp(path.parent, f".{path.name}.", ".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically."""
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def _relative_to(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` in POSIX form, or absolute where no relative path exists."""
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def _progress_bar(progress: Optional[bool], **kwargs: Any) -> tqdm:
    # progress=None: tqdm decides (shown on a terminal, hidden when stderr is redirected).
    return tqdm(disable=None if progress is None else not progress, dynamic_ncols=True, **kwargs)


# --------------------------------------------------------------------------------------------------
# Per-image work (runs in worker threads: PIL releases the GIL while decoding, resizing and encoding)


@dataclass(frozen=True)
class _ImageJob:
    image_id: int
    source: str
    cache: str
    size: tuple[int, int]
    quality: int
    resample: str
    min_side: int
    max_pixels: Optional[int]
    fast_decode: bool


def _probe(path: str) -> Optional[tuple[int, int, str, str]]:
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


def _process_image(job: _ImageJob) -> dict[str, Any]:
    """Validate one image (full decode), measure it and write its resized cache file."""
    probe = _probe(job.source)
    # JPEG DCT-domain downscaling (draft) is only equivalent when the resize filter antialiases.
    draft = job.fast_decode and probe is not None and job.resample != "nearest"
    try:
        side = max(job.size)
        image = open_image(job.source, max_pixels=job.max_pixels, draft_size=(side, side) if draft else None)
    except ImageLoadError as exc:
        reason = "too_large" if exc.problem.startswith("too many pixels") else "corrupt_image"
        return {"status": reason, "detail": exc.problem}
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
    if min(width, height) < job.min_side:
        return result  # too small: measured, but no cache file (assembly rejects it)
    resized = image.resize(job.size, RESAMPLE_FILTERS[job.resample])
    cache = Path(job.cache)
    fd, tmp = make_temp(cache.parent, f".{cache.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            resized.save(handle, "JPEG", quality=job.quality)
        os.replace(tmp, cache)  # a killed run never leaves a half-written cache file
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    result["cache_written"] = True
    return result


# --------------------------------------------------------------------------------------------------
# prepare


def _load_state(path: Path) -> dict[int, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # a damaged state file only costs a full rerun
        logger.warning("ignoring unreadable %s (%s): every image is processed again", path, exc)
        return {}
    if list(frame.columns) != _STATE_COLUMNS:
        return {}
    return {int(row["image_id"]): row for row in frame.to_dict("records")}


def _save_state(path: Path, state: dict[int, dict[str, Any]]) -> None:
    frame = pd.DataFrame([state[k] for k in sorted(state)], columns=_STATE_COLUMNS)
    frame = frame.astype(
        {
            "image_id": "int64",
            "source_bytes": "int64",
            "source_mtime_ns": "int64",
            "width": "Int64",
            "height": "Int64",
            "cache_written": "bool",
        }
    )
    _atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


def _image_size(image_size: Union[int, Sequence[int]]) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"image_size must be a positive int or (width, height), got {image_size!r}")
    return size  # type: ignore[return-value]


def default_test_list(ava_txt: PathLike) -> Optional[Path]:
    """The official ``generic_test.jpgl`` where the AVA release puts it beside AVA.txt, if present."""
    candidate = Path(ava_txt).parent / "aesthetics_image_lists" / "generic_test.jpgl"
    return candidate if candidate.is_file() else None


def prepare(
    ava_txt: PathLike,
    images_dir: PathLike,
    out_dir: PathLike,
    *,
    test_list: Optional[PathLike] = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    image_size: Union[int, Sequence[int]] = 256,
    jpeg_quality: int = 95,
    resample: str = "bilinear",
    min_side: int = 64,
    max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
    fast_decode: bool = True,
    workers: Optional[int] = None,
    progress: Optional[bool] = None,
) -> dict[str, Any]:
    """Validate, measure and resize the AVA images; write the manifest, rejections and summary.

    Args:
        ava_txt: AVA.txt-format label file.
        images_dir: directory of ``<image id>.<ext>`` files (what ``download`` writes).
        out_dir: the prepared directory (created).
        test_list: official test id list; None looks for ``aesthetics_image_lists/generic_test.jpgl``
            beside ``ava_txt`` and, failing that, makes no test split (with a warning).
        val_fraction, seed: the seeded validation split, see :func:`assign_splits`. Splits are
            decided from the label rows alone, so they do not move when more images arrive.
        image_size: cache size, an int for a square or (width, height); the aspect ratio is not
            kept (NIMA resizes to 256x256 before cropping).
        jpeg_quality, resample: cache JPEG quality and resize filter (a key of :data:`RESAMPLE_FILTERS`).
        min_side: images with a shorter side (in pixels) are rejected as ``too_small``.
        max_pixels: images with more pixels are rejected as ``too_large``; None disables the guard.
        fast_decode: let libjpeg decode JPEGs at a reduced scale before an antialiasing resize (the
            whole file is still decoded, so truncation is still caught); ignored for ``nearest``.
        workers: decode threads (default: min(8, CPUs)).
        progress: show a progress bar; None shows it only on a terminal.

    Returns:
        the summary also written to ``prepare.json``.

    Raises:
        ConfigError: missing inputs or invalid options.

    A rerun is incremental: images whose file (path, size, mtime) and cache settings are unchanged,
    and whose cache file still exists, are not decoded again. Results are kept in ``prepare_state.parquet``.
    """
    start = time.perf_counter()
    size = _image_size(image_size)
    if resample not in RESAMPLE_FILTERS:
        raise ConfigError(f"unknown resample {resample!r}; choose from {', '.join(RESAMPLE_FILTERS)}")
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if min_side < 1:
        raise ConfigError(f"min_side must be at least 1, got {min_side}")
    images_dir = Path(images_dir).absolute()
    if not images_dir.is_dir():
        raise ConfigError(f"images directory not found: {images_dir}")
    out_dir = Path(out_dir).absolute()
    workers = workers or min(8, os.cpu_count() or 1)
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")

    labels, row_rejections = parse_ava_txt(ava_txt)
    if test_list is None:
        test_list = default_test_list(ava_txt)
        if test_list is not None:
            logger.info("using the official test list found beside AVA.txt: %s", test_list)
        else:
            logger.warning("no test list given: no test split (results will not compare with the papers)")
    test_ids = read_image_list(test_list) if test_list is not None else set()
    labels["split"] = assign_splits(labels["image_id"], test_ids, val_fraction=val_fraction, seed=seed)

    out_dir.mkdir(parents=True, exist_ok=True)
    cache_name = f"{size[0]}x{size[1]}_q{jpeg_quality}_{resample}"
    cache_dir = out_dir / "cache" / cache_name
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Everything that changes the cached pixels; a different signature means "decode again".
    cache_sig = f"{cache_name}_{'draft' if fast_decode else 'full'}_maxpx{max_pixels}"
    state_path = out_dir / STATE_FILE
    old_state = _load_state(state_path)
    state: dict[int, dict[str, Any]] = {}

    files = find_images(images_dir)
    label_ids = set(labels["image_id"].tolist())
    jobs: list[tuple[_ImageJob, dict[str, Any]]] = []
    missing: list[int] = []
    reused = 0
    for image_id in labels["image_id"].tolist():
        source = files.get(image_id)
        if source is None:
            missing.append(image_id)
            continue
        stat = source.stat()
        cache = cache_dir / f"{image_id}.jpg"
        key = {
            "image_id": image_id,
            "source_path": _relative_to(source, out_dir),
            "source_bytes": stat.st_size,
            "source_mtime_ns": stat.st_mtime_ns,
            "cache_sig": cache_sig,
        }
        old = old_state.get(image_id)
        if old is not None and all(old[k] == v for k, v in key.items()):
            needs_cache = old["status"] == "ok" and min(int(old["width"]), int(old["height"])) >= min_side
            if not needs_cache or (old["cache_written"] and cache.is_file()):
                state[image_id] = old
                reused += 1
                continue
        job = _ImageJob(
            image_id, str(source), str(cache), size, jpeg_quality, resample, min_side, max_pixels, fast_decode
        )
        jobs.append((job, key))

    logger.info("%d images to process, %d unchanged, %d missing", len(jobs), reused, len(missing))
    bar = _progress_bar(progress, total=len(jobs), desc="prepare", unit="img")
    try:
        with cf.ThreadPoolExecutor(workers) as pool:
            results = imap_bounded(pool, lambda item: _process_image(item[0]), jobs, 4 * workers)
            with contextlib.closing(results):  # cancels queued jobs at once on Ctrl-C
                for (job, key), result in results:
                    entry = dict.fromkeys(_STATE_COLUMNS)
                    entry.update(key)
                    entry.update({"detail": "", "mode": "", "format": "", "cache_written": False})
                    entry.update(result)
                    state[job.image_id] = entry
                    bar.update(1)
    except BaseException as exc:
        # Ctrl-C, a full disk, a vanished directory: keep what was done so a rerun starts from there.
        _save_state(state_path, {**old_state, **state})
        logger.warning(
            "stopped by %s: saved %d image results; rerun to continue", type(exc).__name__, len(state)
        )
        raise
    finally:
        bar.close()
    _save_state(state_path, state)

    # Assemble: the label columns and split come from AVA.txt, the rest from the per-image state.
    image_rejections: list[tuple[Optional[int], str, str]] = [
        (i, "missing_file", f"no file {i}.jpg (or another image suffix) in the images directory")
        for i in missing
    ]
    usable: list[dict[str, Any]] = []
    for image_id in labels["image_id"].tolist():
        entry = state.get(image_id)
        if entry is None:
            continue
        if entry["status"] != "ok":
            image_rejections.append((image_id, entry["status"], entry["detail"]))
        elif min(int(entry["width"]), int(entry["height"])) < min_side:
            image_rejections.append(
                (image_id, "too_small", f"{entry['width']}x{entry['height']}, shorter side < {min_side} px")
            )
        else:
            usable.append(
                {
                    "image_id": image_id,
                    "source_path": entry["source_path"],
                    "cache_path": _relative_to(cache_dir / f"{image_id}.jpg", out_dir),
                    "file_bytes": entry["source_bytes"],
                    "width": int(entry["width"]),
                    "height": int(entry["height"]),
                    "mode": entry["mode"],
                    "format": entry["format"],
                }
            )
    images = pd.DataFrame(
        usable,
        columns=[
            "image_id",
            "source_path",
            "cache_path",
            "file_bytes",
            "width",
            "height",
            "mode",
            "format",
        ],
    )
    manifest = labels.merge(images, on="image_id", how="inner", validate="one_to_one")
    manifest = manifest.astype(
        {"image_id": "int64", "file_bytes": "int64", "width": "int64", "height": "int64"}
    )
    manifest["aspect_ratio"] = manifest["width"] / manifest["height"]
    manifest = manifest[MANIFEST_COLUMNS].sort_values("image_id", kind="stable").reset_index(drop=True)
    for column in ("split", "source_path", "cache_path", "mode", "format"):
        manifest[column] = manifest[column].astype(str)
    rejected = pd.concat([row_rejections, _rejected_frame(image_rejections)], ignore_index=True).astype(
        {"image_id": "Int64"}
    )

    _atomic_write(out_dir / MANIFEST_FILE, lambda tmp: manifest.to_parquet(tmp, index=False))
    _atomic_write(out_dir / REJECTED_FILE, lambda tmp: rejected.to_csv(tmp, index=False))
    seconds = time.perf_counter() - start
    reason_counts = rejected["reason"].value_counts()
    summary: dict[str, Any] = {
        "beholder_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            "ava_txt": str(Path(ava_txt).absolute()),
            "images": str(images_dir),
            "test_list": str(Path(test_list).absolute()) if test_list is not None else None,
        },
        "options": {
            "val_fraction": val_fraction,
            "seed": seed,
            "image_size": list(size),
            "jpeg_quality": jpeg_quality,
            "resample": resample,
            "min_side": min_side,
            "max_pixels": max_pixels,
            "fast_decode": fast_decode,
            "workers": workers,
        },
        "cache_dir": _relative_to(cache_dir, out_dir),
        "label_rows": len(labels) + len(row_rejections),
        "manifest_rows": len(manifest),
        "splits": {name: int((manifest["split"] == name).sum()) for name in SPLITS},
        "rejected_total": len(rejected),
        "rejected": {reason: int(reason_counts.get(reason, 0)) for reason in ROW_REASONS + IMAGE_REASONS},
        "images": {"processed": len(jobs), "reused": reused},
        "test_list_ids": len(test_ids),
        "test_list_ids_without_label": len(test_ids - label_ids),
        "unlabelled_image_files": len(set(files) - label_ids),
        "seconds": round(seconds, 3),
        "images_per_second": round(len(jobs) / seconds, 2) if jobs and seconds > 0 else None,
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    logger.info("wrote %s (%d rows) and %s", out_dir / MANIFEST_FILE, len(manifest), out_dir / REJECTED_FILE)
    return summary

"""Your own rated photos: a CSV of ratings -> label rows for the one prepare pipeline.

``prepare_labels(ratings.csv, out_dir)`` reads a CSV with a ``path`` column and one family of
label columns, turns each row into a 10-bin rating distribution, and hands the rows to
:func:`beholder.data.prepare.prepare_images`: the same validation, measuring, resize cache and
incremental reruns as AVA, into the same ``manifest.parquet``.

Label columns, the first family present wins (names match case-insensitively):

* ``votes_1`` .. ``votes_10`` (or AVA's ``c1`` .. ``c10``): vote counts; the distribution is
  ``votes / sum(votes)``.
* ``p1`` .. ``p10``: a distribution; non-negative, normalised to sum 1.
* ``mean`` (or ``mean_score``; 1..10), optionally ``std`` (or ``std_score``; in (0, 5], default
  :data:`DEFAULT_STD`): see :func:`distribution_from_mean`.

This module is the one home of that column contract and of the rule for a usable row
(:func:`rating_columns`, :func:`parse_numbers`, :func:`rating_problem`): ``beholder evaluate``
reads the same CSVs through them, and checks AVA manifests' votes with the same rule. It is a little
over 500 lines because that contract and the CSV reading that enforces it belong in one module.

Optional columns: ``id`` (or ``image_id``), the image's name in every output (default: the path as
written); ``split`` (``train``/``val``/``test``; empty cells are drawn as below).

Rows are matched to files by path, never by position: relative paths resolve against the images
directory (default: the CSV's folder). So reordering, inserting or deleting rows never gives a photo
another photo's labels. A split that is not given is drawn per file from a hash of the seed and
the file's path, so it does not depend on the order of the rows nor on the other rows.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from beholder.data.ava import MAX_LINE_BYTES, bounded_lines
from beholder.data.manifest import SPLITS
from beholder.data.prepare import IMAGE_REASONS, cache_options, prepare_images, summary_base, write_prepared
from beholder.errors import ConfigError
from beholder.files import PathLike
from beholder.ratings import NUM_BINS, PROBABILITY_COLUMNS, SCORES, VOTE_COLUMNS, mean_std

log = logging.getLogger(__name__)

#: AVA's typical spread of one photo's ratings (the mean of the per-image std over AVA is about 1.4).
DEFAULT_STD = 1.4
#: Why a row of the ratings CSV is rejected.
LABEL_ROW_REASONS = (
    "missing_path",
    "non_numeric_value",
    "non_finite_value",
    "negative_value",
    "zero_votes",
    "mean_out_of_range",
    "bad_std",
    "bad_split",
    "duplicate_id",
    "conflicting_duplicate",
)
REJECTED_COLUMNS = ["image_id", "reason", "detail"]
#: Columns the manifest of a ratings CSV has beyond the common ones.
EXTRA_COLUMNS = ["label_path", "label_kind"]

_LARGEST_VALUE = 1e12  # far above any real vote count; keeps sums and means exact in float64


# --------------------------------------------------------------------------------------------------
# Mean (+ std) -> distribution


_erfc = np.vectorize(math.erfc, otypes=[float])  # NumPy has no erfc; 11 edges per row is cheap


def _discretised_normal(centre: np.ndarray, std: np.ndarray) -> np.ndarray:
    edges = np.arange(0.5, NUM_BINS + 1.0)  # 0.5, 1.5, ..., 10.5: bin i is [i - 0.5, i + 0.5)
    z = (edges[None, :] - centre[:, None]) / (std[:, None] * math.sqrt(2.0))
    lower, upper = z[:, :-1], z[:, 1:]
    # A bin's mass from whichever tail it lies in: erfc keeps full precision there, while
    # differences of CDF values near 1 would cancel to noise (a bin 8 std away is 1e-15, not 0).
    right_tail = 0.5 * (_erfc(lower) - _erfc(upper))
    left_tail = 0.5 * (_erfc(-upper) - _erfc(-lower))
    mass = np.clip(np.where(lower + upper > 0, right_tail, left_tail), 0.0, None)
    total = mass.sum(axis=1, keepdims=True)
    # So far outside 1..10 that every mass underflows: all of it on the nearest end.
    empty = total[:, 0] <= 1e-300
    mass[empty] = 0.0
    mass[empty, np.where(centre[empty] < 5.5, 0, NUM_BINS - 1)] = 1.0
    return mass / np.where(empty[:, None], 1.0, total)


def distribution_from_mean(mean: Any, std: Any = DEFAULT_STD) -> np.ndarray:
    """(N,) means in 1..10 and stds > 0 -> (N, 10) distributions whose mean is exactly ``mean``.

    The distribution is a normal discretised over the scores 1..10: bin ``i`` gets the normal's
    probability of ``[i - 0.5, i + 0.5)``, and the mass outside ``[0.5, 10.5)`` is dropped by
    renormalising. Cutting the tails would pull the mean towards 5.5, so the normal's centre is
    shifted (by bisection, per row) until the discretised mean equals ``mean``; ``std`` is the
    normal's spread before the cut.
    """
    target = np.atleast_1d(np.asarray(mean, dtype=np.float64))
    spread = np.broadcast_to(np.asarray(std, dtype=np.float64), target.shape).copy()
    low = np.full(target.shape, -30.0)
    high = np.full(target.shape, 40.0)
    for _ in range(60):  # the discretised mean increases with the centre; 60 halvings of 70 < 1e-16
        centre = (low + high) / 2
        below = _discretised_normal(centre, spread) @ SCORES < target
        low = np.where(below, centre, low)
        high = np.where(below, high, centre)
    return _discretised_normal((low + high) / 2, spread)


# --------------------------------------------------------------------------------------------------
# Reading the CSV


#: The label column families a ratings CSV may give, the first present wins. ``c1..c10`` is AVA's
#: own name for vote counts, ``mean_score``/``std_score`` the names other NIMA repositories use.
_RATING_FAMILIES = (
    ("votes", VOTE_COLUMNS),
    ("votes", [f"c{score}" for score in range(1, NUM_BINS + 1)]),
    ("probabilities", PROBABILITY_COLUMNS),
)
_MEAN_NAMES, _STD_NAMES = ("mean", "mean_score"), ("std", "std_score")


@dataclass(frozen=True)
class RatingColumns:
    """Which columns of a ratings CSV hold its labels.

    ``kind`` is ``votes``, ``probabilities`` or ``mean``; ``columns`` are the CSV's own column
    names, in bin order (or the mean column); ``std`` is the std column of a mean-only CSV, if any.
    """

    kind: str
    columns: list[str]
    std: str | None = None


def rating_columns(columns: list[str], path: PathLike) -> RatingColumns:
    """The label columns of a ratings CSV with header ``columns`` (names match case-insensitively).

    Raises:
        ConfigError: a family given only in part, or no family at all.
    """
    by_name = {str(column).lower(): column for column in columns}
    for kind, family in _RATING_FAMILIES:
        present = [by_name[name] for name in family if name in by_name]
        if len(present) == len(family):
            return RatingColumns(kind, present)
        if present:
            missing = [name for name in family if name not in by_name]
            raise ConfigError(f"{path}: has {present[0]} but lacks {missing}")
    mean = next((by_name[name] for name in _MEAN_NAMES if name in by_name), None)
    if mean is None:
        raise ConfigError(
            f"{path}: needs votes_1..votes_10, p1..p10 or mean (optionally with std) columns "
            f"(vote counts may also be named c1..c10); found {columns}"
        )
    return RatingColumns("mean", [mean], next((by_name[name] for name in _STD_NAMES if name in by_name), None))


def parse_numbers(frame: pd.DataFrame, columns: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, k) float values of the text ``columns``, and per row the index of the first cell that
    is not a number (-1 if none). "inf" and "nan" parse: :func:`rating_problem` rejects them."""
    values = np.full((len(frame), len(columns)), np.nan)
    bad = np.full(len(frame), -1)
    for j, column in enumerate(columns):
        text = frame[column].fillna("").astype(str).str.strip()
        parsed = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        not_number = np.isnan(parsed) & ~text.str.lower().isin(["nan", "-nan", "+nan"]).to_numpy()
        bad = np.where((bad < 0) & not_number, j, bad)
        values[:, j] = parsed
    return values, bad


def rating_problem(row: np.ndarray, kind: str) -> tuple[str, str] | None:
    """Why one row of ratings is unusable, as ``(reason, detail)``, or None when it is fine.

    ``row`` is ten vote counts or probabilities, or ``(mean, std)`` with std NaN when not given.
    The one rule for every source of labels: AVA manifests, ratings CSVs for ``prepare`` and for
    ``evaluate``. The reasons are :data:`LABEL_ROW_REASONS`.
    """
    if kind == "mean":
        mean, std = row[0], row[1]
        if not np.isfinite(mean) or abs(mean) > _LARGEST_VALUE:
            return "non_finite_value", f"mean score {mean:g} is not a finite number"
        if not 1.0 <= mean <= 10.0:
            return "mean_out_of_range", f"mean score {mean:g} is outside 1..10"
        if not np.isnan(std) and not (np.isfinite(std) and 0.0 < std <= 5.0):
            return "bad_std", f"std {std:g} is not in (0, 5]"
        return None
    what = "vote count" if kind == "votes" else "probability"
    if not np.isfinite(row).all():
        return "non_finite_value", f"a {what} is not a finite number ({row[~np.isfinite(row)][0]})"
    if (np.abs(row) > _LARGEST_VALUE).any():
        return "non_finite_value", f"a {what} is beyond {_LARGEST_VALUE:g}"
    if (row < 0).any():
        return "negative_value", f"a {what} is negative"
    if not row.sum() > 0:
        return "zero_votes", "every vote count is zero (no votes)" if kind == "votes" else f"every {what} is zero"
    return None


def _row_labels(
    frame: pd.DataFrame, rating: RatingColumns, default_std: float
) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
    """(N, 10) distributions (or counts), (N,) totals (NaN unless votes), and per-row rejection
    reasons as ``"reason:detail"``."""
    kind = rating.kind
    columns = rating.columns + ([rating.std] if rating.std else [])
    values, bad = parse_numbers(frame, columns)
    if kind == "mean":
        if rating.std is None:
            values = np.column_stack([values[:, 0], np.full(len(frame), default_std)])
        else:  # an empty std cell means the default
            empty = (frame[rating.std].str.strip() == "").to_numpy()
            values[empty, 1] = default_std
            bad = np.where(empty & (bad == 1), -1, bad)
    reasons: list[str | None] = []
    for i, row in enumerate(values):
        if bad[i] >= 0:
            column = columns[bad[i]]
            reasons.append(f"non_numeric_value:column {column} is {frame[column].iloc[i]!r}")
        elif kind == "mean" and np.isnan(row[1]):  # empty cells got the default: this one said "nan"
            reasons.append("non_finite_value:std is not a finite number (nan)")
        else:
            problem = rating_problem(row, kind)
            reasons.append(None if problem is None else ":".join(problem))
    good = np.array([reason is None for reason in reasons], dtype=bool)
    counts = np.zeros((len(frame), NUM_BINS))
    totals = np.full(len(frame), np.nan)
    if kind == "mean":
        if good.any():
            counts[good] = distribution_from_mean(values[good, 0], values[good, 1])
    else:
        counts[good] = values[good]
        if kind == "votes":
            totals[good] = values[good].sum(axis=1)
        else:
            counts[good] /= values[good].sum(axis=1, keepdims=True)
    return counts, totals, reasons


def _resolve(raw: str, images_dir: Path) -> Path:
    path = Path(os.path.expanduser(raw))
    return Path(os.path.normpath(path if path.is_absolute() else images_dir / path))


def _key(file: Path, images_dir: Path) -> str:
    try:
        return file.relative_to(images_dir).as_posix()
    except ValueError:
        return file.as_posix()


def _hash_splits(keys: list[str], seed: int, val_fraction: float, test_fraction: float) -> list[str]:
    """Per file: ``test`` when u < test_fraction, ``val`` when u < test + val, else ``train``, with
    u uniform in [0, 1) from SHA-256 of the seed and the file's key. Order- and neighbour-free."""
    splits = []
    for key in keys:
        digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2.0**64
        splits.append("test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train")
    return splits


def _check_line_lengths(path: Path) -> None:
    """ConfigError for a line over MAX_LINE_BYTES: the CSV reader would hold a whole line in memory,
    and no row of a path and ten numbers is that long (a file without newlines is not a ratings CSV)."""
    with open(path, "rb") as handle:
        for lineno, line, length in bounded_lines(handle):
            if line is None:
                raise ConfigError(
                    f"{path}: line {lineno} is {length:,} bytes, over {MAX_LINE_BYTES:,}; not a ratings CSV"
                )


def read_ratings_csv(
    labels_csv: PathLike,
    images_dir: Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    default_std: float = DEFAULT_STD,
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Parse a ratings CSV: ``(labels, rejected, kind)``.

    ``labels`` has one row per accepted image: ``key`` (the file relative to ``images_dir``),
    ``file``, ``image_id``, ``label_path``, ``split``, the ten vote columns (counts, or probabilities
    for the other kinds), ``n_votes`` (NaN unless counts), ``mean`` and ``std``.
    """
    path = Path(labels_csv)
    if not path.is_file():
        raise ConfigError(f"ratings CSV not found: {path}")
    _check_line_lengths(path)
    try:
        frame = pd.read_csv(
            path, dtype=str, keep_default_na=False, encoding="utf-8-sig", skipinitialspace=True
        )
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the ratings CSV {path}: {exc}") from exc
    frame.columns = [str(column).strip() for column in frame.columns]
    columns = list(frame.columns)
    if "path" not in columns:
        raise ConfigError(
            f"{path}: needs a 'path' column (the photo, relative to the CSV's folder); found {columns}"
        )
    rating = rating_columns(columns, path)
    kind = rating.kind
    id_column = next((column for column in ("id", "image_id") if column in columns), None)
    counts, totals, reasons = _row_labels(frame, rating, default_std)

    lines = np.arange(2, len(frame) + 2)  # line 1 is the header
    raw_paths = frame["path"].str.strip().tolist()
    ids = frame[id_column].str.strip().tolist() if id_column else raw_paths
    ids = [given or raw for given, raw in zip(ids, raw_paths)]
    files = [_resolve(raw, images_dir) if raw else None for raw in raw_paths]
    keys = [_key(file, images_dir) if file is not None else "" for file in files]
    given_split = frame["split"].str.strip().str.lower().tolist() if "split" in columns else [""] * len(frame)
    for i, raw in enumerate(raw_paths):
        if reasons[i] is None and not raw:
            reasons[i] = "missing_path:the path cell is empty"
        elif reasons[i] is None and given_split[i] and given_split[i] not in SPLITS:
            reasons[i] = f"bad_split:split {given_split[i]!r} is not one of {', '.join(SPLITS)}"
    drawn = _hash_splits(keys, seed, val_fraction, test_fraction)
    splits = [given or draw for given, draw in zip(given_split, drawn)]
    _reject_duplicates(keys, ids, counts, splits, reasons, lines)

    good = [i for i, reason in enumerate(reasons) if reason is None]
    distribution = counts[good] / counts[good].sum(axis=1, keepdims=True) if good else np.zeros((0, NUM_BINS))
    mean, std = mean_std(distribution)
    labels = pd.DataFrame(
        {
            "key": [keys[i] for i in good],
            "file": [files[i] for i in good],
            "image_id": [ids[i] for i in good],
            "label_path": [raw_paths[i] for i in good],
            "label_kind": kind,
            "split": [splits[i] for i in good],
        }
    )
    for j, column in enumerate(VOTE_COLUMNS):
        labels[column] = counts[good, j] if good else np.zeros(0)
    labels["n_votes"] = totals[good] if good else np.zeros(0)
    labels["mean"], labels["std"] = mean, std
    rejected = pd.DataFrame(
        [
            (ids[i], reason.split(":", 1)[0], f"line {lines[i]}: {reason.split(':', 1)[1]}")
            for i, reason in enumerate(reasons)
            if reason is not None
        ],
        columns=REJECTED_COLUMNS,
    ).astype(str)
    return labels, rejected, kind


def _reject_duplicates(
    keys: list[str],
    ids: list[str],
    counts: np.ndarray,
    splits: list[str],
    reasons: list[str | None],
    lines: np.ndarray,
) -> None:
    """Rows naming the same file: identical labels keep the smallest id, conflicting ones are all
    rejected; an id on several files rejects them all. Order-free, so reordering rows changes nothing."""
    by_key: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        if reasons[i] is None:
            by_key.setdefault(key, []).append(i)
    for rows in by_key.values():
        if len(rows) < 2:
            continue
        where = ", ".join(str(lines[i]) for i in rows)
        same = all(np.allclose(counts[i], counts[rows[0]]) and splits[i] == splits[rows[0]] for i in rows)
        keep = min(rows, key=lambda i: ids[i]) if same else None
        for i in rows:
            if i == keep:
                continue
            reasons[i] = (
                f"duplicate_id:the same file as lines {where}, with the same labels (one kept)"
                if same
                else f"conflicting_duplicate:the same file as lines {where}, with other labels"
            )
    by_id: dict[str, list[int]] = {}
    for i, image_id in enumerate(ids):
        if reasons[i] is None:
            by_id.setdefault(image_id, []).append(i)
    for rows in by_id.values():
        if len(rows) > 1:
            where = ", ".join(str(lines[i]) for i in rows)
            for i in rows:
                reasons[i] = f"duplicate_id:id {ids[i]!r} names different files on lines {where}"


# --------------------------------------------------------------------------------------------------
# prepare


def prepare_labels(
    labels_csv: PathLike,
    out_dir: PathLike,
    *,
    images_dir: PathLike | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    default_std: float = DEFAULT_STD,
    progress: bool | None = None,
    **cache: Any,
) -> dict[str, Any]:
    """Prepare your own rated photos: the AVA pipeline's validation, cache and manifest, from a CSV.

    Args:
        labels_csv: the ratings CSV (see the module docstring for its columns).
        out_dir: the prepared directory (created); then ``beholder train --data out_dir``.
        images_dir: where relative paths point (default: the CSV's folder).
        val_fraction, test_fraction, seed: the drawn split of rows without a ``split`` value.
        default_std: the spread of rows that give only a mean.
        progress: show a progress bar; None shows it only on a terminal.
        cache: ``image_size``, ``jpeg_quality``, ``resample``, ``min_side``, ``max_pixels``,
            ``fast_decode``, ``workers``: see :func:`beholder.data.prepare.cache_options`.

    Returns:
        the summary also written to ``prepare.json``.

    Raises:
        ConfigError: a missing CSV or images directory, missing columns, invalid options.
    """
    start = time.perf_counter()
    options = cache_options(**cache)
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if val_fraction + test_fraction >= 1.0:
        raise ConfigError(f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}")
    if not 0.0 < default_std <= 5.0:
        raise ConfigError(f"default_std must be in (0, 5], got {default_std}")
    csv_path = Path(labels_csv).absolute()
    images = Path(images_dir).absolute() if images_dir is not None else csv_path.parent
    if not images.is_dir():
        raise ConfigError(f"images directory not found: {images}")
    out = Path(out_dir).absolute()

    labels, rejected_rows, kind = read_ratings_csv(
        csv_path,
        images,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        default_std=default_std,
    )
    ids = dict(zip(labels["key"], labels["image_id"]))
    sources = [
        (key, file, hashlib.sha256(key.encode()).hexdigest()[:24] + ".jpg")
        for key, file in zip(labels["key"], labels["file"])
    ]
    results = prepare_images(sources, out, options, progress=progress)

    labels["key"] = labels["key"].astype(str)
    manifest = labels.drop(columns=["file"]).merge(
        results.images, on="key", how="inner", validate="one_to_one"
    )
    manifest = manifest.assign(tag1=0, tag2=0, challenge_id=0)
    manifest = manifest.astype({"file_bytes": "int64", "width": "int64", "height": "int64"})
    manifest["aspect_ratio"] = manifest["width"] / manifest["height"]
    manifest = manifest.sort_values(["image_id", "key"], kind="stable")
    for column in ("image_id", "split", "source_path", "cache_path", "mode", "format", *EXTRA_COLUMNS):
        manifest[column] = manifest[column].astype(str)
    image_rejections = pd.DataFrame(
        [(ids[key], reason, detail) for key, reason, detail in results.rejections], columns=REJECTED_COLUMNS
    ).astype(str)
    rejected = pd.concat([rejected_rows, image_rejections], ignore_index=True)

    summary = summary_base(
        {"labels": str(csv_path), "images": str(images)},
        {
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            "default_std": default_std,
            "label_kind": kind,
        },
        out,
        options,
        manifest,
        rejected,
        results,
        LABEL_ROW_REASONS + IMAGE_REASONS,
        time.perf_counter() - start,
    )
    summary["label_rows"] = len(labels) + len(rejected_rows)
    write_prepared(out, manifest, rejected, summary)
    return summary

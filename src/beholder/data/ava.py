"""AVA labels: parse ``AVA.txt``, read the official image lists, assign the splits, find the images.

AVA (Murray et al., CVPR 2012) ships ``AVA.txt``: one row per image with 15 whitespace-separated
integer columns -- index, image id, the counts of votes for scores 1..10, two semantic tag ids and
the challenge id. NIMA (Talebi & Milanfar, 2018) trains on the normalised vote distribution.

Parsing never crashes on a bad row: each is rejected with a reason from :data:`ROW_REASONS`. The
prepare pipeline that turns these labels and the downloaded images into a manifest lives in
:mod:`beholder.data.prepare`; rating facts (scores, vote columns, moments) in :mod:`beholder.ratings`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from beholder.errors import ConfigError
from beholder.files import PathLike
from beholder.imageio import IMAGE_SUFFIXES
from beholder.ratings import VOTE_COLUMNS, mean_std

log = logging.getLogger(__name__)

#: Columns of the good-rows table returned by :func:`parse_ava_txt`.
LABEL_COLUMNS = ["image_id", *VOTE_COLUMNS, "n_votes", "mean", "std", "tag1", "tag2", "challenge_id"]
REJECTED_COLUMNS = ["image_id", "reason", "detail"]

#: Why a line of AVA.txt is rejected.
ROW_REASONS = (
    "bad_column_count",
    "non_integer_field",
    "negative_value",
    "zero_votes",
    "duplicate_id",
    "line_too_long",
)
#: A line longer than this (bytes) is a malformed row: AVA's rows are under 100 bytes, and reading a
#: multi-gigabyte line whole (a file without newlines) would hold all of it in memory.
MAX_LINE_BYTES = 64 * 1024

_N_COLUMNS = 15
_MAX_FIELD = 2**31 - 1  # largest absolute value accepted in an AVA.txt column
_BOM = b"\xef\xbb\xbf"


def bounded_lines(
    handle: BinaryIO, max_bytes: int = MAX_LINE_BYTES
) -> Iterator[tuple[int, str | None, int]]:
    """``(line number, text, length in bytes)`` of each line; text is None for a line over ``max_bytes``.

    Memory stays bounded by ``max_bytes`` whatever the file holds: an overlong line is skipped in
    chunks, never read whole. A UTF-8 byte-order mark before the first line is dropped (Windows
    editors write one; it would otherwise spoil the first row). Stray bytes decode as U+FFFD.
    """
    lineno = 0
    while True:
        chunk = handle.readline(max_bytes + 1)
        if not chunk:
            return
        lineno += 1
        if lineno == 1 and chunk.startswith(_BOM):
            chunk = chunk[len(_BOM) :]
        length = len(chunk)
        if length > max_bytes and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):  # skip the rest of the line, chunk by chunk
                chunk = handle.readline(max_bytes)
                length += len(chunk)
            yield lineno, None, length
            continue
        yield lineno, chunk.decode("utf-8", errors="replace"), length


def _parse_int(token: str) -> int | None:
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


def _first_int(fields: Sequence[str], index: int) -> int | None:
    return _parse_int(fields[index]) if index < len(fields) else None


def _check_row(fields: Sequence[str], lineno: int) -> tuple[list[int] | None, str, str]:
    """``(15 ints, "", "")`` for a valid row, else ``(None, reason, detail)``."""
    if len(fields) != _N_COLUMNS:
        return None, "bad_column_count", f"line {lineno}: {len(fields)} columns, expected {_N_COLUMNS}"
    values: list[int] = []
    for position, token in enumerate(fields, 1):
        # "inf", "nan", "5.5" and counts beyond +-2**31-1 all end here: only plain integers are votes.
        value = _parse_int(token)
        if value is None:
            detail = f"line {lineno}: column {position} is {token[:20]!r}, not an integer (or beyond +-{_MAX_FIELD})"
            return None, "non_integer_field", detail
        values.append(value)
    negative = [pos for pos, value in enumerate(values[1:], 2) if value < 0]
    if negative:
        return None, "negative_value", f"line {lineno}: column {negative[0]} is negative"
    if sum(values[2:12]) == 0:
        return None, "zero_votes", f"line {lineno}: no votes"
    return values, "", ""


def _read_ava_rows(path: PathLike) -> tuple[list[list[int]], list[tuple[int | None, str, str]]]:
    """Parse AVA.txt into good rows (14 ints: id, 10 votes, tag1, tag2, challenge) and rejections."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"AVA label file not found: {path}")
    good: list[list[int]] = []
    rejected: list[tuple[int | None, str, str]] = []
    first_line: dict[int, int] = {}
    with open(path, "rb") as handle:
        for lineno, line, length in bounded_lines(handle):
            if line is None:
                detail = f"line {lineno}: {length:,} bytes, over the {MAX_LINE_BYTES:,}-byte limit of a row"
                rejected.append((None, "line_too_long", detail))
                continue
            fields = line.split()
            if not fields:
                continue  # blank lines (a trailing newline, say) are not rows
            values, reason, detail = _check_row(fields, lineno)
            if values is None:
                rejected.append((_first_int(fields, 1), reason, detail))
            elif values[1] in first_line:
                where = f"line {lineno}: id already on line {first_line[values[1]]} (first one kept)"
                rejected.append((values[1], "duplicate_id", where))
            else:
                first_line[values[1]] = lineno
                good.append(values[1:])
    return good, rejected


def rejected_frame(items: Sequence[tuple[int | None, str, str]]) -> pd.DataFrame:
    """The ``rejected.csv`` table (:data:`REJECTED_COLUMNS`) of ``(image id or None, reason, detail)``."""
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
        mean, std = mean_std(votes / totals[:, None])
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
    return labels, rejected_frame(rejected)


def read_image_list(path: PathLike) -> set[int]:
    """Read an AVA image list (``*.jpgl``: one integer id per line; blank lines and ``#`` ignored).

    Raises:
        ConfigError: the file is missing or a line is not an integer id.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"image list not found: {path}")
    ids: set[int] = set()
    with open(path, "rb") as handle:
        for lineno, line, _ in bounded_lines(handle):
            if line is None:
                raise ConfigError(f"{path}:{lineno}: line over {MAX_LINE_BYTES:,} bytes; not an image list")
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


def default_test_list(ava_txt: PathLike) -> Path | None:
    """The official ``generic_test.jpgl`` where the AVA release puts it beside AVA.txt, if present."""
    candidate = Path(ava_txt).parent / "aesthetics_image_lists" / "generic_test.jpgl"
    return candidate if candidate.is_file() else None

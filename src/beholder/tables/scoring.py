"""Rows in, scored rows out: resolve each row's image, fetch URLs into memory, score, add the columns.

:class:`RowScorer` is the one adapter both engines use (the local loop and Ray's actors), so they
give the same rows and scores. A row whose image cannot be had (no path, a missing or corrupt
file, a URL that fails) gets an ``error`` and empty scores; it never stops the run.
"""

from __future__ import annotations

import logging
import os
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from beholder.percentiles import percentile

log = logging.getLogger(__name__)

#: Columns every output row gets, after the input's own.
P_COLUMNS = tuple(f"p{i}" for i in range(1, 11))
SCORE_COLUMNS = ("mean", "std", "percentile", *P_COLUMNS, "error")
SCORE_FIELDS = [pa.field(name, pa.float64()) for name in SCORE_COLUMNS[:-1]] + [
    pa.field("error", pa.string())
]
_URL_SCHEMES = ("http", "https")


def output_schema(input_schema: pa.Schema) -> pa.Schema:
    """The input's columns, then :data:`SCORE_COLUMNS`."""
    return pa.schema(list(input_schema) + SCORE_FIELDS)


@dataclass
class RowScore:
    """What one row gets: a score, or why it has none."""

    mean: float | None = None
    std: float | None = None
    percentile: float | None = None
    distribution: list[float] | None = None
    error: str | None = None


def score_images(scorer: Any, sources: Sequence[str | bytes], names: Sequence[str]) -> list[RowScore]:
    """Score decoded-on-demand sources (paths or bodies) with a :class:`beholder.Scorer`.

    The only place that reads the Scorer's results: mean, std, distribution and error, and the
    percentile (taken from the result when it has one, else from :mod:`beholder.percentiles`).
    """
    scores = []
    for result in scorer.iter_score(list(sources), names=list(names)):
        if result.error is not None:
            scores.append(RowScore(error=str(result.error)))
            continue
        rank = getattr(result, "percentile", None)
        scores.append(
            RowScore(
                mean=float(result.mean),
                std=float(result.std),
                percentile=float(percentile(result.mean) if rank is None else rank),
                distribution=[float(p) for p in result.distribution],
            )
        )
    return scores


class SourceError(Exception):
    """A cell that names no image this run can read; the message is the row's error."""


def resolve_source(value: Any, base_dir: str) -> str:
    """A cell of the path column -> an absolute local path or an http(s) URL.

    Relative paths are taken from the table's own folder, so a table and its images move together.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SourceError("no image path in this row")
    if not isinstance(value, str):
        raise SourceError(f"the path cell holds a {type(value).__name__}, not text")
    try:
        scheme = urllib.parse.urlsplit(value).scheme.lower()
    except ValueError as exc:  # "http://[::1/a.jpg": an unclosed IPv6 literal
        raise SourceError(f"malformed URL ({exc})") from None
    if scheme in _URL_SCHEMES:
        return value
    if len(scheme) > 1:  # one letter is a Windows drive (C:\...), not a scheme
        raise SourceError(f"unsupported URL scheme {scheme!r} (only http, https and local paths)")
    return value if os.path.isabs(value) else os.path.join(base_dir, value)


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(source).scheme.lower() in _URL_SCHEMES


class RowScorer:
    """Adds :data:`SCORE_COLUMNS` to tables of rows.

    Args:
        scorer: a :class:`beholder.Scorer`.
        column: the column holding paths or URLs.
        base_dir: where relative paths start (the input table's folder).
        fetcher: a :class:`beholder.data.download.Fetcher` for URLs (None: URLs are row errors).
        fetch_threads: URLs fetched at once (each host is further limited by the fetcher).
    """

    def __init__(self, scorer: Any, column: str, base_dir: str, fetcher: Any = None, fetch_threads: int = 16):
        self.scorer = scorer
        self.column = column
        self.base_dir = base_dir
        self.fetcher = fetcher
        # Rows handed to the Scorer at once: enough for its decode-ahead window, few enough that
        # the fetched bodies of two windows (this one and the next, fetched meanwhile) stay small.
        self.window = max(8, 2 * int(getattr(scorer, "batch_size", 32)))
        self._pool = ThreadPoolExecutor(max(1, fetch_threads), thread_name_prefix="beholder-fetch")

    def close(self) -> None:
        if self.fetcher is not None:
            self.fetcher.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def score_table(self, table: pa.Table) -> pa.Table:
        """``table`` with the score columns appended; one output row per input row, in order."""
        cells = table.column(self.column).to_pylist()
        scores: list[RowScore] = []
        windows = [cells[i : i + self.window] for i in range(0, len(cells), self.window)]
        prepared = self._prepare(windows[0]) if windows else []
        for index in range(len(windows)):
            upcoming = self._prepare(windows[index + 1]) if index + 1 < len(windows) else []
            scores.extend(self._score_window(windows[index], prepared))
            prepared = upcoming
        return append_scores(table, scores)

    def _prepare(self, cells: list) -> list[str | Future | SourceError]:
        """Resolve each cell; start fetching URLs (returns futures for them)."""
        prepared: list[str | Future | SourceError] = []
        for value in cells:
            try:
                source = resolve_source(value, self.base_dir)
            except SourceError as exc:
                prepared.append(exc)
                continue
            if is_url(source):
                if self.fetcher is None:
                    prepared.append(SourceError("URLs are not fetched in this run"))
                else:
                    prepared.append(self._pool.submit(self.fetcher.fetch, source))
            else:
                prepared.append(source)
        return prepared

    def _score_window(self, cells: list, prepared: list) -> list[RowScore]:
        from beholder.data.download import FetchError

        outcome: list[RowScore] = [RowScore()] * len(cells)  # every slot is set below
        sources, names, rows = [], [], []
        for row, (value, item) in enumerate(zip(cells, prepared)):
            if isinstance(item, Future):
                try:
                    item = item.result()
                except FetchError as exc:
                    outcome[row] = RowScore(error=f"{exc.reason}: {exc.detail}")
                    continue
            if isinstance(item, SourceError):
                outcome[row] = RowScore(error=str(item))
                continue
            sources.append(item)
            names.append(str(value))
            rows.append(row)
        for row, score in zip(rows, score_images(self.scorer, sources, names)):
            outcome[row] = score
        return outcome


def append_scores(table: pa.Table, scores: Sequence[RowScore]) -> pa.Table:
    """``table`` plus one column per name in :data:`SCORE_COLUMNS`, from ``scores`` (one per row)."""
    columns: dict[str, list] = {name: [] for name in SCORE_COLUMNS}
    for score in scores:
        columns["mean"].append(score.mean)
        columns["std"].append(score.std)
        columns["percentile"].append(score.percentile)
        for name, value in zip(P_COLUMNS, score.distribution or [None] * len(P_COLUMNS)):
            columns[name].append(value)
        columns["error"].append(score.error)
    for field in SCORE_FIELDS:
        table = table.append_column(field, pa.array(columns[field.name], type=field.type))
    return table

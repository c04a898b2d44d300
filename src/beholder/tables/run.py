"""``score_table``: a table of image paths or URLs in, the same table with scores out, resumably."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from beholder.errors import ConfigError
from beholder.tables.groups import RANK_COLUMN, ranked_parts
from beholder.tables.io import count_rows, open_table, table_format, write_table_file
from beholder.tables.parts import PartStore
from beholder.tables.scoring import SCORE_COLUMNS, output_schema

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
#: Failures listed in the summary (all of them are in OUT's ``error`` column).
SUMMARY_FAILURES = 20


@dataclass(frozen=True)
class ScorerSpec:
    """How to build the Scorer: picklable, so that Ray actors build their own from it."""

    model: str | None = None
    checkpoint: str | None = None
    weights: str | None = None
    runtime: str = "auto"
    device: str | None = None
    batch_size: int = 32
    workers: int | None = None
    fidelity: str = "exact"

    def build(self) -> Any:
        from beholder.defaults import DEFAULT_MODEL
        from beholder.inference import Scorer

        options = {
            "runtime": self.runtime,
            "device": self.device,
            "batch_size": self.batch_size,
            "fidelity": self.fidelity,
        }
        if self.workers is not None:
            options["workers"] = self.workers
        if self.checkpoint:
            if self.weights:
                raise ConfigError("weights apply to a model name, not to a checkpoint")
            return Scorer.from_checkpoint(self.checkpoint, **options)
        return Scorer.from_pretrained(self.model or DEFAULT_MODEL, weights=self.weights, **options)

    def describe(self) -> str:
        """What decides the scores: the checkpoint file, or the model name and its weights."""
        from beholder.defaults import DEFAULT_MODEL

        if self.checkpoint:
            return f"checkpoint {os.path.abspath(self.checkpoint)}"
        weights = f" weights {os.path.abspath(self.weights)}" if self.weights else ""
        return f"model {self.model or DEFAULT_MODEL}{weights}"


def _check_columns(schema: pa.Schema, path: Path, column: str, **optional: str | None) -> None:
    import difflib

    names = schema.names
    for option, name in {"column": column, **optional}.items():
        if name is not None and name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; it has {', '.join(names[:12])}"
            raise ConfigError(f"{path}: no column {name!r} (--{option.replace('_', '-')}){hint}")
    clashes = [name for name in (*SCORE_COLUMNS, RANK_COLUMN) if name in names]
    if clashes:
        raise ConfigError(
            f"{path}: already has column(s) {', '.join(clashes)}, which scoring adds; rename them"
        )


def _check_options(in_path, out_path, engine, group_by, top, part_rows, batch_size, scorer) -> None:
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if top is not None and group_by is None:
        raise ConfigError("--top needs --group-by (the best K of each group)")
    if top is not None and top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    if part_rows < 1 or batch_size < 1:
        raise ConfigError(f"part_rows and batch_size must be at least 1, got {part_rows} and {batch_size}")
    if scorer is not None and engine == "ray":
        raise ConfigError("the ray engine builds a scorer per actor: pass model options, not a scorer")
    if in_path == out_path:
        raise ConfigError(f"{out_path}: the output would overwrite the input table")


def score_table(
    table: str | os.PathLike,
    out: str | os.PathLike,
    *,
    column: str = "path",
    id_column: str | None = None,
    resume: bool = False,
    engine: str = "local",
    ray_address: str | None = None,
    num_cpus: int | None = None,
    group_by: str | None = None,
    top: int | None = None,
    model: str | None = None,
    checkpoint: str | None = None,
    weights: str | None = None,
    runtime: str = "auto",
    device: str | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    fidelity: str = "exact",
    part_rows: int = 1000,
    url_timeout: float = 30.0,
    url_retries: int = 3,
    url_per_host: int = 4,
    progress: bool | None = None,
    scorer: Any = None,
) -> dict[str, Any]:
    """Score every image a table names, writing the table with its scores to ``out``.

    Args:
        table: a ``.csv``, ``.parquet`` or ``.jsonl`` file, one row per image.
        out: the result (``.parquet``, ``.csv`` or ``.jsonl``): every input column, then ``mean``,
            ``std``, ``percentile``, ``p1``..``p10`` and ``error``; one row per input row.
        column: the column with local paths (relative ones start at the table's folder) or
            http(s) URLs.
        id_column: a column naming each row, used for the failures in the summary.
        resume: finish an interrupted run (scores only the rows it lacks); without it an existing
            ``out`` or unfinished run is refused.
        engine: 'local' (this process) or 'ray' (Ray Data; see docs/catalogues.md).
        ray_address: an existing Ray cluster to attach to; default: start Ray here, ``num_cpus``.
        group_by: add ``rank_in_group`` (1 = best mean of the group; ties: input order).
        top: with ``group_by``, keep only the best ``top`` rows of each group.
        model, checkpoint, weights, runtime, device, batch_size, workers, fidelity: the Scorer's options
            (``runtime='auto'`` uses ONNX Runtime where installed).
        part_rows: rows per committed part (the unit a kill can lose).
        url_timeout, url_retries, url_per_host: fetching (per request; transient failures; politeness).
        progress: show a progress bar (None: only on a terminal).
        scorer: an existing :class:`beholder.Scorer` to use instead of building one (local engine).

    Returns:
        ``{"rows", "scored", "resumed", "errors", "seconds", "rows_per_second", "out", "engine",
        "failures"}``: rows in ``out``, rows scored by this call, rows an earlier run had scored,
        rows with an error, wall time, ``scored / seconds``, and the first failures.

    Raises:
        ConfigError: bad options, an unreadable table, a missing column, an existing ``out``
            without ``resume``, or parts of another job.
    """
    began = time.perf_counter()
    in_path, out_path = Path(table).absolute(), Path(out).absolute()
    fmt, _ = table_format(in_path), table_format(out_path)
    _check_options(in_path, out_path, engine, group_by, top, part_rows, batch_size, scorer)
    dataset = open_table(in_path)
    _check_columns(dataset.schema, in_path, column, id_column=id_column, group_by=group_by)
    spec = ScorerSpec(model, checkpoint, weights, runtime, device, batch_size, workers, fidelity)
    stat = in_path.stat()
    job = {
        "input": str(in_path),
        "input_bytes": stat.st_size,
        "input_mtime_ns": stat.st_mtime_ns,
        "rows": count_rows(dataset, in_path),
        "column": column,
        "part_rows": part_rows,
        "model": getattr(scorer, "name", None) if scorer is not None else spec.describe(),
        "fidelity": fidelity,
    }
    fetch_options = {"timeout": url_timeout, "retries": url_retries, "per_host": url_per_host}
    store = PartStore.open(out_path, job, output_schema(dataset.schema), resume=resume)
    try:
        resumed = store.done_rows()
        if not store.missing_parts():
            scored = 0
        elif engine == "ray":
            from beholder.tables.ray_engine import run_ray

            scored = run_ray(
                in_path,
                fmt,
                store,
                spec,
                column=column,
                fetch_options=fetch_options,
                address=ray_address,
                num_cpus=num_cpus,
                progress=progress,
            )
        else:
            scorer = scorer if scorer is not None else spec.build()
            scored = _run_local(dataset, in_path, store, scorer, column, fetch_options, progress)
        rows, errors, failures = _write_out(store, out_path, dataset.schema, group_by, top, id_column, column)
    finally:
        store.close()
    store.remove()
    seconds = time.perf_counter() - began
    summary = {
        "rows": rows,
        "scored": scored,
        "resumed": resumed,
        "errors": errors,
        "seconds": round(seconds, 3),
        "rows_per_second": round(scored / seconds, 2) if seconds > 0 else None,
        "out": str(out_path),
        "engine": engine,
        "failures": failures,
    }
    log.info(
        "scored %d rows (%d resumed, %d errors) in %.1f s -> %s", scored, resumed, errors, seconds, out_path
    )
    return summary


def _run_local(dataset, in_path: Path, store: PartStore, scorer, column: str, fetch_options, progress) -> int:
    from beholder.data.download import Fetcher
    from beholder.tables.local import run_local
    from beholder.tables.scoring import RowScorer

    row_scorer = RowScorer(scorer, column, str(in_path.parent), Fetcher(**fetch_options))
    try:
        return run_local(dataset, in_path, store, row_scorer, progress)
    finally:
        row_scorer.close()


def _write_out(
    store: PartStore,
    out: Path,
    input_schema: pa.Schema,
    group_by: str | None,
    top: int | None,
    id_column: str | None,
    column: str,
) -> tuple[int, int, list[dict[str, Any]]]:
    """Merge the parts into ``out`` atomically: ``(rows written, error rows, first failures)``.

    The errors are those of every scored row, also the ones ``--top`` leaves out of ``out``: a
    summary that said "0 errors" because the failed rows were not among the best would mislead.
    """
    schema = output_schema(input_schema)
    if group_by is not None:
        schema = schema.append(pa.field(RANK_COLUMN, pa.int64()))
    errors = 0
    failures: list[dict[str, Any]] = []
    key = id_column or column

    def count(table: pa.Table) -> pa.Table:
        nonlocal errors
        failed = table.filter(table.column("error").is_valid())
        errors += failed.num_rows
        failures.extend(failed.select([key, "error"]).slice(0, SUMMARY_FAILURES - len(failures)).to_pylist())
        return table

    if top is not None:  # a pass of its own: the written rows are only the best of each group
        for _, table in store.iter_parts():
            count(table)
        tables = ranked_parts(store, group_by, top)
    elif group_by is not None:
        tables = (count(table) for table in ranked_parts(store, group_by, top))
    else:
        tables = (count(table) for _, table in store.iter_parts())
    rows = write_table_file(out, schema, tables)
    return rows, errors, failures

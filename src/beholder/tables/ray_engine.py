"""The Ray engine: Ray Data reads the table, actors score it, the driver commits the parts.

This is the shape the Ray docs recommend for offline batch inference: ``read_*`` ->
``map_batches`` with a callable class whose ``__init__`` loads the model once per actor ->
output. The output step is the driver's: it receives the scored rows in input order
(``preserve_order``) and commits them as the same parts the local engine writes, so a killed Ray
run resumes (with either engine) and the final OUT, groups and ``--top`` are the same code.

To resume, rows need their position in the table, which Ray Data does not provide (``zip`` with
``range`` would materialise the whole table). A single, CPU-free actor numbers the rows as they
stream past, in order, and drops the rows of committed parts before any scoring actor sees them.
The driver checks that every part arrives whole and in order, and stops if it does not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from beholder.errors import ConfigError
from beholder.files import progress_bar
from beholder.tables.io import csv_text_options
from beholder.tables.parts import PartStore

log = logging.getLogger(__name__)

ROW_COLUMN = "__beholder_row"


class RowNumbers:
    """Numbers rows in stream order and drops those in ``done`` ranges (one actor, so one count)."""

    def __init__(self, done: list[tuple[int, int]]):
        self.next_row = 0
        self.done = done

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = np.arange(self.next_row, self.next_row + batch.num_rows, dtype=np.int64)
        self.next_row += batch.num_rows
        keep = np.ones(len(rows), bool)
        for start, stop in self.done:
            keep &= (rows < start) | (rows >= stop)
        return batch.append_column(ROW_COLUMN, pa.array(rows)).filter(pa.array(keep))


class ScoreActor:
    """Loads the model once per actor, then scores batches of rows with the shared adapter."""

    def __init__(self, spec: Any, column: str, base_dir: str, fetch_options: dict[str, Any]):
        from beholder.data.download import Fetcher
        from beholder.tables.scoring import RowScorer

        self.row_scorer = RowScorer(spec.build(), column, base_dir, Fetcher(**fetch_options))

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.row_scorer.score_table(batch)


def _read(ray: Any, path: Path, fmt: str) -> Any:
    if fmt == "parquet":
        return ray.data.read_parquet(str(path))
    if fmt == "csv":
        return ray.data.read_csv(str(path), convert_options=csv_text_options(path))
    return ray.data.read_json(str(path))


def _commit_in_order(batches: Iterable[pa.Table], store: PartStore, bar: Any) -> int:
    """Cut the ordered stream of scored rows into grid parts and commit each; returns rows scored."""
    pending: list[pa.Table] = []
    current: int | None = None
    scored = 0

    def commit() -> None:
        nonlocal scored
        table = pa.concat_tables(pending)
        start, stop = store.part_range(current)  # type: ignore[arg-type]
        rows = table.column(ROW_COLUMN).to_numpy()
        if not np.array_equal(rows, np.arange(start, stop)):
            raise RuntimeError(
                f"Ray delivered part {current} incomplete or out of order; rerun with --resume"
            )
        store.commit(current, table.drop_columns([ROW_COLUMN]))  # type: ignore[arg-type]
        scored += table.num_rows
        bar.update(table.num_rows)
        bar.set_postfix(errors=store.errors(), refresh=False)

    for batch in batches:
        if batch.num_rows == 0:
            continue
        cells = batch.column(ROW_COLUMN).to_numpy() // store.part_rows
        cuts = np.flatnonzero(np.diff(cells)) + 1
        for begin, end in zip(np.r_[0, cuts], np.r_[cuts, len(cells)]):
            cell = int(cells[begin])
            if cell != current and pending:
                commit()
                pending = []
            current = cell
            pending.append(batch.slice(int(begin), int(end - begin)))
    if pending:
        commit()
    return scored


def run_ray(
    path: Path,
    fmt: str,
    store: PartStore,
    spec: Any,
    *,
    column: str,
    fetch_options: dict[str, Any],
    address: str | None,
    num_cpus: int | None,
    progress: bool | None,
) -> int:
    """Score the parts ``store`` lacks on Ray; returns the rows scored now.

    Attaches to the cluster at ``address`` (``auto`` finds a local one), or starts Ray on this
    machine with ``num_cpus`` CPUs (default: all). One scoring actor per CPU.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'beholder[ray]'") from None
    # Build the scorer once here first: a bad model option fails now with its own message rather
    # than inside every actor, and an ONNX export lands in the cache the actors then read.
    spec.build()
    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)))
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # one bar, ours, counting committed rows
        done = [store.part_range(index) for index in sorted(store.done)]
        dataset = (
            _read(ray, path, fmt)
            .map_batches(
                RowNumbers,
                fn_constructor_kwargs={"done": done},
                batch_format="pyarrow",
                batch_size=None,
                compute=ray.data.ActorPoolStrategy(size=1),
                num_cpus=0,
            )
            .map_batches(
                ScoreActor,
                fn_constructor_kwargs={
                    "spec": spec,
                    "column": column,
                    "base_dir": str(path.parent),
                    "fetch_options": fetch_options,
                },
                batch_format="pyarrow",
                batch_size=max(8, 4 * spec.batch_size),
                # Grows from one actor as CPUs free up: a fixed pool holding every CPU from the
                # start would starve the tasks that list and read the input.
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
                num_cpus=1,
            )
        )
        bar = progress_bar(
            progress, total=int(store.job["rows"]), initial=store.done_rows(), unit="row", desc="score (ray)"
        )
        with bar:
            return _commit_in_order(dataset.iter_batches(batch_size=None, batch_format="pyarrow"), store, bar)
    finally:
        if started:
            ray.shutdown()

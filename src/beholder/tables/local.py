"""The local engine: stream the table in parts, score each part in this process, commit it."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.dataset as pa_ds

from beholder.files import progress_bar
from beholder.tables.io import iter_chunks
from beholder.tables.parts import PartStore
from beholder.tables.scoring import RowScorer

log = logging.getLogger(__name__)


def run_local(
    dataset: pa_ds.Dataset, path: Path, store: PartStore, row_scorer: RowScorer, progress: bool | None
) -> int:
    """Score every part ``store`` lacks; returns the rows scored now.

    Parts already committed are read past, not scored: reading a table is far cheaper than
    scoring it, and CSV and JSON lines cannot be entered in the middle.
    """
    scored = 0
    bar = progress_bar(
        progress, total=int(store.job["rows"]), initial=store.done_rows(), unit="row", desc="score"
    )
    with bar:
        for start, chunk in iter_chunks(dataset, path, store.part_rows):
            index = start // store.part_rows
            if index in store.done:
                continue
            store.commit(index, row_scorer.score_table(chunk))
            scored += chunk.num_rows
            bar.update(chunk.num_rows)
            bar.set_postfix(errors=store.errors(), refresh=False)
    return scored

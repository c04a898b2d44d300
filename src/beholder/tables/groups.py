"""Ranks within groups (``--group-by``) and the best K of each (``--top``), over committed parts.

A rank needs every score of its group, and a group's rows may be anywhere in the table, so this
is a pass of its own after all parts are scored. It holds three things per row and nothing else:
the group (as a dictionary code), the mean and the row's position. Rows are then written in input
order with their rank, from the parts, one part at a time.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from beholder.tables.parts import PartStore

RANK_COLUMN = "rank_in_group"


def group_ranks(store: PartStore, group_by: str) -> np.ndarray:
    """``rank_in_group`` of every row, in input order: 1 is the best mean of its group.

    Ties go to the earlier row. Rows without a score (an error) rank after every scored row of
    their group, in input order, so that a group whose images all failed still shows up.
    Missing group values (null) form one group of their own.
    """
    groups, means = [], []
    for _, table in store.iter_parts([group_by, "mean"]):
        groups.append(table.column(group_by))
        means.append(table.column("mean").to_numpy(zero_copy_only=False))
    if not groups:
        return np.zeros(0, np.int64)
    combined = pa.chunked_array([chunk for column in groups for chunk in column.chunks], groups[0].type)
    encoded = pc.dictionary_encode(combined.combine_chunks(), null_encoding="encode")
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    mean = np.concatenate(means).astype(np.float64)
    del combined, encoded, groups, means
    rows = np.arange(len(codes), dtype=np.int64)
    # lexsort's last key is the primary one: group, then best mean first (failures last), then row.
    sort_mean = np.where(np.isnan(mean), np.inf, -mean)
    order = np.lexsort((rows, sort_mean, codes))
    sorted_codes = codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    ranks = np.empty(len(order), np.int64)
    ranks[order] = np.arange(len(order)) - run_start + 1
    return ranks


def ranked_parts(store: PartStore, group_by: str, top: int | None) -> Iterator[pa.Table]:
    """Every part with ``rank_in_group`` added and, with ``top``, only rows ranked ``top`` or better."""
    ranks = group_ranks(store, group_by)
    for start, table in store.iter_parts():
        rank = ranks[start : start + table.num_rows]
        table = table.append_column(RANK_COLUMN, pa.array(rank, pa.int64()))
        if top is not None:
            table = table.filter(pa.array(rank <= top))
        yield table

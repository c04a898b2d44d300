"""What a mean score means: the share of AVA photos whose mean rating is lower.

Every photo scores between about 4 and 7, so "5.4" says little on its own; "62nd percentile of
AVA" says more. The table (``resources/ava_mean_percentiles.json``) holds the AVA mean at each
0.1 % of the distribution of AVA means, computed from real AVA label rows by
``scripts/make_percentile_table.py``; see NOTICE for its provenance. NumPy only (fast path).
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

TABLE_FILE = "ava_mean_percentiles.json"


@functools.lru_cache(maxsize=1)
def _table() -> tuple[np.ndarray, np.ndarray]:
    text = resources.files("beholder").joinpath("resources", TABLE_FILE).read_text(encoding="utf-8")
    data = json.loads(text)
    means, levels = np.asarray(data["means"], np.float64), np.asarray(data["levels"], np.float64)
    # np.interp needs increasing x: ties among quantiles (many AVA means repeat) are merged by
    # keeping each distinct mean's middle level, so the result stays monotone and centred.
    unique, first = np.unique(means, return_index=True)
    last = np.append(first[1:] - 1, len(means) - 1)
    return unique, (levels[first] + levels[last]) / 2


def percentile(mean: float | np.ndarray) -> float | np.ndarray:
    """Percent (0..100) of AVA photos whose mean score is below ``mean``; monotone in ``mean``."""
    means, levels = _table()
    result = np.interp(np.asarray(mean, np.float64), means, levels, left=0.0, right=100.0)
    return float(result) if np.ndim(result) == 0 else result


def ava_quartiles() -> tuple[float, float, float]:
    """The 25th, 50th and 75th percentile of AVA means, read off the table."""
    means, levels = _table()
    return tuple(float(np.interp(q, levels, means)) for q in (25.0, 50.0, 75.0))  # type: ignore[return-value]

"""Picks and stars: the best frames of each group, and 1-5 stars from a photo's rank in its shoot.

Stars are relative to the shoot, so that every shoot uses the whole scale: a photo's shoot
percentile is the share of the shoot's other photos that score lower (ties count half), and the
cut points split the shoot into fifths (:data:`STAR_CUTS`). Absolute quality is the mean score and
its AVA percentile, which the report and sidecars carry beside the stars.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Shoot percentiles at which a photo reaches 2, 3, 4 and 5 stars.
STAR_CUTS = (20.0, 40.0, 60.0, 80.0)


def shoot_percentiles(means: Sequence[float]) -> np.ndarray:
    """For each mean, 100 * (photos below + half the other photos tied with it + 1/2) / n.

    That is the mid-rank percentile: with n photos it runs from 50/n to 100 - 50/n, so the
    lowest of 5 photos sits at 10 and the highest at 90, one in each fifth.
    """
    values = np.asarray(means, dtype=np.float64)
    n = len(values)
    if n == 0:
        return np.zeros(0)
    ordered = np.sort(values)  # O(n log n), no n x n comparison table for big shoots
    below = np.searchsorted(ordered, values, side="left")
    tied = np.searchsorted(ordered, values, side="right") - below  # includes the photo itself
    return 100.0 * (below + tied / 2.0) / n


def stars_from_percentile(percentile: float) -> int:
    """1 star below the 20th shoot percentile, 2 from 20, 3 from 40, 4 from 60, 5 from 80."""
    return 1 + int(np.searchsorted(STAR_CUTS, percentile, side="right"))


def choose_picks(groups: Sequence[Sequence[int]], means: Sequence[float], keep: int) -> set[int]:
    """The ``keep`` highest-scoring frames of every group (ties: the earlier frame)."""
    picks: set[int] = set()
    for group in groups:
        ranked = sorted(range(len(group)), key=lambda k: (-means[group[k]], k))
        picks.update(group[k] for k in ranked[:keep])
    return picks

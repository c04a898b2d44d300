"""Rating facts: the 1..10 score scale, vote columns, votes -> distribution, and its mean and std.

The one home of these facts (DESIGN: "one home for each concept"). NumPy only, so that the scoring
fast path can use it without importing torch or scipy.

A distribution is a probability vector over the scores 1..10; its mean is ``sum_i i * p_i`` and its
std ``sqrt(sum_i p_i * (i - mean)^2)`` (NIMA paper, Sec. 3).
"""

from __future__ import annotations

import numpy as np

#: Number of rating bins (AVA's scores 1..10).
NUM_BINS = 10
#: The scores, as float64: (10,).
SCORES = np.arange(1, NUM_BINS + 1, dtype=np.float64)
#: Vote-count columns of AVA.txt, the manifest and label CSVs: votes_1 .. votes_10.
VOTE_COLUMNS = [f"votes_{i}" for i in range(1, NUM_BINS + 1)]
#: Probability columns of every scoring output: p1 .. p10.
PROBABILITY_COLUMNS = [f"p{i}" for i in range(1, NUM_BINS + 1)]
#: AVA's binary "high / low quality" threshold on the mean score (NIMA paper, Sec. 4).
THRESHOLD = 5.0


def votes_to_distribution(votes: np.ndarray) -> np.ndarray:
    """(10,) or (N, 10) non-negative vote counts -> probabilities of the same shape.

    Raises ValueError for a wrong shape, negative or non-finite counts, or a row with no votes.
    """
    counts = np.asarray(votes, dtype=np.float64)
    if counts.ndim not in (1, 2) or counts.shape[-1] != NUM_BINS:
        raise ValueError(f"votes must have shape ({NUM_BINS},) or (N, {NUM_BINS}), got {counts.shape}")
    if not np.isfinite(counts).all():
        raise ValueError("vote counts must be finite")
    if (counts < 0).any():
        raise ValueError("vote counts must not be negative")
    totals = counts.sum(axis=-1, keepdims=True)
    if (totals == 0).any():
        raise ValueError("a row has no votes; its distribution is undefined")
    return counts / totals


def distribution_mean(p: np.ndarray) -> np.ndarray:
    """(..., 10) probabilities -> (...,) mean score ``sum_i i * p_i``."""
    p = np.asarray(p, dtype=np.float64)
    return p @ SCORES[: p.shape[-1]]


def distribution_std(p: np.ndarray) -> np.ndarray:
    """(..., 10) probabilities -> (...,) standard deviation of the score."""
    p = np.asarray(p, dtype=np.float64)
    scores = SCORES[: p.shape[-1]]
    mean = p @ scores
    # sum_i p_i (i - mean)^2, not E[i^2] - mean^2, which cancels badly for peaked distributions.
    variance = (p * (scores - mean[..., None]) ** 2).sum(axis=-1)
    return np.sqrt(np.clip(variance, 0.0, None))


def mean_std(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both moments of (..., 10) probabilities: ``(mean, std)``, each (...,)."""
    return distribution_mean(p), distribution_std(p)

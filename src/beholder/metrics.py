"""Metrics on rating distributions over scores 1..10, as reported in the NIMA paper (Table 1-2).

All functions take numpy arrays (or anything ``np.asarray`` accepts) and return plain floats, so
they serve training validation, evaluation and tests alike. Correlations come from scipy.stats.
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
from scipy import stats

SCORES = np.arange(1, 11, dtype=np.float64)  # (10,)

#: AVA's binary "high/low quality" threshold on the mean score (NIMA paper, Sec. 4).
THRESHOLD = 5.0


def distribution_mean(p: np.ndarray) -> np.ndarray:
    """(..., 10) probabilities -> (...,) mean score ``sum_i i * p_i``."""
    p = np.asarray(p, dtype=np.float64)
    return p @ SCORES[: p.shape[-1]]


def distribution_std(p: np.ndarray) -> np.ndarray:
    """(..., 10) probabilities -> (...,) standard deviation of the score."""
    p = np.asarray(p, dtype=np.float64)
    scores = SCORES[: p.shape[-1]]
    mean = p @ scores
    variance = p @ (scores**2) - mean**2
    return np.sqrt(np.clip(variance, 0.0, None))


def emd(p: np.ndarray, q: np.ndarray, r: float = 2.0) -> float:
    """Mean over samples of the per-sample EMD (see :mod:`beholder.losses`). p, q: (N, 10)."""
    p, q = np.atleast_2d(np.asarray(p, dtype=np.float64)), np.atleast_2d(np.asarray(q, dtype=np.float64))
    diff = np.cumsum(p, axis=-1) - np.cumsum(q, axis=-1)
    return float(np.mean(np.mean(np.abs(diff) ** r, axis=-1) ** (1.0 / r)))


def binary_accuracy(true_mean: np.ndarray, predicted_mean: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Share of images on the same side of ``threshold`` (above = "high quality")."""
    true_mean, predicted_mean = np.asarray(true_mean), np.asarray(predicted_mean)
    return float(np.mean((true_mean > threshold) == (predicted_mean > threshold)))


def _correlation(kind: str, x: np.ndarray, y: np.ndarray) -> float:
    # Undefined for fewer than two samples or a constant input: NaN, not a crash or a fake 0.
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    result = stats.pearsonr(x, y) if kind == "pearson" else stats.spearmanr(x, y)
    return float(result[0])


def lcc(x: np.ndarray, y: np.ndarray) -> float:
    """Linear (Pearson) correlation coefficient; NaN when undefined."""
    return _correlation("pearson", x, y)


def srcc(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation coefficient (ties get average ranks); NaN when undefined."""
    return _correlation("spearman", x, y)


def summarize(true_p: np.ndarray, predicted_p: np.ndarray) -> Dict[str, float]:
    """The standard NIMA metrics for (N, 10) true and predicted distributions."""
    true_p, predicted_p = np.asarray(true_p, dtype=np.float64), np.asarray(predicted_p, dtype=np.float64)
    true_mean, predicted_mean = distribution_mean(true_p), distribution_mean(predicted_p)
    true_std, predicted_std = distribution_std(true_p), distribution_std(predicted_p)
    error = predicted_mean - true_mean
    return {
        "n": int(true_p.shape[0]),
        "emd": emd(true_p, predicted_p),
        "accuracy": binary_accuracy(true_mean, predicted_mean),
        "lcc_mean": lcc(true_mean, predicted_mean),
        "srcc_mean": srcc(true_mean, predicted_mean),
        "lcc_std": lcc(true_std, predicted_std),
        "srcc_std": srcc(true_std, predicted_std),
        "mae_mean": float(np.mean(np.abs(error))),
        "rmse_mean": float(np.sqrt(np.mean(error**2))),
    }

"""Metrics on rating distributions over scores 1..10, as reported in the NIMA paper (Table 1-2).

All functions take numpy arrays (or anything ``np.asarray`` accepts) and return plain floats, so
they serve training validation, evaluation and tests alike. The mean and std of a distribution
come from :mod:`beholder.ratings`. Correlations come from scipy.stats, imported where they are
computed, so that importing this module costs no scipy.

Undefined values (a correlation of a constant, any metric of an empty set) are NaN here; writers
turn them into JSON null (:func:`beholder.files.write_json`).
"""

from __future__ import annotations

import math

import numpy as np

from beholder.ratings import THRESHOLD, distribution_mean, distribution_std

#: Lower and upper tail thresholds on the true mean score: the seed's boxplot shows the worst
#: errors below 3.5 and above 7.2, where AVA has under 5% of its images each.
TAIL_THRESHOLDS = (3.5, 7.2)

#: Keys of :func:`summarize`, in the order the NIMA paper reports them.
SUMMARY_KEYS = [
    "n",
    "emd",
    "accuracy",
    "lcc_mean",
    "srcc_mean",
    "lcc_std",
    "srcc_std",
    "mae_mean",
    "rmse_mean",
]
#: Keys of each range in :func:`tail_metrics`.
TAIL_KEYS = ["n", "emd", "mae_mean", "accuracy"]
#: The ranges of :func:`tail_metrics`, from low to high true means.
TAIL_RANGES = ("lower", "middle", "upper")


def emd(p: np.ndarray, q: np.ndarray, r: float = 2.0) -> float:
    """Mean over samples of the per-sample EMD (see :mod:`beholder.losses`). p, q: (N, 10)."""
    p, q = np.atleast_2d(np.asarray(p, dtype=np.float64)), np.atleast_2d(np.asarray(q, dtype=np.float64))
    if p.shape[0] == 0:
        return math.nan
    diff = np.cumsum(p, axis=-1) - np.cumsum(q, axis=-1)
    return float(np.mean(np.mean(np.abs(diff) ** r, axis=-1) ** (1.0 / r)))


def binary_accuracy(true_mean: np.ndarray, predicted_mean: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Share of images on the same side of ``threshold`` (above = "high quality")."""
    true_mean, predicted_mean = np.asarray(true_mean), np.asarray(predicted_mean)
    if true_mean.size == 0:
        return math.nan
    return float(np.mean((true_mean > threshold) == (predicted_mean > threshold)))


def _correlation(kind: str, x: np.ndarray, y: np.ndarray) -> float:
    # Undefined for fewer than two samples or a constant input: NaN, not a crash or a fake 0.
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    from scipy import stats  # here, not at the top: the scoring path imports this module

    result = stats.pearsonr(x, y) if kind == "pearson" else stats.spearmanr(x, y)
    return float(result[0])


def lcc(x: np.ndarray, y: np.ndarray) -> float:
    """Linear (Pearson) correlation coefficient; NaN when undefined."""
    return _correlation("pearson", x, y)


def srcc(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation coefficient (ties get average ranks); NaN when undefined."""
    return _correlation("spearman", x, y)


def _mae(error: np.ndarray) -> float:
    return float(np.mean(np.abs(error))) if error.size else math.nan


def summarize(
    true_p: np.ndarray | None,
    predicted_p: np.ndarray,
    *,
    true_mean: np.ndarray | None = None,
    true_std: np.ndarray | None = None,
) -> dict[str, float]:
    """The standard NIMA metrics (:data:`SUMMARY_KEYS`) of (N, 10) predicted distributions.

    With the true (N, 10) distributions ``true_p`` every metric is defined. Labels that give only
    mean scores pass ``true_p=None`` and ``true_mean`` (N,), optionally ``true_std`` (N,): then
    ``emd`` is NaN, and so are the std correlations without ``true_std`` (or where it has NaN).
    """
    predicted_p = np.asarray(predicted_p, dtype=np.float64).reshape(-1, 10)
    predicted_mean, predicted_std = distribution_mean(predicted_p), distribution_std(predicted_p)
    if true_p is not None:
        true_p = np.asarray(true_p, dtype=np.float64).reshape(-1, 10)
        true_mean, true_std = distribution_mean(true_p), distribution_std(true_p)
    elif true_mean is None:
        raise ValueError("summarize needs the true distributions or the true means")
    true_mean = np.asarray(true_mean, dtype=np.float64)
    has_std = true_std is not None and len(true_std) > 0 and not np.isnan(true_std).any()
    error = predicted_mean - true_mean
    return {
        "n": int(true_mean.shape[0]),
        "emd": emd(true_p, predicted_p) if true_p is not None else math.nan,
        "accuracy": binary_accuracy(true_mean, predicted_mean),
        "lcc_mean": lcc(true_mean, predicted_mean),
        "srcc_mean": srcc(true_mean, predicted_mean),
        "lcc_std": lcc(true_std, predicted_std) if has_std else math.nan,
        "srcc_std": srcc(true_std, predicted_std) if has_std else math.nan,
        "mae_mean": _mae(error),
        "rmse_mean": float(np.sqrt(np.mean(error**2))) if error.size else math.nan,
    }


def tail_masks(
    true_mean: np.ndarray, thresholds: tuple[float, float] = TAIL_THRESHOLDS
) -> dict[str, np.ndarray]:
    """Boolean masks of :data:`TAIL_RANGES`: true mean below ``low``, from ``low`` to ``high``, above ``high``."""
    low, high = thresholds
    true_mean = np.asarray(true_mean, dtype=np.float64)
    lower, upper = true_mean < low, true_mean > high
    return {"lower": lower, "middle": ~lower & ~upper, "upper": upper}


def tail_metrics(
    true_mean: np.ndarray,
    predicted_p: np.ndarray,
    *,
    true_p: np.ndarray | None = None,
    thresholds: tuple[float, float] = TAIL_THRESHOLDS,
) -> dict[str, dict[str, float]]:
    """EMD, MAE of the mean and binary accuracy (:data:`TAIL_KEYS`) per range of the true mean.

    Models trained on AVA regress towards its crowded middle (means 4 to 7), so their errors hide
    in the tails, which the overall figures average away. ``true_p`` (N, 10) is needed for the EMD
    (NaN without it); an empty range has NaN metrics and n = 0.
    """
    true_mean = np.asarray(true_mean, dtype=np.float64)
    predicted_p = np.asarray(predicted_p, dtype=np.float64).reshape(-1, 10)
    predicted_mean = distribution_mean(predicted_p)
    if true_p is not None:
        true_p = np.asarray(true_p, dtype=np.float64).reshape(-1, 10)
    result = {}
    for name, mask in tail_masks(true_mean, thresholds).items():
        result[name] = {
            "n": int(mask.sum()),
            "emd": emd(true_p[mask], predicted_p[mask]) if true_p is not None else math.nan,
            "mae_mean": _mae(predicted_mean[mask] - true_mean[mask]),
            "accuracy": binary_accuracy(true_mean[mask], predicted_mean[mask]),
        }
    return result

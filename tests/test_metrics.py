"""beholder.metrics cross-checked against numpy and scipy computed independently here.

The reference implementations below use different formulas from the library (explicit loops, the
centred variance, rank-then-Pearson for Spearman, scipy's Wasserstein distance for r=1), so a
shared mistake is unlikely. Edge cases: constant predictions, n = 1, ties, the threshold itself.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from beholder import metrics, ratings

SCORES = list(range(1, 11))


def _random_distributions(rng: np.random.Generator, n: int) -> np.ndarray:
    votes = rng.integers(0, 50, size=(n, 10)).astype(np.float64)
    votes[:, 4] += 1  # never an all-zero row
    return votes / votes.sum(axis=1, keepdims=True)


def _ref_mean(p) -> float:
    return sum(s * float(v) for s, v in zip(SCORES, p))


def _ref_std(p) -> float:
    mean = _ref_mean(p)
    return math.sqrt(sum(float(v) * (s - mean) ** 2 for s, v in zip(SCORES, p)))


def _ref_emd(p, q, r: float = 2.0) -> float:
    # NIMA eq. (1): per sample (1/N_bins * sum_k |CDF_p(k) - CDF_q(k)|^r)^(1/r).
    cdf_p, cdf_q, total = 0.0, 0.0, 0.0
    for a, b in zip(p, q):
        cdf_p += float(a)
        cdf_q += float(b)
        total += abs(cdf_p - cdf_q) ** r
    return (total / len(p)) ** (1.0 / r)


def _ref_spearman(x, y) -> float:
    # Spearman = Pearson of average ranks (the tie convention of the AVA literature).
    return float(np.corrcoef(stats.rankdata(x), stats.rankdata(y))[0, 1])


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a RuntimeWarning or scipy ConstantInputWarning fails the test
        yield


def test_distribution_mean_and_std_match_explicit_sums():
    rng = np.random.default_rng(1)
    p = _random_distributions(rng, 20)
    np.testing.assert_allclose(ratings.distribution_mean(p), [_ref_mean(row) for row in p], rtol=1e-12)
    np.testing.assert_allclose(ratings.distribution_std(p), [_ref_std(row) for row in p], rtol=1e-10)
    point = np.zeros(10)
    point[6] = 1.0  # all votes on 7
    assert ratings.distribution_mean(point) == 7.0
    assert ratings.distribution_std(point) == 0.0  # clipped, never sqrt of a tiny negative


def test_emd_matches_explicit_loop_and_scipy_wasserstein():
    rng = np.random.default_rng(2)
    p, q = _random_distributions(rng, 15), _random_distributions(rng, 15)
    expected = np.mean([_ref_emd(a, b) for a, b in zip(p, q)])
    assert metrics.emd(p, q) == pytest.approx(expected, rel=1e-12)
    # r = 1: (1/10) * sum_k |CDF diff| is scipy's Wasserstein-1 distance on the support 1..10, / 10.
    for a, b in zip(p, q):
        w1 = stats.wasserstein_distance(SCORES, SCORES, u_weights=a, v_weights=b)
        assert metrics.emd(a, b, r=1.0) == pytest.approx(w1 / 10, rel=1e-10)


def test_emd_known_values():
    low, high = np.zeros(10), np.zeros(10)
    low[0], high[9] = 1.0, 1.0
    # CDFs differ by 1 at k = 1..9 and agree at 10: sqrt(9/10).
    assert metrics.emd(low, high) == pytest.approx(math.sqrt(0.9), rel=1e-12)
    assert metrics.emd(low, low) == 0.0
    rng = np.random.default_rng(3)
    p, q = _random_distributions(rng, 5), _random_distributions(rng, 5)
    assert metrics.emd(p, q) == pytest.approx(metrics.emd(q, p), rel=1e-12)
    # averaged per sample, not pooled over the batch before the root
    pooled = math.sqrt(np.mean((np.cumsum(p, 1) - np.cumsum(q, 1)) ** 2))
    per_sample = np.mean([_ref_emd(a, b) for a, b in zip(p, q)])
    assert metrics.emd(p, q) == pytest.approx(per_sample)
    assert metrics.emd(p, q) != pytest.approx(pooled, rel=1e-6)


def test_binary_accuracy_matches_explicit_count_and_threshold_is_exclusive():
    rng = np.random.default_rng(4)
    true, pred = rng.uniform(2, 8, 50), rng.uniform(2, 8, 50)
    expected = sum((t > 5) == (p > 5) for t, p in zip(true, pred)) / 50
    assert metrics.binary_accuracy(true, pred) == pytest.approx(expected)
    # exactly 5 is "low" (the class is "above 5"): ties at the threshold agree with each other
    assert metrics.binary_accuracy([5.0], [5.0]) == 1.0
    assert metrics.binary_accuracy([5.0], [5.0001]) == 0.0
    assert metrics.binary_accuracy([5.0001], [4.9999]) == 0.0


def test_correlations_match_numpy_and_rank_definition():
    rng = np.random.default_rng(5)
    x = rng.normal(5, 1, 40)
    y = x + rng.normal(0, 0.7, 40)
    assert metrics.lcc(x, y) == pytest.approx(float(np.corrcoef(x, y)[0, 1]), rel=1e-10)
    assert metrics.srcc(x, y) == pytest.approx(_ref_spearman(x, y), rel=1e-10)


def test_correlations_with_ties_use_average_ranks(no_warnings):
    x = [1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 4.0]
    y = [2.0, 1.0, 3.0, 3.0, 5.0, 4.0, 6.0]
    # average ranks of x: 1, 2.5, 2.5, 4, 6, 6, 6
    assert list(stats.rankdata(x)) == [1, 2.5, 2.5, 4, 6, 6, 6]
    assert metrics.srcc(x, y) == pytest.approx(_ref_spearman(x, y), rel=1e-12)
    assert metrics.lcc(x, y) == pytest.approx(float(np.corrcoef(x, y)[0, 1]), rel=1e-12)
    # tied predicted means (many images at the same score) are not an error either
    assert math.isfinite(metrics.srcc([5.0, 5.0, 6.0], [4.0, 5.0, 6.0]))


def test_constant_predictions_give_nan_correlations_without_crash(no_warnings):
    rng = np.random.default_rng(6)
    true_p = _random_distributions(rng, 8)
    pred_p = np.tile(_random_distributions(rng, 1), (8, 1))  # every image gets the same prediction
    result = metrics.summarize(true_p, pred_p)
    for key in ("lcc_mean", "srcc_mean", "lcc_std", "srcc_std"):
        assert math.isnan(result[key]), key
    # the metrics that stay defined are still right
    true_mean, pred_mean = [_ref_mean(r) for r in true_p], _ref_mean(pred_p[0])
    assert result["mae_mean"] == pytest.approx(np.mean([abs(pred_mean - t) for t in true_mean]))
    assert result["emd"] == pytest.approx(np.mean([_ref_emd(a, b) for a, b in zip(true_p, pred_p)]))
    assert result["accuracy"] == pytest.approx(np.mean([(t > 5) == (pred_mean > 5) for t in true_mean]))


def test_single_image(no_warnings):
    rng = np.random.default_rng(7)
    true_p, pred_p = _random_distributions(rng, 1), _random_distributions(rng, 1)
    result = metrics.summarize(true_p, pred_p)
    assert result["n"] == 1
    assert math.isnan(result["lcc_mean"]) and math.isnan(result["srcc_mean"])
    assert math.isnan(result["lcc_std"]) and math.isnan(result["srcc_std"])
    error = _ref_mean(pred_p[0]) - _ref_mean(true_p[0])
    assert result["mae_mean"] == pytest.approx(abs(error))
    assert result["rmse_mean"] == pytest.approx(abs(error))
    assert result["emd"] == pytest.approx(_ref_emd(true_p[0], pred_p[0]))
    assert result["accuracy"] in (0.0, 1.0)


def test_summarize_matches_independent_computation():
    rng = np.random.default_rng(8)
    true_p = _random_distributions(rng, 60)
    pred_p = 0.5 * true_p + 0.5 * _random_distributions(rng, 60)
    result = metrics.summarize(true_p, pred_p)
    tm, pm = [_ref_mean(r) for r in true_p], [_ref_mean(r) for r in pred_p]
    ts, ps = [_ref_std(r) for r in true_p], [_ref_std(r) for r in pred_p]
    errors = np.subtract(pm, tm)
    expected = {
        "n": 60,
        "emd": np.mean([_ref_emd(a, b) for a, b in zip(true_p, pred_p)]),
        "accuracy": np.mean([(t > 5) == (p > 5) for t, p in zip(tm, pm)]),
        "lcc_mean": stats.pearsonr(tm, pm)[0],
        "srcc_mean": _ref_spearman(tm, pm),
        "lcc_std": np.corrcoef(ts, ps)[0, 1],
        "srcc_std": _ref_spearman(ts, ps),
        "mae_mean": np.mean(np.abs(errors)),
        "rmse_mean": math.sqrt(np.mean(errors**2)),
    }
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key] == pytest.approx(float(value), rel=1e-9, abs=1e-12), key
    assert all(isinstance(v, (int, float)) for v in result.values())  # plain Python numbers (JSON-ready)


def test_summarize_with_mean_only_labels(no_warnings):
    rng = np.random.default_rng(9)
    pred_p = _random_distributions(rng, 12)
    true_mean = rng.uniform(2, 9, 12)
    result = metrics.summarize(None, pred_p, true_mean=true_mean)
    pm = np.array([_ref_mean(r) for r in pred_p])
    assert set(result) == set(metrics.SUMMARY_KEYS)
    assert math.isnan(result["emd"]) and math.isnan(result["lcc_std"]) and math.isnan(result["srcc_std"])
    assert result["mae_mean"] == pytest.approx(np.mean(np.abs(pm - true_mean)), rel=1e-12)
    assert result["srcc_mean"] == pytest.approx(_ref_spearman(true_mean, pm), rel=1e-12)
    true_std = rng.uniform(1, 2, 12)
    with_std = metrics.summarize(None, pred_p, true_mean=true_mean, true_std=true_std)
    assert with_std["lcc_std"] == pytest.approx(np.corrcoef(true_std, [_ref_std(r) for r in pred_p])[0, 1])
    with pytest.raises(ValueError, match="true means"):
        metrics.summarize(None, pred_p)


def test_empty_set_gives_nan_without_warnings(no_warnings):
    empty = np.zeros((0, 10))
    result = metrics.summarize(empty, empty)
    assert result["n"] == 0
    assert all(math.isnan(result[key]) for key in metrics.SUMMARY_KEYS if key != "n")


def test_tail_ranges_include_the_thresholds_in_the_middle():
    masks = metrics.tail_masks(np.array([3.49, 3.5, 5.0, 7.2, 7.21]))
    assert masks["lower"].tolist() == [True, False, False, False, False]
    assert masks["middle"].tolist() == [False, True, True, True, False]
    assert masks["upper"].tolist() == [False, False, False, False, True]
    assert metrics.TAIL_THRESHOLDS == (3.5, 7.2)


def test_importing_metrics_does_not_import_scipy():
    import subprocess
    import sys

    code = "import sys, beholder.metrics; print('scipy' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
        == "False"
    )

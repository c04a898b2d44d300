"""Evaluate a NIMA model on rated images and compare it with published results.

The test-set metrics are those of the NIMA paper (Talebi & Milanfar 2018, Table I): binary
accuracy at the mean-score threshold 5, linear (LCC) and rank (SRCC) correlation of the mean and
of the standard deviation, and the EMD between true and predicted rating distributions; and the
same EMD, MAE and accuracy separately for the lower tail, the middle and the upper tail of the
true means, where models that regress to AVA's crowded middle fail first.

Modules: :mod:`~beholder.evaluation.labels` (labels from a manifest or a user's CSV),
:mod:`~beholder.evaluation.run` (prediction, metrics and the run), :mod:`~beholder.evaluation.plots`
and :mod:`~beholder.evaluation.report` (report.md / report.html with the published results).

Outputs in ``out_dir``: ``metrics.json``, ``predictions.csv``, ``failures.csv`` (only if an image
could not be scored), five PNG plots, ``report.md`` and ``report.html``. Missing files are a
configuration error naming them (the manifest is trusted: a file that has gone is a broken setup,
not a data point). Files that exist but cannot be decoded, and non-finite predictions, are
listed in ``failures.csv``, excluded from the metrics and reported with a warning.
"""

from __future__ import annotations

from beholder.evaluation.labels import (
    EVALUATION_SPLITS,
    TRUE_PROBABILITY_COLUMNS,
    has_distributions,
    labels_from_manifest,
    load_user_labels,
)
from beholder.evaluation.plots import PLOT_FILES, write_plots
from beholder.evaluation.report import (
    PUBLISHED_RESULTS,
    PublishedResult,
    published_results_table,
    render_html,
    render_markdown,
    write_report,
)
from beholder.evaluation.run import (
    METRIC_KEYS,
    PREDICTION_COLUMNS,
    check_out_dir,
    check_tail_thresholds,
    confusion_counts,
    error_by_bin,
    evaluate,
    predict_labels,
    write_predictions,
)

__all__ = [
    "EVALUATION_SPLITS",
    "METRIC_KEYS",
    "PLOT_FILES",
    "PREDICTION_COLUMNS",
    "PUBLISHED_RESULTS",
    "TRUE_PROBABILITY_COLUMNS",
    "PublishedResult",
    "check_out_dir",
    "check_tail_thresholds",
    "confusion_counts",
    "error_by_bin",
    "evaluate",
    "has_distributions",
    "labels_from_manifest",
    "load_user_labels",
    "predict_labels",
    "published_results_table",
    "render_html",
    "render_markdown",
    "write_plots",
    "write_predictions",
    "write_report",
]

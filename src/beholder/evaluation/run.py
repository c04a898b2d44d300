"""Score the labelled images, measure the model, and write every output of ``beholder evaluate``.

Images are scored with :meth:`beholder.inference.Scorer.score`, i.e. with the preprocessing the
model declares and no random crop, so that each image's predicted mean is exactly the one
``beholder score`` prints. Originals (``path`` of the labels, the manifest's ``source_path``) are
read, never the resized training cache, because the model's resize (e.g. idealo's
nearest-neighbour to 224x224) starts from the original.

``metrics.json`` and ``predictions.csv`` are sorted by image id and use fixed rounding, so two
evaluations of the same model on the same data are byte-identical. Every file is written
atomically; ``metrics.json`` is strict JSON, an undefined metric being null with a note saying why.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from beholder import __version__
from beholder.errors import ConfigError
from beholder.evaluation.labels import TRUE_PROBABILITY_COLUMNS, has_distributions, labels_from_manifest
from beholder.evaluation.plots import pick_examples, write_plots
from beholder.evaluation.report import write_report
from beholder.files import PathLike, atomic_write_text, make_temp, write_json
from beholder.metrics import SUMMARY_KEYS, TAIL_KEYS, TAIL_THRESHOLDS, summarize, tail_metrics
from beholder.ratings import PROBABILITY_COLUMNS, THRESHOLD

if TYPE_CHECKING:  # pandas is an optional dependency ("data" extra); imported where used
    import pandas as pd

    from beholder.inference import Scorer

log = logging.getLogger(__name__)

#: Keys of metrics.json that hold the overall metrics, in the order the NIMA paper reports them.
METRIC_KEYS = SUMMARY_KEYS

#: Decimal places in metrics.json and predictions.csv: far below any meaningful difference, and
#: fixed so that two runs are byte-identical.
DECIMALS = 6

#: Columns of predictions.csv: predicted distribution p1..p10, then the true one true_p1..true_p10.
PREDICTION_COLUMNS = [
    "image_id",
    "true_mean",
    "true_std",
    "pred_mean",
    "pred_std",
    *PROBABILITY_COLUMNS,
    *TRUE_PROBABILITY_COLUMNS,
]


def predict_labels(
    scorer: Scorer, labels: pd.DataFrame, *, progress: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every labelled image; returns (predictions, failures), both in the labels' order.

    predictions: :data:`PREDICTION_COLUMNS` at full precision (``true_p*`` NaN for labels with
    mean scores only). failures: image_id, path, error, for files that exist but could not be
    decoded, and for non-finite predictions. A listed file that does not exist is a ConfigError
    naming it: the labels are trusted.
    """
    import pandas as pd

    missing = [p for p in labels["path"] if not Path(p).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(f"{len(missing)} image file(s) listed for evaluation are missing: {shown}")
    distributions = has_distributions(labels)
    rows, failures = [], []
    results = scorer.score(list(labels["path"]), progress=progress)
    for record, result in zip(labels.to_dict("records"), results):
        error = result.error
        if error is None and not np.isfinite(np.asarray(result.distribution, dtype=np.float64)).all():
            error = "the model's prediction is not finite (NaN or infinity)"  # would poison every metric
        if error is not None:
            failures.append({"image_id": record["image_id"], "path": record["path"], "error": error})
            continue
        true_p = [record[c] for c in TRUE_PROBABILITY_COLUMNS] if distributions else [math.nan] * 10
        rows.append(
            {
                "image_id": record["image_id"],
                "true_mean": float(record["true_mean"]),
                "true_std": float(record["true_std"]),
                "pred_mean": result.mean,
                "pred_std": result.std,
                **dict(zip(PROBABILITY_COLUMNS, result.distribution)),
                **dict(zip(TRUE_PROBABILITY_COLUMNS, true_p)),
            }
        )
    if failures:
        log.warning(
            "%d of %d images could not be scored and are excluded from the metrics (first: %s: %s)",
            len(failures),
            len(labels),
            failures[0]["path"],
            failures[0]["error"],
        )
    failures_frame = pd.DataFrame(failures, columns=["image_id", "path", "error"])
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS), failures_frame


def confusion_counts(
    true_mean: np.ndarray, pred_mean: np.ndarray, threshold: float = THRESHOLD
) -> dict[str, int]:
    """The 2x2 table at ``threshold`` ("high" means above it, as in binary_accuracy)."""
    true_high, pred_high = np.asarray(true_mean) > threshold, np.asarray(pred_mean) > threshold
    return {
        "true_high_pred_high": int(np.sum(true_high & pred_high)),
        "true_high_pred_low": int(np.sum(true_high & ~pred_high)),
        "true_low_pred_high": int(np.sum(~true_high & pred_high)),
        "true_low_pred_low": int(np.sum(~true_high & ~pred_high)),
    }


def error_by_bin(true_mean: np.ndarray, pred_mean: np.ndarray) -> list[dict[str, Any]]:
    """Absolute error of the mean per true-rating bin [1,2), [2,3), ..., [9,10]."""
    true_mean, pred_mean = np.asarray(true_mean, dtype=np.float64), np.asarray(pred_mean, dtype=np.float64)
    bins = np.clip(np.floor(true_mean), 1, 9).astype(int)  # 10.0 belongs to the last bin
    rows = []
    for low in range(1, 10):
        selected = bins == low
        errors = pred_mean[selected] - true_mean[selected]
        rows.append(
            {
                "bin": f"{low}-{low + 1}",
                "n": int(selected.sum()),
                "mae": float(np.mean(np.abs(errors))) if selected.any() else math.nan,
                "bias": float(np.mean(errors)) if selected.any() else math.nan,
            }
        )
    return rows


def _json_number(value: Any) -> Any:
    """Rounded float, or None for NaN/inf (JSON has no NaN)."""
    if isinstance(value, (bool, int, np.integer)):
        return int(value)
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), DECIMALS)


def undefined_reason(key: str, n: int, labels: str, has_std: bool) -> str:
    """Why metric ``key`` (of :data:`METRIC_KEYS` or :data:`~beholder.metrics.TAIL_KEYS`) is null."""
    if n == 0:
        return "no images"
    if key == "emd" and labels == "mean":
        return "the labels give mean scores only, no distributions"
    if key in ("lcc_std", "srcc_std") and not has_std:
        return "the labels give no std"
    if key.startswith(("lcc", "srcc")):
        if n < 2:
            return "a correlation is undefined for fewer than two images"
        return "a correlation is undefined when the true or the predicted values are all equal"
    return "not a finite number (are some predictions non-finite?)"


def _rounded_with_notes(
    raw: dict[str, float], keys: list[str], prefix: str, notes: dict[str, str], labels: str, has_std: bool
) -> dict[str, Any]:
    """``raw`` rounded for JSON; each NaN becomes None and gets a note under ``prefix + key``."""
    rounded = {key: _json_number(raw[key]) for key in keys}
    for key, value in rounded.items():
        if value is None:
            notes[prefix + key] = undefined_reason(key, int(raw["n"]), labels, has_std)
    return rounded


def _metrics_document(
    predictions: pd.DataFrame, true_p: np.ndarray | None, tail_thresholds: tuple[float, float]
) -> dict[str, Any]:
    """The measured part of metrics.json: overall metrics, tails, 2x2 table, error per bin, notes,
    and the example images of the distributions plot."""
    pred_p = predictions[PROBABILITY_COLUMNS].to_numpy(dtype=np.float64)  # (N, 10)
    true_mean = predictions["true_mean"].to_numpy(dtype=np.float64)
    true_std = predictions["true_std"].to_numpy(dtype=np.float64)
    pred_mean = predictions["pred_mean"].to_numpy(dtype=np.float64)
    labels = "distribution" if true_p is not None else "mean"
    has_std = len(true_std) > 0 and not np.isnan(true_std).any()
    notes: dict[str, str] = {}
    raw = summarize(true_p, pred_p, true_mean=true_mean, true_std=true_std)
    document: dict[str, Any] = _rounded_with_notes(raw, METRIC_KEYS, "", notes, labels, has_std)
    tails = tail_metrics(true_mean, pred_p, true_p=true_p, thresholds=tail_thresholds)
    document["tail_thresholds"] = list(tail_thresholds)
    document["tails"] = {
        name: _rounded_with_notes(values, TAIL_KEYS, f"tails.{name}.", notes, labels, has_std)
        for name, values in tails.items()
    }
    document["confusion"] = confusion_counts(true_mean, pred_mean)
    document["error_by_bin"] = [
        {**row, "mae": _json_number(row["mae"]), "bias": _json_number(row["bias"])}
        for row in error_by_bin(true_mean, pred_mean)
    ]
    document["notes"] = notes
    # The images whose distributions the report plots, so that metrics.json says which they are.
    document["examples"] = {
        name: [str(predictions["image_id"].iloc[row]) for row in rows]
        for name, rows in pick_examples(true_mean, tail_thresholds).items()
    }
    return document


def check_out_dir(out_dir: PathLike) -> Path:
    """Create ``out_dir`` and make sure a file can be written there, or raise a ConfigError naming it.

    Called before any image is scored, so that a wrong ``--out`` fails in milliseconds, not after
    the whole evaluation.
    """
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = make_temp(out_dir, ".write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write into the output directory {out_dir}: {exc.strerror or exc}") from exc
    return out_dir


def check_tail_thresholds(thresholds: Any) -> tuple[float, float]:
    """``(low, high)`` with 1 <= low < high <= 10, or a ConfigError."""
    try:
        low, high = (float(t) for t in thresholds)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"tail thresholds must be two numbers, got {thresholds!r}") from exc
    if not (1.0 <= low < high <= 10.0):
        raise ConfigError(f"tail thresholds must satisfy 1 <= low < high <= 10, got {low:g} and {high:g}")
    return low, high


def evaluate(
    scorer: Scorer,
    data: pd.DataFrame | str | Path,
    out_dir: PathLike,
    *,
    split: str = "test",
    progress: bool = False,
    plots: bool = True,
    data_label: str | None = None,
    tail_thresholds: tuple[float, float] = TAIL_THRESHOLDS,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``scorer`` and write metrics.json, predictions.csv, plots and the report.

    Args:
        scorer: the model to evaluate (its declared, deterministic preprocessing is used).
        data: a prepared directory, its manifest (:func:`beholder.data.manifest.load_manifest`), or
            the labels frame of :func:`load_user_labels` / :func:`labels_from_manifest`.
        out_dir: where to write (created if needed).
        split: ``train``, ``val``, ``test`` or ``all``; applies to a manifest only.
        progress: show a progress bar while scoring.
        plots: write the PNG plots (and embed them in the report).
        data_label: how to name the data in the outputs (default: the directory, or "labels").
        tail_thresholds: (low, high): the tails are true means below low and above high.
        provenance: where the model comes from (a checkpoint's ``provenance``), for the report.

    Returns:
        The content of metrics.json (metrics rounded, NaN as None with a note, plus context).
    """
    tail_thresholds = check_tail_thresholds(tail_thresholds)
    if isinstance(data, (str, Path)):
        from beholder.data.manifest import load_manifest

        data_label = data_label or str(data)
        data = load_manifest(data)
    if "source_path" in data.columns:
        labels = labels_from_manifest(data, split)
        split_label: str | None = split
    else:
        labels = data
        split_label = None
    data_label = data_label or ("manifest" if split_label else "labels")
    out_dir = check_out_dir(out_dir)

    predictions, failures = predict_labels(scorer, labels, progress=progress)
    failures_path = out_dir / "failures.csv"
    if len(failures):
        atomic_write_text(failures_path, failures.to_csv(index=False, lineterminator="\n"))
    elif failures_path.exists():
        failures_path.unlink()  # a stale list from an earlier run would mislead
    if predictions.empty:
        raise ConfigError(f"none of the {len(labels)} images could be scored; see {failures_path}")

    distributions = has_distributions(labels)
    true_p = predictions[TRUE_PROBABILITY_COLUMNS].to_numpy(dtype=np.float64) if distributions else None
    metrics = _metrics_document(predictions, true_p, tail_thresholds)
    metrics = {
        **{key: metrics[key] for key in METRIC_KEYS},
        "n_failed": len(failures),
        "threshold": THRESHOLD,
        "labels": "distribution" if distributions else "mean",
        "split": split_label,
        # Only an AVA manifest's test split is the official list; a ratings CSV has its own split.
        "ava_test_list": split_label == "test" and "label_kind" not in data.columns if split_label else None,
        "data": data_label,
        "model": scorer.name,
        "provenance": provenance or None,
        "preprocessing": {k: v for k, v in scorer.preprocessing.to_dict().items() if k != "extra"},
        **{key: value for key, value in metrics.items() if key not in METRIC_KEYS},
        "beholder_version": __version__,
    }
    plot_files: dict[str, str] = {}
    if plots:
        plot_files = write_plots(
            predictions,
            out_dir,
            confusion=metrics["confusion"],
            error_rows=metrics["error_by_bin"],
            true_p=true_p,
            thresholds=tail_thresholds,
        )
    write_json(out_dir / "metrics.json", metrics)
    write_predictions(predictions, out_dir / "predictions.csv")
    write_report(metrics, out_dir, plot_files)
    log.info("evaluation written to %s", out_dir)
    return metrics


def write_predictions(predictions: pd.DataFrame, path: PathLike) -> None:
    """predictions.csv: one row per image, fixed decimals, empty where a value is unknown."""

    def text(value: Any) -> str:
        return "" if value is None or not math.isfinite(value) else f"{value:.{DECIMALS}f}"

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(predictions.columns))
    for row in predictions.itertuples(index=False):
        writer.writerow([row[0], *(text(float(v)) for v in row[1:])])
    atomic_write_text(path, buffer.getvalue())

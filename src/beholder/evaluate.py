"""Evaluate a NIMA model on rated images and compare it with published results.

The test-set metrics are those of the NIMA paper (Talebi & Milanfar 2018, Table I): binary
accuracy at the mean-score threshold 5, linear (LCC) and rank (SRCC) correlation of the mean and
of the standard deviation, and the EMD between true and predicted rating distributions.

Images are scored with :meth:`beholder.inference.Scorer.iter_score`, i.e. with the preprocessing
the model declares and no random crop, so that each image's predicted mean is exactly the one
``beholder score`` prints. Originals (``source_path``) are read, never the resized training cache,
because the model's resize (e.g. idealo's nearest-neighbour to 224x224) starts from the original.

Outputs in ``out_dir``: ``metrics.json``, ``predictions.csv``, ``failures.csv`` (only if an image
could not be decoded), four PNG plots, ``report.md`` and ``report.html``. ``metrics.json`` and
``predictions.csv`` are sorted by image id and use fixed rounding, so two evaluations of the same
model on the same data are byte-identical.

Missing files are a configuration error naming them (the manifest is trusted: a file that has gone
is a broken setup, not a data point). Files that exist but cannot be decoded are listed in
``failures.csv``, excluded from the metrics and reported with a warning.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from beholder import __version__
from beholder.errors import ConfigError
from beholder.metrics import (
    THRESHOLD,
    binary_accuracy,
    distribution_mean,
    distribution_std,
    lcc,
    srcc,
    summarize,
)

if TYPE_CHECKING:  # pandas is an optional dependency ("data" extra); imported where used
    import pandas as pd

    from beholder.inference import Scorer

log = logging.getLogger(__name__)

VOTE_COLUMNS = [f"votes_{i}" for i in range(1, 11)]
PROB_COLUMNS = [f"p{i}" for i in range(1, 11)]
SPLITS = ("train", "val", "test", "all")

#: Keys of metrics.json that hold metrics, in the order the NIMA paper reports them.
METRIC_KEYS = [
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
#: Metrics that need the rating distribution (vote counts), not only the mean.
DISTRIBUTION_METRICS = ("emd",)
STD_METRICS = ("lcc_std", "srcc_std")

#: Decimal places in metrics.json and predictions.csv: far below any meaningful difference, and
#: fixed so that two runs are byte-identical.
DECIMALS = 6

#: Tails of the mean-score histogram zoomed on in the distribution plot (AVA means are mostly 4-7;
#: a model that regresses to the mean shows it here first).
LOWER_TAIL = 4.0
UPPER_TAIL = 7.0

PLOT_FILES = {
    "distribution": "mean_distribution.png",
    "scatter": "scatter.png",
    "confusion": "confusion.png",
    "error_by_bin": "error_by_bin.png",
}


# -- published results ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedResult:
    """One published figure set on AVA. ``accuracy`` is in percent; None where not reported."""

    method: str
    source: str
    test_set: str
    accuracy: Optional[float] = None
    lcc_mean: Optional[float] = None
    srcc_mean: Optional[float] = None
    emd: Optional[float] = None


_NIMA = "Talebi & Milanfar 2018, Table I"
_NIMA_TEST = "AVA official test set (as reported in the paper)"
_EARLIER_TEST = "AVA official test set (as reported by each paper)"

#: Published AVA results to compare with. Test sets differ; each row names its own.
PUBLISHED_RESULTS: list[PublishedResult] = [
    PublishedResult("NIMA (MobileNet)", _NIMA, _NIMA_TEST, 80.36, 0.518, 0.510, 0.081),
    PublishedResult("NIMA (VGG16)", _NIMA, _NIMA_TEST, 80.60, 0.610, 0.592, None),
    PublishedResult("NIMA (Inception-v2)", _NIMA, _NIMA_TEST, 81.51, 0.638, 0.612, 0.050),
    PublishedResult(
        "NIMA (MobileNet), the seed project",
        "the seed project",
        "AVA official test set (as reported by the seed)",
        75.22,
        emd=0.094,
    ),
    PublishedResult("Murray et al. 2012", "AVA paper (CVPR 2012)", _EARLIER_TEST, 68.00),
    PublishedResult("Kong et al. 2016", "ECCV 2016", _EARLIER_TEST, 72.04),
    PublishedResult("Lu et al. 2014", "RAPID (ACM MM 2014)", _EARLIER_TEST, 73.25),
    PublishedResult("Schwarz et al. 2018", "WACV 2018", _EARLIER_TEST, 75.83),
    PublishedResult(
        "NIMA (MobileNet), idealo",
        "idealo/image-quality-assessment README",
        "idealo's random AVA split, not the official test list",
        None,
        0.626,
        0.609,
        0.071,
    ),
]


# -- inputs --------------------------------------------------------------------------------------


def _id_text(value: Any) -> str:
    # Ids travel as text (a user's ids can be file names); integral floats from CSVs lose ".0".
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _id_key(text: str) -> tuple[int, int, str]:
    # Numeric ids (AVA's) sort as numbers; others after them, as text. isdecimal, not isdigit:
    # int() rejects digits such as "²". The text breaks ties ("7" and "07") so the order is total.
    return (0, int(text), text) if text.isdecimal() else (1, 0, text)


def read_manifest(prepared_dir: Union[str, Path]) -> pd.DataFrame:
    """The manifest of a directory written by ``beholder ava prepare``, with absolute paths.

    A thin wrapper over :func:`beholder.data.manifest.load_manifest`, which fails loudly (ConfigError)
    when the manifest is missing or lacks columns.
    """
    from beholder.data.manifest import load_manifest

    return load_manifest(prepared_dir)


def labels_from_manifest(manifest: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Select ``split`` (or ``all``) from a manifest; returns the normalised labels frame.

    The frame has columns image_id (text), path, votes_1..votes_10, true_mean, true_std.
    """
    import pandas as pd

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    missing = [c for c in ["image_id", "split", "source_path", *VOTE_COLUMNS] if c not in manifest.columns]
    if missing:
        raise ConfigError(f"manifest lacks columns {missing}; was it written by `beholder ava prepare`?")
    rows = manifest if split == "all" else manifest[manifest["split"] == split]
    if rows.empty:
        available = sorted(str(s) for s in manifest["split"].dropna().unique())
        raise ConfigError(f"split {split!r} has no images in the manifest (splits present: {available})")
    frame = pd.DataFrame(
        {
            "image_id": [_id_text(v) for v in rows["image_id"]],
            "path": [str(p) for p in rows["source_path"]],
        }
    )
    votes = rows[VOTE_COLUMNS].to_numpy(dtype=np.float64)
    for i, column in enumerate(VOTE_COLUMNS):
        frame[column] = votes[:, i]
    return _finish_labels(frame, "manifest")


def _first_present(columns: Sequence[str], candidates: Sequence[str]) -> Optional[str]:
    lowered = {c.lower(): c for c in columns}
    return next((lowered[c] for c in candidates if c in lowered), None)


def load_user_labels(images_dir: Union[str, Path], labels_csv: Union[str, Path]) -> pd.DataFrame:
    """Read a user's ratings of their own photos into the normalised labels frame.

    The CSV names each photo by ``path``/``file``/``filename`` (relative to ``images_dir`` or,
    failing that, to the CSV's folder; or absolute) or by ``id``/``image_id`` (a file name, relative
    path or stem under ``images_dir``, searched recursively), and rates it by vote counts
    ``votes_1..votes_10`` or ``c1..c10`` (AVA's form), or by a ``mean`` (or ``mean_score``) on
    1..10, optionally with a ``std``. Rows without any rating are skipped with a warning; a photo
    named but not found is an error.
    """
    import pandas as pd

    images_dir, labels_csv = Path(images_dir), Path(labels_csv)
    if not images_dir.is_dir():
        raise ConfigError(f"--images: not a directory: {images_dir}")
    if not labels_csv.is_file():
        raise ConfigError(f"--labels: file not found: {labels_csv}")
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=True)
    except Exception as exc:  # pandas raises several parser error types
        raise ConfigError(f"{labels_csv}: not a readable CSV ({exc})") from exc
    columns = list(table.columns)
    path_column = _first_present(columns, ["path", "file", "filename"])
    id_column = _first_present(columns, ["image_id", "id"])
    if path_column is None and id_column is None:
        raise ConfigError(f"{labels_csv}: needs an 'id', 'image_id' or 'path' column; found {columns}")
    vote_columns = None
    for names in (VOTE_COLUMNS, [f"c{i}" for i in range(1, 11)]):
        found = [_first_present(columns, [n]) for n in names]
        if all(found):
            vote_columns = found
            break
    mean_column = _first_present(columns, ["mean", "mean_score"])
    std_column = _first_present(columns, ["std", "std_score"])
    if vote_columns is None and mean_column is None:
        raise ConfigError(
            f"{labels_csv}: needs vote counts (votes_1..votes_10 or c1..c10) or a 'mean' column; found {columns}"
        )

    def numbers(column: str) -> np.ndarray:
        values = pd.to_numeric(table[column].str.strip(), errors="coerce")
        bad = table[column].notna() & values.isna()
        if bad.any():
            raise ConfigError(
                f"{labels_csv}: column {column!r} has non-numbers, e.g. {table[column][bad].iloc[0]!r}"
            )
        return values.to_numpy(dtype=np.float64)

    if vote_columns is not None:
        votes = np.stack([numbers(c) for c in vote_columns], axis=1)  # (N, 10)
        rated = ~np.isnan(votes).all(axis=1)
        partial = rated & np.isnan(votes).any(axis=1)
        if partial.any():
            raise ConfigError(f"{labels_csv}: row {int(np.argmax(partial)) + 2} has only some vote counts")
    else:
        means = numbers(mean_column)
        rated = ~np.isnan(means)
    if not rated.all():
        log.warning("%s: %d of %d rows have no rating; skipped", labels_csv, int((~rated).sum()), len(table))
    if not rated.any():
        raise ConfigError(f"{labels_csv}: no row has a rating")

    index = _image_index(images_dir)
    ids, paths, missing = [], [], []
    for row in np.flatnonzero(rated):
        given_path = table[path_column].iloc[row] if path_column is not None else None
        given_id = table[id_column].iloc[row] if id_column is not None else None
        if isinstance(given_path, str) and given_path.strip():
            name = given_path.strip()
            # relative to --images, else to the CSV's own folder (a CSV kept beside an images/ dir)
            candidates = (
                [Path(name)] if Path(name).is_absolute() else [images_dir / name, labels_csv.parent / name]
            )
            found = next((str(c) for c in candidates if c.is_file()), None)
        elif isinstance(given_id, str) and given_id.strip():
            name = _id_text(given_id)
            found = index.get(name)
            if found == "":
                raise ConfigError(f"{labels_csv}: id {name!r} matches several files in {images_dir}")
        else:
            raise ConfigError(f"{labels_csv}: row {row + 2} names no image")
        if found is None:
            missing.append(name)
        paths.append(found)
        ids.append(_id_text(given_id) if isinstance(given_id, str) and given_id.strip() else name)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(f"{len(missing)} rated image(s) not found in {images_dir}: {shown}")

    frame = pd.DataFrame({"image_id": ids, "path": paths})
    if vote_columns is not None:
        for i, column in enumerate(VOTE_COLUMNS):
            frame[column] = votes[rated, i]
    else:
        frame["true_mean"] = means[rated]
        frame["true_std"] = numbers(std_column)[rated] if std_column else np.nan
    return _finish_labels(frame, str(labels_csv))


def _image_index(images_dir: Path) -> dict[str, str]:
    """Relative path, file name and stem -> path, for every image under ``images_dir``.

    An ambiguous key (two files with one stem) maps to "" so that using it is an error.
    """
    from beholder.inference import expand_inputs

    index: dict[str, str] = {}
    for text in expand_inputs([images_dir]):
        path = Path(text)
        keys = {path.relative_to(images_dir).as_posix(), path.name, path.stem}
        for key in keys:
            index[key] = "" if key in index and index[key] != text else text
    return index


def _finish_labels(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Validate, derive true mean/std from votes, sort by image id."""
    duplicated = frame["image_id"][frame["image_id"].duplicated()]
    if not duplicated.empty:
        raise ConfigError(f"{source}: image id {duplicated.iloc[0]!r} appears more than once")
    if VOTE_COLUMNS[0] in frame.columns:
        votes = frame[VOTE_COLUMNS].to_numpy(dtype=np.float64)
        totals = votes.sum(axis=1)
        bad = (votes < 0).any(axis=1) | ~(totals > 0)
        if bad.any():
            raise ConfigError(
                f"{source}: image {frame['image_id'].iloc[int(np.argmax(bad))]!r} has no votes or negative ones"
            )
        probabilities = votes / totals[:, None]  # (N, 10)
        frame["true_mean"] = distribution_mean(probabilities)
        frame["true_std"] = distribution_std(probabilities)
    else:
        out_of_range = ~frame["true_mean"].between(1.0, 10.0)
        if out_of_range.any():
            raise ConfigError(
                f"{source}: mean score of {frame['image_id'][out_of_range].iloc[0]!r} is outside 1..10"
            )
    ids = frame["image_id"].tolist()
    order = sorted(range(len(ids)), key=lambda i: _id_key(ids[i]))
    return frame.iloc[order].reset_index(drop=True)


def has_distributions(labels: pd.DataFrame) -> bool:
    """Whether the labels carry vote counts (so EMD and std correlations can be computed)."""
    return VOTE_COLUMNS[0] in labels.columns


# -- prediction and metrics -------------------------------------------------------------------


def predict(
    scorer: Scorer, labels: pd.DataFrame, *, progress: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score every labelled image; returns (predictions, failures), both in the labels' order.

    predictions: image_id, true_mean, true_std, pred_mean, pred_std, p1..p10 (full precision).
    failures: image_id, path, error, for files that exist but could not be decoded.
    """
    import pandas as pd

    missing = [p for p in labels["path"] if not Path(p).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(f"{len(missing)} image file(s) listed for evaluation are missing: {shown}")
    rows, failures = [], []
    results = scorer.iter_score(list(labels["path"]), progress=progress)
    for record, result in zip(labels.itertuples(index=False), results):
        if not result.ok:
            failures.append({"image_id": record.image_id, "path": record.path, "error": result.error})
            continue
        rows.append(
            {
                "image_id": record.image_id,
                "true_mean": float(record.true_mean),
                "true_std": float(record.true_std),
                "pred_mean": result.mean,
                "pred_std": result.std,
                **dict(zip(PROB_COLUMNS, result.distribution)),
            }
        )
    if failures:
        log.warning(
            "%d of %d images could not be decoded and are excluded from the metrics (first: %s: %s)",
            len(failures),
            len(labels),
            failures[0]["path"],
            failures[0]["error"],
        )
    columns = ["image_id", "true_mean", "true_std", "pred_mean", "pred_std", *PROB_COLUMNS]
    return pd.DataFrame(rows, columns=columns), pd.DataFrame(failures, columns=["image_id", "path", "error"])


def compute_metrics(
    true_mean: np.ndarray,
    pred_p: np.ndarray,
    *,
    true_p: Optional[np.ndarray] = None,
    true_std: Optional[np.ndarray] = None,
) -> dict[str, Optional[float]]:
    """NIMA metrics; with ``true_p`` (N, 10) all of them, else those the means (and stds) allow.

    Undefined values (a correlation of a constant, any metric of an empty set) are NaN.
    """
    pred_p = np.asarray(pred_p, dtype=np.float64).reshape(-1, 10)
    if true_p is not None and len(pred_p):
        return summarize(true_p, pred_p)
    true_mean = np.asarray(true_mean, dtype=np.float64)
    pred_mean, pred_std = distribution_mean(pred_p), distribution_std(pred_p)
    error = pred_mean - true_mean
    nan = math.nan
    defined = len(true_mean) > 0
    has_std = true_std is not None and len(true_std) and not np.isnan(true_std).any()
    return {
        "n": len(true_mean),
        "emd": nan,
        "accuracy": binary_accuracy(true_mean, pred_mean) if defined else nan,
        "lcc_mean": lcc(true_mean, pred_mean),
        "srcc_mean": srcc(true_mean, pred_mean),
        "lcc_std": lcc(true_std, pred_std) if has_std else nan,
        "srcc_std": srcc(true_std, pred_std) if has_std else nan,
        "mae_mean": float(np.mean(np.abs(error))) if defined else nan,
        "rmse_mean": float(np.sqrt(np.mean(error**2))) if defined else nan,
    }


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


# -- the evaluation ------------------------------------------------------------------------------


def evaluate(
    scorer: Scorer,
    data: Union[pd.DataFrame, str, Path],
    out_dir: Union[str, Path],
    *,
    split: str = "test",
    progress: bool = False,
    plots: bool = True,
    data_label: Optional[str] = None,
) -> dict[str, Any]:
    """Evaluate ``scorer`` and write metrics.json, predictions.csv, plots and the report.

    Args:
        scorer: the model to evaluate (its declared, deterministic preprocessing is used).
        data: a prepared directory, its manifest (from :func:`read_manifest`), or the labels
            frame of :func:`load_user_labels` / :func:`labels_from_manifest`.
        out_dir: where to write (created if needed).
        split: ``train``, ``val``, ``test`` or ``all``; applies to a manifest only.
        progress: show a progress bar while scoring.
        plots: write the PNG plots (and embed them in the report).
        data_label: how to name the data in the outputs (default: the directory, or "labels").

    Returns:
        The content of metrics.json (metrics rounded, NaN as None, plus context).
    """
    if isinstance(data, (str, Path)):
        data_label = data_label or str(data)
        data = read_manifest(data)
    if "source_path" in data.columns:
        labels = labels_from_manifest(data, split)
        split_label: Optional[str] = split
    else:
        labels = data
        split_label = None
    data_label = data_label or ("manifest" if split_label else "labels")
    distributions = has_distributions(labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    predictions, failures = predict(scorer, labels, progress=progress)
    failures_path = out_dir / "failures.csv"
    if len(failures):
        failures.to_csv(failures_path, index=False, lineterminator="\n")
    elif failures_path.exists():
        failures_path.unlink()  # a stale list from an earlier run would mislead
    if predictions.empty:
        raise ConfigError(f"none of the {len(labels)} images could be scored; see {failures_path}")

    pred_p = predictions[PROB_COLUMNS].to_numpy(dtype=np.float64)  # (N, 10)
    true_mean = predictions["true_mean"].to_numpy(dtype=np.float64)
    if distributions:
        scored = labels.set_index("image_id").loc[predictions["image_id"]]
        votes = scored[VOTE_COLUMNS].to_numpy(dtype=np.float64)
        true_p: Optional[np.ndarray] = votes / votes.sum(axis=1, keepdims=True)
    else:
        true_p = None
    raw = compute_metrics(
        true_mean, pred_p, true_p=true_p, true_std=predictions["true_std"].to_numpy(dtype=np.float64)
    )
    pred_mean = predictions["pred_mean"].to_numpy(dtype=np.float64)
    metrics: dict[str, Any] = {key: _json_number(raw[key]) for key in METRIC_KEYS}
    metrics.update(
        {
            "n_failed": len(failures),
            "threshold": THRESHOLD,
            "labels": "distribution" if distributions else "mean",
            "split": split_label,
            "data": data_label,
            "model": scorer.name,
            "preprocessing": {k: v for k, v in scorer.preprocessing.to_dict().items() if k != "extra"},
            "confusion": confusion_counts(true_mean, pred_mean),
            "error_by_bin": [
                {**row, "mae": _json_number(row["mae"]), "bias": _json_number(row["bias"])}
                for row in error_by_bin(true_mean, pred_mean)
            ],
            "beholder_version": __version__,
        }
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    write_predictions(predictions, out_dir / "predictions.csv")
    plot_files: dict[str, str] = {}
    if plots:
        plot_files = write_plots(true_mean, pred_mean, out_dir)
    write_report(metrics, out_dir, plot_files)
    log.info("evaluation written to %s", out_dir)
    return metrics


def write_predictions(predictions: pd.DataFrame, path: Union[str, Path]) -> None:
    """predictions.csv: one row per image, fixed decimals, empty where a value is unknown."""

    def text(value: Any) -> str:
        return "" if value is None or not math.isfinite(value) else f"{value:.{DECIMALS}f}"

    columns = list(predictions.columns)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in predictions.itertuples(index=False):
            writer.writerow([row[0], *(text(float(v)) for v in row[1:])])


# -- plots ---------------------------------------------------------------------------------------


def _figure(width: float, height: float):
    # The object-oriented API without pyplot: no global backend state, safe in threads and servers.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(figure, path: Path) -> None:
    # No "Software" entry: the PNG then depends only on the data and the matplotlib version.
    figure.savefig(path, metadata={"Software": None})


def plot_mean_distributions(true_mean: np.ndarray, pred_mean: np.ndarray, path: Union[str, Path]) -> None:
    """Histograms of true and predicted means: full range, and zoomed on the lower and upper tails."""
    edges = np.linspace(1.0, 10.0, 91)  # bins of 0.1
    true_counts, _ = np.histogram(true_mean, edges)
    pred_counts, _ = np.histogram(pred_mean, edges)
    figure = _figure(13, 3.8)
    axes = figure.subplots(1, 3)
    windows = [
        ("all mean scores", 1.0, 10.0),
        (f"lower tail (< {LOWER_TAIL:g})", 1.0, LOWER_TAIL),
        (f"upper tail (> {UPPER_TAIL:g})", UPPER_TAIL, 10.0),
    ]
    for ax, (title, low, high) in zip(axes, windows):
        ax.stairs(true_counts, edges, label="true (human ratings)", fill=True, alpha=0.4, color="tab:blue")
        ax.stairs(pred_counts, edges, label="predicted", linewidth=1.8, color="tab:orange")
        ax.set_xlim(low, high)
        inside = (edges[:-1] >= low) & (edges[1:] <= high)
        peak = max(int(true_counts[inside].max(initial=0)), int(pred_counts[inside].max(initial=0)), 1)
        ax.set_ylim(0, peak * 1.15)  # autoscale to the window: the tails are tiny next to the middle
        if not (true_counts[inside].any() or pred_counts[inside].any()):
            ax.text(0.5, 0.5, "no images in this range", transform=ax.transAxes, ha="center", color="grey")
        ax.axvline(THRESHOLD, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("mean score")
    axes[0].set_ylabel("images")
    axes[0].legend(loc="upper left")
    _save(figure, Path(path))


def plot_scatter(true_mean: np.ndarray, pred_mean: np.ndarray, path: Union[str, Path]) -> None:
    """True against predicted mean per image, with the identity line and the threshold."""
    figure = _figure(5.5, 5.5)
    ax = figure.subplots()
    ax.scatter(true_mean, pred_mean, s=8 if len(true_mean) > 500 else 20, alpha=0.5, edgecolors="none")
    ax.plot([1, 10], [1, 10], color="black", linewidth=1, label="identity")
    ax.axvline(THRESHOLD, color="grey", linestyle=":", linewidth=1)
    ax.axhline(THRESHOLD, color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(1, 10)
    ax.set_ylim(1, 10)
    ax.set_aspect("equal")
    ax.set_xlabel("true mean score")
    ax.set_ylabel("predicted mean score")
    ax.legend(loc="upper left")
    _save(figure, Path(path))


def plot_confusion(counts: dict[str, int], path: Union[str, Path]) -> None:
    """The 2x2 table of true against predicted class at the threshold, counts and shares."""
    table = np.array(
        [
            [counts["true_low_pred_low"], counts["true_low_pred_high"]],
            [counts["true_high_pred_low"], counts["true_high_pred_high"]],
        ]
    )
    total = max(int(table.sum()), 1)
    figure = _figure(4.5, 4)
    ax = figure.subplots()
    ax.imshow(table, cmap="Blues", vmin=0, vmax=max(int(table.max()), 1))
    for (row, column), value in np.ndenumerate(table):
        colour = "white" if value > table.max() / 2 else "black"
        ax.text(column, row, f"{value}\n{100 * value / total:.1f}%", ha="center", va="center", color=colour)
    ax.set_xticks([0, 1], [f"≤ {THRESHOLD:g}", f"> {THRESHOLD:g}"])
    ax.set_yticks([0, 1], [f"≤ {THRESHOLD:g}", f"> {THRESHOLD:g}"])
    ax.set_xlabel("predicted mean")
    ax.set_ylabel("true mean")
    ax.set_title(f"accuracy at {THRESHOLD:g}: {100 * np.trace(table) / total:.2f}%")
    _save(figure, Path(path))


def plot_error_by_bin(rows: list[dict[str, Any]], path: Union[str, Path]) -> None:
    """Mean absolute error of the predicted mean per true-rating bin, with the count per bin."""
    figure = _figure(7, 4)
    ax = figure.subplots()
    labels = [row["bin"] for row in rows]
    values = [0.0 if row["mae"] is None or math.isnan(row["mae"]) else row["mae"] for row in rows]
    bars = ax.bar(labels, values, color="tab:blue")
    for bar, row in zip(bars, rows):
        ax.annotate(
            f"n={row['n']}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xlabel("true mean score bin")
    ax.set_ylabel("mean absolute error of the mean")
    ax.set_ylim(0, max([*values, 0.1]) * 1.2)
    _save(figure, Path(path))


def write_plots(true_mean: np.ndarray, pred_mean: np.ndarray, out_dir: Union[str, Path]) -> dict[str, str]:
    """Write the four plots into ``out_dir``; returns {kind: file name}."""
    out_dir = Path(out_dir)
    plot_mean_distributions(true_mean, pred_mean, out_dir / PLOT_FILES["distribution"])
    plot_scatter(true_mean, pred_mean, out_dir / PLOT_FILES["scatter"])
    plot_confusion(confusion_counts(true_mean, pred_mean), out_dir / PLOT_FILES["confusion"])
    plot_error_by_bin(error_by_bin(true_mean, pred_mean), out_dir / PLOT_FILES["error_by_bin"])
    return dict(PLOT_FILES)


# -- report --------------------------------------------------------------------------------------

_METRIC_TITLES = {
    "n": "images evaluated",
    "emd": "EMD (r=2) between true and predicted distributions",
    "accuracy": f"binary accuracy at mean {THRESHOLD:g}",
    "lcc_mean": "LCC (Pearson) of the mean",
    "srcc_mean": "SRCC (Spearman) of the mean",
    "lcc_std": "LCC (Pearson) of the std",
    "srcc_std": "SRCC (Spearman) of the std",
    "mae_mean": "mean absolute error of the mean",
    "rmse_mean": "root mean squared error of the mean",
}


def _exact(value: Any) -> str:
    # The value exactly as metrics.json writes it, so the report can be checked against it.
    return "null" if value is None else json.dumps(value)


def _short(value: Optional[float], digits: int = 3, percent: bool = False) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f}%" if percent else f"{value:.{digits}f}"


def comparison_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows of the comparison table: this model first, then :data:`PUBLISHED_RESULTS`."""
    if metrics.get("split"):
        test_set = f"`{metrics['data']}`, split {metrics['split']}"
        if metrics["split"] == "test":
            test_set += " (official AVA test list, images at hand)"
    else:
        test_set = f"`{metrics['data']}`"
    rows = [
        [
            f"**this run: {metrics['model']}**",
            "beholder evaluate",
            f"{test_set}, n={metrics['n']}",
            _short(metrics["accuracy"], percent=True),
            _short(metrics["lcc_mean"]),
            _short(metrics["srcc_mean"]),
            _short(metrics["emd"]),
        ]
    ]
    for r in PUBLISHED_RESULTS:
        rows.append(
            [
                r.method,
                r.source,
                r.test_set,
                "—" if r.accuracy is None else f"{r.accuracy:.2f}%",
                "—" if r.lcc_mean is None else f"{r.lcc_mean:.3f}",
                "—" if r.srcc_mean is None else f"{r.srcc_mean:.3f}",
                "—" if r.emd is None else f"{r.emd:.3f}",
            ]
        )
    return rows


COMPARISON_HEADER = ["method", "source", "test set", "accuracy", "LCC (mean)", "SRCC (mean)", "EMD"]
CAVEATS = [
    "Test sets differ: the rows were measured on different images and are only roughly comparable. "
    "Only a run on the official AVA test list (`generic_test.jpgl`, split `test` of `beholder ava prepare`) "
    "is comparable with the papers, and even then the images that could still be downloaded differ.",
    "idealo's figures come from a random split of AVA, not the official test list; its model was very "
    "likely trained on many official test images, so its own figures on that list are probably optimistic.",
    f"Accuracy counts an image as high quality when its mean score is above {THRESHOLD:g}; "
    "a small n gives very noisy figures, and correlations of fewer than two distinct values are undefined (null).",
    "Evaluation uses the model's declared preprocessing without random crops, on the original images.",
]


def _sections(metrics: dict[str, Any], plot_files: dict[str, str]) -> list[tuple[str, Any]]:
    """The report as (kind, content) pieces shared by the Markdown and HTML writers."""
    pieces: list[tuple[str, Any]] = [("h1", "Beholder evaluation")]
    pre = metrics["preprocessing"]
    facts = [
        f"model: `{metrics['model']}`",
        f"data: `{metrics['data']}`" + (f", split `{metrics['split']}`" if metrics.get("split") else ""),
        f"images evaluated: {metrics['n']}; could not be decoded (excluded, see failures.csv): {metrics['n_failed']}",
        f"preprocessing (declared by the model): resize to {pre['resize']} ({pre['interpolation']}), "
        + (f"centre crop {pre['crop']}" if pre["crop"] else "no crop")
        + "; no random crop or flip",
        f"beholder {metrics['beholder_version']}",
    ]
    pieces.append(("list", facts))
    if metrics["labels"] == "mean":
        pieces.append(
            (
                "p",
                "The labels give only mean scores, not vote distributions: EMD is not computed (null), "
                "and the std correlations are null unless the labels have a std column.",
            )
        )
    pieces.append(("h2", "Comparison with published results"))
    pieces.append(("table", (COMPARISON_HEADER, comparison_rows(metrics))))
    pieces.append(("list", CAVEATS))
    pieces.append(("h2", "Metrics (exactly as in metrics.json)"))
    pieces.append(
        (
            "table",
            (["key", "metric", "value"], [[k, _METRIC_TITLES[k], _exact(metrics[k])] for k in METRIC_KEYS]),
        )
    )
    c = metrics["confusion"]
    pieces.append(("h2", f"2×2 table at threshold {THRESHOLD:g}"))
    pieces.append(
        (
            "table",
            (
                ["", f"predicted ≤ {THRESHOLD:g}", f"predicted > {THRESHOLD:g}"],
                [
                    [f"true ≤ {THRESHOLD:g}", str(c["true_low_pred_low"]), str(c["true_low_pred_high"])],
                    [f"true > {THRESHOLD:g}", str(c["true_high_pred_low"]), str(c["true_high_pred_high"])],
                ],
            ),
        )
    )
    pieces.append(("h2", "Absolute error per true-rating bin"))
    pieces.append(
        (
            "table",
            (
                ["true mean", "n", "MAE", "bias (pred - true)"],
                [
                    [r["bin"], str(r["n"]), _short(r["mae"]), _short(r["bias"])]
                    for r in metrics["error_by_bin"]
                ],
            ),
        )
    )
    if plot_files:
        pieces.append(("h2", "Plots"))
        captions = {
            "distribution": "Distribution of predicted and true means: all, lower tail, upper tail",
            "scatter": "True against predicted mean, with the identity line",
            "confusion": f"2×2 table at threshold {THRESHOLD:g}",
            "error_by_bin": "Absolute error of the mean per true-rating bin",
        }
        for kind, name in plot_files.items():
            pieces.append(("img", (captions[kind], name)))
    return pieces


def render_markdown(metrics: dict[str, Any], plot_files: dict[str, str]) -> str:
    """report.md text."""
    lines: list[str] = []
    for kind, content in _sections(metrics, plot_files):
        if kind == "h1":
            lines += [f"# {content}", ""]
        elif kind == "h2":
            lines += [f"## {content}", ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "list":
            lines += [f"- {item}" for item in content] + [""]
        elif kind == "table":
            header, rows = content
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            caption, name = content
            lines += [f"![{caption}]({name})", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _inline_html(text: str) -> str:
    # The Markdown used in the shared pieces is only `code` and **bold**.
    escaped = html.escape(text)
    parts = escaped.split("`")
    escaped = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def render_html(metrics: dict[str, Any], plot_files: dict[str, str]) -> str:
    """report.html text: standalone, images referenced relative to the report."""
    body: list[str] = []
    for kind, content in _sections(metrics, plot_files):
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline_html(content)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(content)}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in content) + "</ul>")
        elif kind == "table":
            header, rows = content
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in header)
            cells = "".join(
                "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
        elif kind == "img":
            caption, name = content
            body.append(
                f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:left}"
        "th{background:#f3f3f3}img{max-width:100%}figure{margin:1.5rem 0}code{background:#f3f3f3;padding:0 .2rem}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>Beholder evaluation: {html.escape(str(metrics['model']))}</title>"
        f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def write_report(metrics: dict[str, Any], out_dir: Union[str, Path], plot_files: dict[str, str]) -> None:
    """Write report.md and report.html into ``out_dir`` (next to the PNGs they embed)."""
    out_dir = Path(out_dir)
    (out_dir / "report.md").write_text(render_markdown(metrics, plot_files), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(metrics, plot_files), encoding="utf-8")


def published_results_table() -> list[dict[str, Any]]:
    """:data:`PUBLISHED_RESULTS` as plain dicts (for JSON or pandas)."""
    return [asdict(r) for r in PUBLISHED_RESULTS]

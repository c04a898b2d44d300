"""The evaluation's PNG plots: mean histograms with zoomed tails, scatter, 2x2 table, error per bin,
and predicted against true distributions of example images from each tail and the middle.

matplotlib's object-oriented API without pyplot: no global backend state, safe in threads and
servers. PNGs carry no "Software" entry, so they depend only on the data and matplotlib's version,
and are written atomically like every other output.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from beholder.files import PathLike, atomic_write
from beholder.metrics import TAIL_RANGES, TAIL_THRESHOLDS, tail_masks
from beholder.ratings import NUM_BINS, PROBABILITY_COLUMNS, SCORES, THRESHOLD

PLOT_FILES = {
    "distribution": "mean_distribution.png",
    "scatter": "scatter.png",
    "confusion": "confusion.png",
    "error_by_bin": "error_by_bin.png",
    "examples": "example_distributions.png",
}
#: Example images per range (lower tail, middle, upper tail) in the distributions plot.
EXAMPLES_PER_RANGE = 4


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", metadata={"Software": None}))


def plot_mean_distributions(
    true_mean: np.ndarray,
    pred_mean: np.ndarray,
    path: PathLike,
    thresholds: tuple[float, float] = TAIL_THRESHOLDS,
) -> None:
    """Histograms of true and predicted means: full range, and zoomed on the lower and upper tails."""
    low, high = thresholds
    edges = np.linspace(1.0, 10.0, 91)  # bins of 0.1
    true_counts, _ = np.histogram(true_mean, edges)
    pred_counts, _ = np.histogram(pred_mean, edges)
    figure = _figure(13, 3.8)
    axes = figure.subplots(1, 3)
    windows = [
        ("all mean scores", 1.0, 10.0),
        (f"lower tail (< {low:g})", 1.0, low),
        (f"upper tail (> {high:g})", high, 10.0),
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


def plot_scatter(true_mean: np.ndarray, pred_mean: np.ndarray, path: PathLike) -> None:
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


def plot_confusion(counts: dict[str, int], path: PathLike) -> None:
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


def plot_error_by_bin(rows: list[dict[str, Any]], path: PathLike) -> None:
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


def pick_examples(
    true_mean: np.ndarray,
    thresholds: tuple[float, float] = TAIL_THRESHOLDS,
    per_range: int = EXAMPLES_PER_RANGE,
) -> dict[str, list[int]]:
    """Row indices of up to ``per_range`` images per range, spread evenly over its true means.

    Deterministic (sorted by true mean, then by row), so that two runs plot the same images.
    """
    true_mean = np.asarray(true_mean, dtype=np.float64)
    picked: dict[str, list[int]] = {}
    for name, mask in tail_masks(true_mean, thresholds).items():
        rows = np.flatnonzero(mask)
        rows = rows[np.argsort(true_mean[rows], kind="stable")]
        if len(rows) > per_range:
            rows = rows[np.round(np.linspace(0, len(rows) - 1, per_range)).astype(int)]
        picked[name] = [int(row) for row in rows]
    return picked


def plot_example_distributions(
    image_ids: list[str],
    true_mean: np.ndarray,
    pred_p: np.ndarray,
    path: PathLike,
    *,
    true_p: np.ndarray | None = None,
    thresholds: tuple[float, float] = TAIL_THRESHOLDS,
    per_range: int = EXAMPLES_PER_RANGE,
) -> dict[str, list[str]]:
    """One row per range (lower tail, middle, upper tail) of predicted vs true 10-bin distributions.

    Without true distributions (labels with mean scores only) the true mean is drawn as a line.
    Returns the image ids shown, per range.
    """
    low, high = thresholds
    titles = {
        "lower": f"lower tail (true mean < {low:g})",
        "middle": "middle",
        "upper": f"upper tail (> {high:g})",
    }
    picked = pick_examples(true_mean, thresholds, per_range)
    figure = _figure(3.1 * per_range, 2.6 * len(TAIL_RANGES))
    grid = figure.subplots(len(TAIL_RANGES), per_range, squeeze=False, sharey=True)
    for axes, name in zip(grid, TAIL_RANGES):
        axes[0].set_ylabel(f"{titles[name]}\nprobability")
        for column, ax in enumerate(axes):
            ax.set_xticks(SCORES)
            ax.set_xlim(0.4, NUM_BINS + 0.6)
            if column >= len(picked[name]):
                if column == 0:  # an empty range keeps one axes, to say so beside its label
                    ax.text(
                        0.5, 0.5, "no images in this range", transform=ax.transAxes, ha="center", color="grey"
                    )
                else:
                    ax.set_visible(False)
                continue
            row = picked[name][column]
            predicted_mean = float(pred_p[row] @ SCORES)
            offset = 0.0
            if true_p is not None:  # side by side; alone, the predicted bars are centred
                ax.bar(SCORES - 0.2, true_p[row], width=0.4, color="tab:blue", label="true (human ratings)")
                offset = 0.2
            ax.bar(SCORES + offset, pred_p[row], width=0.4, color="tab:orange", label="predicted")
            ax.axvline(true_mean[row], color="tab:blue", linestyle="--", linewidth=1, label="true mean")
            ax.axvline(
                predicted_mean, color="tab:orange", linestyle=":", linewidth=1.2, label="predicted mean"
            )
            ax.set_title(
                f"{image_ids[row]}: true {true_mean[row]:.2f}, predicted {predicted_mean:.2f}", fontsize=9
            )
    grid[-1][0].set_xlabel("score")
    handles, labels = grid[0][0].get_legend_handles_labels()
    for axes in grid:  # the first row may be empty; take the legend from any filled axes
        for ax in axes:
            if not handles:
                handles, labels = ax.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside upper center", ncols=len(handles))
    _save(figure, Path(path))
    return {name: [image_ids[row] for row in rows] for name, rows in picked.items()}


def write_plots(
    predictions: Any,
    out_dir: PathLike,
    *,
    confusion: dict[str, int],
    error_rows: list[dict[str, Any]],
    true_p: np.ndarray | None = None,
    thresholds: tuple[float, float] = TAIL_THRESHOLDS,
) -> dict[str, str]:
    """Write the plots of :data:`PLOT_FILES` into ``out_dir``; returns {kind: file name}.

    ``predictions`` is the frame of :func:`beholder.evaluation.run.predict_labels`.
    """
    out_dir = Path(out_dir)
    true_mean = predictions["true_mean"].to_numpy(dtype=np.float64)
    pred_mean = predictions["pred_mean"].to_numpy(dtype=np.float64)
    plot_mean_distributions(true_mean, pred_mean, out_dir / PLOT_FILES["distribution"], thresholds)
    plot_scatter(true_mean, pred_mean, out_dir / PLOT_FILES["scatter"])
    plot_confusion(confusion, out_dir / PLOT_FILES["confusion"])
    plot_error_by_bin(error_rows, out_dir / PLOT_FILES["error_by_bin"])
    plot_example_distributions(
        [str(i) for i in predictions["image_id"]],
        true_mean,
        predictions[PROBABILITY_COLUMNS].to_numpy(dtype=np.float64),
        out_dir / PLOT_FILES["examples"],
        true_p=true_p,
        thresholds=thresholds,
    )
    return dict(PLOT_FILES)

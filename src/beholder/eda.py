"""Exploratory statistics and plots of a prepared AVA directory (no torch).

``eda(prepared_dir, out_dir)`` writes ``report.html`` (self-contained HTML; its PNG plots sit beside
it), the PNGs and ``summary.json``. Descriptive statistics follow ``pandas.describe``: ``std`` is
the sample standard deviation (ddof=1) and quartiles interpolate linearly.

Plots are drawn on :class:`matplotlib.figure.Figure` objects directly (Agg canvas), so nothing here
touches pyplot's global state or the process-wide backend.

Slightly over 500 lines: the statistics, the plots that show them and the report that lays them
out are one report, read together.
"""

from __future__ import annotations

import datetime as _dt
import html
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from beholder import __version__
from beholder.data.manifest import PREPARE_SUMMARY_FILE, SPLITS, load_manifest
from beholder.data.prepare import REJECTED_FILE
from beholder.errors import ConfigError, ImageLoadError
from beholder.files import PathLike, atomic_write, atomic_write_text, write_json
from beholder.imageio import open_image
from beholder.ratings import THRESHOLD, VOTE_COLUMNS

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"

#: What the seed reported on the full AVA set, shown beside our numbers for comparison.
SEED_REFERENCE = {
    "n_votes": {"min": 78, "mean": 210, "max": 549},
    "mean_rating": {
        "mean": 5.38,
        "std": 0.73,
        "min": 1.81,
        "q25": 4.91,
        "q50": 5.39,
        "q75": 5.87,
        "max": 8.60,
    },
}

_STAT_KEYS = ("count", "mean", "std", "min", "q25", "q50", "q75", "max")
_DPI = 100


def describe_column(values: Sequence[float] | np.ndarray | pd.Series) -> dict[str, float | None]:
    """count, mean, sample std (ddof=1), min, quartiles (linear) and max of ``values`` (NaNs dropped).

    Statistics that do not exist (std of one value, anything of none) are None.
    """
    data = np.asarray(values, dtype=np.float64)
    data = data[~np.isnan(data)]
    if data.size == 0:
        return {"count": 0, **{key: None for key in _STAT_KEYS[1:]}}
    q25, q50, q75 = np.percentile(data, [25, 50, 75])
    return {
        "count": int(data.size),
        "mean": float(data.mean()),
        "std": float(data.std(ddof=1)) if data.size > 1 else None,
        "min": float(data.min()),
        "q25": float(q25),
        "q50": float(q50),
        "q75": float(q75),
        "max": float(data.max()),
    }


def _share(mask: np.ndarray, total: int) -> dict[str, Any]:
    count = int(mask.sum())
    return {"count": count, "share": count / total if total else None}


def rating_ranges(
    means: np.ndarray | pd.Series, central: tuple[float, float] = (4.0, 7.0)
) -> dict[str, Any]:
    """Counts and shares of mean ratings below, inside (inclusive) and above ``central``, and above 5."""
    low, high = central
    values = np.asarray(means, dtype=np.float64)
    total = int(values.size)
    below, above = values < low, values > high
    return {
        "central_range": [float(low), float(high)],
        "below": _share(below, total),
        "central": _share(~below & ~above, total),
        "above": _share(above, total),
        "outer": _share(below | above, total),
        # AVA's binary "high quality" label (Murray et al. 2012; NIMA's accuracy at 5).
        "above_5": _share(values > THRESHOLD, total),
    }


def summarize_manifest(
    manifest: pd.DataFrame, *, central: tuple[float, float] = (4.0, 7.0), top_k: int = 16
) -> dict[str, Any]:
    """The statistics of ``summary.json`` for a manifest DataFrame (see :func:`eda`)."""
    ordered_best, ordered_worst = _ranked(manifest, top_k)
    return {
        "n_images": len(manifest),
        "splits": {name: int((manifest["split"] == name).sum()) for name in SPLITS},
        "n_votes": describe_column(manifest["n_votes"]),
        "mean_rating": describe_column(manifest["mean"]),
        "std_rating": describe_column(manifest["std"]),
        "file_bytes": describe_column(manifest["file_bytes"]),
        "width": describe_column(manifest["width"]),
        "height": describe_column(manifest["height"]),
        "aspect_ratio": describe_column(manifest["aspect_ratio"]),
        "mean_rating_by_split": {
            name: describe_column(manifest.loc[manifest["split"] == name, "mean"]) for name in SPLITS
        },
        "modes": {str(k): int(v) for k, v in manifest["mode"].value_counts().items()},
        "rating_ranges": rating_ranges(manifest["mean"], central),
        "best": _id_list(ordered_best),
        "worst": _id_list(ordered_worst),
    }


def _ranked(manifest: pd.DataFrame, top_k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    # Ties: more votes first (a surer mean), then the smaller id, so the grids are reproducible.
    best = manifest.sort_values(["mean", "n_votes", "image_id"], ascending=[False, False, True]).head(top_k)
    worst = manifest.sort_values(["mean", "n_votes", "image_id"], ascending=[True, False, True]).head(top_k)
    return best, worst


def _plain(value: Any) -> Any:
    """A manifest value as plain JSON: AVA ids and counts as int, a user's ids as text, NaN as None."""
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return None  # n_votes of ratings given as a distribution or a mean: unknown
    return int(value) if float(value).is_integer() else float(value)


def _votes_text(n_votes: Any) -> str:
    return "" if pd.isna(n_votes) else f", {int(n_votes)} votes"


def _id_list(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {"image_id": _plain(row.image_id), "mean": float(row.mean), "n_votes": _plain(row.n_votes)}
        for row in frame.itertuples(index=False)
    ]


# --------------------------------------------------------------------------------------------------
# Plots


def _save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=_DPI))


def _hist_with_box(
    values: np.ndarray, path: Path, *, xlabel: str, title: str, marks: Sequence[float] = ()
) -> None:
    figure = Figure(figsize=(7, 4.5))
    if len(values) == 0:  # e.g. no vote counts in a manifest of mean ratings
        figure.text(0.5, 0.5, f"{title}: no values", ha="center", va="center")
        _save(figure, path)
        return
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    top.hist(values, bins=min(60, max(10, int(math.sqrt(len(values))))), color="#4c72b0", edgecolor="white")
    for mark in marks:
        top.axvline(mark, color="#c44e52", linestyle="--", linewidth=1)
    top.set_ylabel("images")
    top.set_title(title)
    box = {"widths": 0.6, "showfliers": True, "flierprops": {"markersize": 2}}
    try:
        bottom.boxplot(values, orientation="horizontal", **box)  # matplotlib >= 3.10
    except TypeError:
        bottom.boxplot(values, vert=False, **box)
    bottom.set_yticks([])
    bottom.set_xlabel(xlabel)
    _save(figure, path)


def _std_vs_mean(manifest: pd.DataFrame, path: Path) -> None:
    figure = Figure(figsize=(6.5, 5))
    axes = figure.subplots()
    mean, std = manifest["mean"].to_numpy(), manifest["std"].to_numpy()
    _scatter(figure, axes, mean, std, gridsize=60, size=8, color="#4c72b0")
    bins = np.arange(1.0, 10.25, 0.25)
    which = np.digitize(mean, bins)
    centres, medians = [], []
    for b in np.unique(which):
        members = std[which == b]
        if members.size >= 5:
            centres.append(mean[which == b].mean())
            medians.append(np.median(members))
    if centres:
        axes.plot(centres, medians, color="#c44e52", linewidth=2, label="median std per 0.25 of mean")
        axes.legend(loc="upper right")
    axes.set_xlabel("mean rating")
    axes.set_ylabel("std of ratings")
    axes.set_title("Disagreement against mean rating")
    _save(figure, path)


def _scatter(
    figure: Figure, axes: Any, x: np.ndarray, y: np.ndarray, *, gridsize: int, size: float, color: str
) -> None:
    """A scatter plot of ``y`` against ``x``; above 2000 points a log-density hexbin, which stays legible."""
    if len(x) > 2000:
        hexes = axes.hexbin(x, y, gridsize=gridsize, bins="log", cmap="viridis", mincnt=1)
        figure.colorbar(hexes, ax=axes, label="images (log)")
    else:
        axes.scatter(x, y, s=size, alpha=0.6, color=color, edgecolors="none")


def _mean_by_split(manifest: pd.DataFrame, path: Path) -> None:
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    bins = np.linspace(1, 10, 55)
    for name in SPLITS:
        values = manifest.loc[manifest["split"] == name, "mean"].to_numpy()
        if values.size:
            axes.hist(
                values,
                bins=bins,
                density=True,
                histtype="step",
                linewidth=1.5,
                label=f"{name} ({values.size})",
            )
    axes.set_xlabel("mean rating")
    axes.set_ylabel("density")
    axes.set_title("Mean rating per split")
    axes.legend()
    _save(figure, path)


def _technical(manifest: pd.DataFrame, out_dir: Path) -> dict[str, str]:
    kib = manifest["file_bytes"].to_numpy() / 1024
    _histogram(kib, out_dir / "file_size.png", color="#55a868", xlabel="file size (KiB)", title="File size")

    figure = Figure(figsize=(6, 5))
    axes = figure.subplots()
    width, height = manifest["width"].to_numpy(), manifest["height"].to_numpy()
    _scatter(figure, axes, width, height, gridsize=50, size=10, color="#55a868")
    axes.set_xlabel("width (px)")
    axes.set_ylabel("height (px)")
    axes.set_title("Resolution")
    _save(figure, out_dir / "resolution.png")

    _histogram(
        manifest["aspect_ratio"].to_numpy(),
        out_dir / "aspect_ratio.png",
        color="#8172b2",
        xlabel="aspect ratio (width / height)",
        title="Aspect ratio",
        mark=1.0,  # square images
    )
    return {name: f"{name}.png" for name in ("file_size", "resolution", "aspect_ratio")}


def _histogram(
    values: np.ndarray, path: Path, *, color: str, xlabel: str, title: str, mark: float | None = None
) -> None:
    """Images per bin of ``values`` (about sqrt(n) bins, 10 to 60), with a dotted line at ``mark``."""
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    axes.hist(values, bins=min(60, max(10, int(math.sqrt(len(values))))), color=color, edgecolor="white")
    if mark is not None:
        axes.axvline(mark, color="grey", linestyle=":", linewidth=1)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("images")
    axes.set_title(title)
    _save(figure, path)


def _thumbnail(row: Any, side: int = 192) -> np.ndarray | None:
    # The source keeps the true aspect ratio; the square cache is the fallback.
    for path in (row.source_path, row.cache_path):
        try:
            image = open_image(path, draft_size=(side, side))
        except ImageLoadError:
            continue
        image.thumbnail((side, side))
        return np.asarray(image)
    return None


def _grid(frame: pd.DataFrame, path: Path, title: str) -> None:
    count = max(1, len(frame))
    columns = min(count, max(1, math.ceil(math.sqrt(count))))
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(2.4 * columns, 2.6 * rows + 0.4))
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, row in zip(axes, frame.itertuples(index=False)):
        pixels = _thumbnail(row)
        if pixels is None:
            ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
        else:
            ax.imshow(pixels)
        ax.set_title(f"{row.image_id}\nmean {row.mean:.2f}{_votes_text(row.n_votes)}", fontsize=8)
    figure.suptitle(title)
    _save(figure, path)


# --------------------------------------------------------------------------------------------------
# Report

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { padding: 0.25em 0.7em; text-align: right; border-bottom: 1px solid #eee; }
th { background: #f6f6f6; } .wide { overflow-x: auto; } img { max-width: 100%; margin: 0.5em 0; }
.note { color: #666; font-size: 0.9em; }
"""


def _stats_table(stats: dict[str, dict[str, Any]]) -> str:
    def cell(key: str, value: Any) -> str:
        if value is None:
            return ""
        return f"{value:,}" if key == "count" else f"{value:,.3f}"

    frame = pd.DataFrame(
        {name: [cell(key, column.get(key)) for key in _STAT_KEYS] for name, column in stats.items()},
        index=["count", "mean", "std", "min", "25%", "50%", "75%", "max"],
    )
    return frame.to_html(border=0)


def _count_table(counts: dict[str, int], label: str) -> str:
    total = sum(counts.values())
    frame = pd.DataFrame(
        {"images": list(counts.values()), "share": [c / total if total else 0.0 for c in counts.values()]},
        index=pd.Index(list(counts), name=label),
    )
    return frame.to_html(border=0, formatters={"share": "{:.1%}".format})


def _img(name: str, alt: str) -> str:
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def eda(
    data_dir: PathLike,
    out_dir: PathLike,
    *,
    top_k: int = 16,
    sample_rows: int = 10,
    central: tuple[float, float] = (4.0, 7.0),
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``report.html``, its PNG plots and ``summary.json`` for a prepared directory.

    Args:
        data_dir: the directory ``prepare`` wrote.
        out_dir: report directory (created).
        top_k: images in each of the best- and worst-rated grids.
        sample_rows: rows in the sample table (drawn with ``seed``).
        central: the central range of mean ratings; the rest is the outer range.

    Returns:
        the dict written to ``summary.json``.

    Raises:
        ConfigError: no manifest, an empty one, or bad options.
    """
    low, high = central
    if not low < high:
        raise ConfigError(f"the central range needs LOW < HIGH, got {low} {high}")
    if top_k < 1 or sample_rows < 0:
        raise ConfigError("top_k must be at least 1 and sample_rows at least 0")
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    if manifest.empty:
        raise ConfigError(f"{data_dir / 'manifest.parquet'} has no rows: nothing to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    summary: dict[str, Any] = {
        "beholder_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "data_dir": str(data_dir.absolute()),
        **summarize_manifest(manifest, central=(low, high), top_k=top_k),
    }
    rejected_path = data_dir / REJECTED_FILE
    if rejected_path.is_file():
        reasons = pd.read_csv(rejected_path)["reason"].value_counts()
        summary["rejected"] = {str(k): int(v) for k, v in reasons.items()}
    summary["reference_seed_full_ava"] = SEED_REFERENCE

    plots = {"n_votes": "n_votes.png", "mean_rating": "mean_rating.png", "std_vs_mean": "std_vs_mean.png"}
    _hist_with_box(
        manifest["n_votes"].dropna().to_numpy(),  # none for ratings given as distributions or means
        out / plots["n_votes"],
        xlabel="number of ratings",
        title="Ratings per image",
    )
    _hist_with_box(
        manifest["mean"].to_numpy(),
        out / plots["mean_rating"],
        xlabel="mean rating (1-10)",
        title="Mean rating per image",
        marks=(low, high),
    )
    _std_vs_mean(manifest, out / plots["std_vs_mean"])
    plots["mean_by_split"] = "mean_by_split.png"
    _mean_by_split(manifest, out / plots["mean_by_split"])
    plots.update(_technical(manifest, out))
    best, worst = _ranked(manifest, top_k)
    plots["best"], plots["worst"] = "best.png", "worst.png"
    _grid(best, out / plots["best"], f"Best-rated {len(best)}")
    _grid(worst, out / plots["worst"], f"Worst-rated {len(worst)}")
    summary["plots"] = plots

    _write_report(out / REPORT_FILE, manifest, summary, data_dir, sample_rows, seed)
    write_json(out / SUMMARY_FILE, summary)
    log.info("wrote %s and %s", out / REPORT_FILE, out / SUMMARY_FILE)
    return summary


def _write_report(
    path: Path, manifest: pd.DataFrame, summary: dict[str, Any], data_dir: Path, sample_rows: int, seed: int
) -> None:
    plots = summary["plots"]
    ranges = summary["rating_ranges"]
    low, high = ranges["central_range"]
    reference = pd.DataFrame(SEED_REFERENCE).reindex(["min", "q25", "q50", "q75", "max", "mean", "std"])
    reference.index = ["min", "25%", "50%", "75%", "max", "mean", "std"]
    range_rows = {
        f"below {low:g}": ranges["below"],
        f"central [{low:g}, {high:g}]": ranges["central"],
        f"above {high:g}": ranges["above"],
        "outer (below + above)": ranges["outer"],
        "above 5 (AVA 'high quality')": ranges["above_5"],
    }
    range_table = pd.DataFrame(
        {
            "images": [r["count"] for r in range_rows.values()],
            "share": [r["share"] for r in range_rows.values()],
        },
        index=pd.Index(list(range_rows), name="mean rating"),
    ).to_html(border=0, formatters={"share": "{:.1%}".format})
    sample_columns = [
        "image_id", "split", *VOTE_COLUMNS, "n_votes", "mean", "std", "tag1", "tag2", "challenge_id",
        "width", "height", "aspect_ratio", "file_bytes", "mode",
    ]  # fmt: skip
    sample = manifest.sample(n=min(sample_rows, len(manifest)), random_state=seed).sort_values("image_id")
    sample_table = sample[sample_columns].to_html(border=0, index=False, float_format=lambda v: f"{v:.3f}")

    prepare_note = ""
    prepare_json = data_dir / PREPARE_SUMMARY_FILE
    if prepare_json.is_file():
        prepare_note = f"<p class='note'>Cleaning summary: {html.escape(str(prepare_json.absolute()))}</p>"
    rejected_html = (
        _count_table(summary["rejected"], "reason")
        if summary.get("rejected")
        else "<p>No rejections recorded.</p>"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>AVA data report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>AVA data report</h1>",
        f"<p class='note'>{summary['n_images']:,} usable images from {html.escape(summary['data_dir'])}; "
        f"beholder {html.escape(__version__)}, {html.escape(summary['created'])}.</p>",
        "<h2>Splits and cleaning</h2>",
        _count_table(summary["splits"], "split"),
        "<h3>Rejected rows and images</h3>",
        rejected_html,
        prepare_note,
        "<h2>Number of ratings and mean rating</h2>",
        _stats_table(
            {
                "number of ratings": summary["n_votes"],
                "mean rating": summary["mean_rating"],
                "std of ratings": summary["std_rating"],
            }
        ),
        "<p class='note'>std is the sample standard deviation; quartiles interpolate linearly.</p>",
        "<h3>For reference: the seed on full AVA</h3>",
        reference.to_html(border=0, na_rep="", float_format=lambda v: f"{v:g}"),
        _img(plots["n_votes"], "histogram and boxplot of the number of ratings"),
        _img(plots["mean_rating"], "histogram and boxplot of the mean rating"),
        _img(plots["mean_by_split"], "mean rating per split"),
        _stats_table(summary["mean_rating_by_split"]),
        "<h2>Central and outer rating ranges</h2>",
        range_table,
        "<h2>Standard deviation against mean</h2>",
        _img(plots["std_vs_mean"], "std of ratings against mean rating"),
        "<h2>Technical properties</h2>",
        _stats_table(
            {
                "file bytes": summary["file_bytes"],
                "width": summary["width"],
                "height": summary["height"],
                "aspect ratio": summary["aspect_ratio"],
            }
        ),
        _count_table(summary["modes"], "image mode"),
        _img(plots["file_size"], "distribution of file sizes"),
        _img(plots["resolution"], "width against height"),
        _img(plots["aspect_ratio"], "distribution of aspect ratios"),
        "<h2>Sample rows</h2>",
        f"<div class='wide'>{sample_table}</div>",
        "<h2>Best-rated images</h2>",
        _img(plots["best"], "grid of the best-rated images"),
        "<h2>Worst-rated images</h2>",
        _img(plots["worst"], "grid of the worst-rated images"),
        "</body></html>",
    ]
    atomic_write_text(path, "\n".join(parts) + "\n")

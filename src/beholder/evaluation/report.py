"""report.md and report.html of ``beholder evaluate``: the run beside published NIMA results.

Both are rendered from one list of (kind, content) pieces (:func:`report_sections`), so the
Markdown and the HTML always say the same thing. Every metric appears exactly as metrics.json
writes it, so the report can be checked against the file.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from beholder.files import PathLike, atomic_write_text
from beholder.metrics import SUMMARY_KEYS, TAIL_RANGES
from beholder.ratings import THRESHOLD


@dataclass(frozen=True)
class PublishedResult:
    """One published figure set on AVA. ``accuracy`` is in percent; None where not reported."""

    method: str
    source: str
    test_set: str
    accuracy: float | None = None
    lcc_mean: float | None = None
    srcc_mean: float | None = None
    emd: float | None = None


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


METRIC_TITLES = {
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


def _short(value: float | None, digits: int = 3, percent: bool = False) -> str:
    if value is None:
        return "—"
    return f"{100 * value:.2f}%" if percent else f"{value:.{digits}f}"


def comparison_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows of the comparison table: this model first, then :data:`PUBLISHED_RESULTS`."""
    if metrics.get("split"):
        test_set = f"`{metrics['data']}`, split {metrics['split']}"
        if metrics.get("ava_test_list"):
            test_set += " (official AVA test list, images at hand)"
        elif metrics["split"] == "test":
            test_set += " (the prepared set's own test split, not the AVA test list)"
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


def _facts(metrics: dict[str, Any]) -> list[str]:
    pre = metrics["preprocessing"]
    facts = [
        f"model: `{metrics['model']}`",
        f"data: `{metrics['data']}`" + (f", split `{metrics['split']}`" if metrics.get("split") else ""),
        f"images evaluated: {metrics['n']}; could not be scored (excluded, see failures.csv): {metrics['n_failed']}",
        f"preprocessing (declared by the model): resize to {pre['resize']} ({pre['interpolation']}), "
        + (f"centre crop {pre['crop']}" if pre["crop"] else "no crop")
        + "; no random crop or flip",
    ]
    started_from = _started_from(metrics.get("provenance"))
    if started_from:
        facts.append(f"fine-tuned from: `{started_from}`")
    facts.append(f"beholder {metrics['beholder_version']}")
    return facts


#: Provenance keys that name the model a fine-tuned checkpoint started from.
STARTED_FROM_KEYS = ("init", "started_from", "fine_tuned_from")


def _started_from(provenance: dict[str, Any] | None) -> str | None:
    """The model a checkpoint was fine-tuned from, as text, if its provenance says."""
    for key in STARTED_FROM_KEYS:
        value = (provenance or {}).get(key)
        if isinstance(value, dict):  # e.g. {"model": NAME} or {"checkpoint": PATH, "sha256": ...}
            value = next((value[k] for k in ("model", "name", "checkpoint", "path") if value.get(k)), None)
        if value:
            return str(value)
    return None


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Nested provenance as (dotted key, value text) rows."""
    if isinstance(value, dict):
        return [row for key, item in value.items() for row in _flatten(item, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), "—" if value is None else str(value))]


def tail_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """Rows of the overall-and-tails table: all images, then the lower tail, middle, upper tail."""
    low, high = metrics["tail_thresholds"]
    ranges = {"lower": f"< {low:g}", "middle": f"{low:g} to {high:g}", "upper": f"> {high:g}"}
    names = {"lower": "lower tail", "middle": "middle", "upper": "upper tail"}
    rows = [["**all images**", "1 to 10", str(metrics["n"]), *_tail_cells(metrics)]]
    for name in TAIL_RANGES:
        values = metrics["tails"][name]
        rows.append([names[name], ranges[name], str(values["n"]), *_tail_cells(values)])
    return rows


def _tail_cells(values: dict[str, Any]) -> list[str]:
    return [_short(values["emd"]), _short(values["mae_mean"]), _short(values["accuracy"], percent=True)]


TAIL_HEADER = ["images", "true mean", "n", "EMD", "MAE of the mean", "accuracy"]


def _tables(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """The overall and per-tail figures, the exact metrics, notes, the 2x2 table, error per bin."""
    pieces: list[tuple[str, Any]] = [
        ("h2", "Tails: overall figures beside the lower tail, the middle and the upper tail"),
        ("table", (TAIL_HEADER, tail_rows(metrics))),
        ("h2", "Metrics (exactly as in metrics.json)"),
        (
            "table",
            (["key", "metric", "value"], [[k, METRIC_TITLES[k], _exact(metrics[k])] for k in SUMMARY_KEYS]),
        ),
    ]
    if metrics.get("notes"):
        pieces.append(("h2", "Undefined metrics (null)"))
        pieces.append(("list", [f"`{key}`: {reason}" for key, reason in metrics["notes"].items()]))
    c = metrics["confusion"]
    pieces.append(("h2", f"2×2 table at threshold {THRESHOLD:g}"))
    header = ["", f"predicted ≤ {THRESHOLD:g}", f"predicted > {THRESHOLD:g}"]
    rows = [
        [f"true ≤ {THRESHOLD:g}", str(c["true_low_pred_low"]), str(c["true_low_pred_high"])],
        [f"true > {THRESHOLD:g}", str(c["true_high_pred_low"]), str(c["true_high_pred_high"])],
    ]
    pieces.append(("table", (header, rows)))
    pieces.append(("h2", "Absolute error per true-rating bin"))
    rows = [[r["bin"], str(r["n"]), _short(r["mae"]), _short(r["bias"])] for r in metrics["error_by_bin"]]
    pieces.append(("table", (["true mean", "n", "MAE", "bias (pred - true)"], rows)))
    return pieces


def _plots(metrics: dict[str, Any], plot_files: dict[str, str]) -> list[tuple[str, Any]]:
    low, high = metrics["tail_thresholds"]
    examples = metrics.get("examples") or {}
    shown = "; ".join(f"{name}: {', '.join(ids) or 'none'}" for name, ids in examples.items())
    captions = {
        "distribution": f"Distribution of predicted and true means: all, lower tail (< {low:g}), upper tail (> {high:g})",
        "scatter": "True against predicted mean, with the identity line",
        "confusion": f"2×2 table at threshold {THRESHOLD:g}",
        "error_by_bin": "Absolute error of the mean per true-rating bin",
        "examples": "Predicted (orange) and true (blue) rating distributions of example images from the lower "
        f"tail, the middle and the upper tail ({shown})",
    }
    pieces: list[tuple[str, Any]] = [("h2", "Plots")]
    pieces += [("img", (captions[kind], name)) for kind, name in plot_files.items()]
    return pieces


def report_sections(metrics: dict[str, Any], plot_files: dict[str, str]) -> list[tuple[str, Any]]:
    """The report as (kind, content) pieces shared by the Markdown and HTML writers.

    kinds: h1, h2, p, list (of str), table ((header, rows)), img ((caption, file name)).
    """
    pieces: list[tuple[str, Any]] = [("h1", "Beholder evaluation"), ("list", _facts(metrics))]
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
    pieces += _tables(metrics)
    if metrics.get("provenance"):
        pieces.append(("h2", "Provenance of the model (from its checkpoint)"))
        pieces.append(("table", (["key", "value"], [list(row) for row in _flatten(metrics["provenance"])])))
    if plot_files:
        pieces += _plots(metrics, plot_files)
    return pieces


def render_markdown(metrics: dict[str, Any], plot_files: dict[str, str]) -> str:
    """report.md text."""
    lines: list[str] = []
    for kind, content in report_sections(metrics, plot_files):
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
    for kind, content in report_sections(metrics, plot_files):
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


def write_report(metrics: dict[str, Any], out_dir: PathLike, plot_files: dict[str, str]) -> None:
    """Write report.md and report.html into ``out_dir`` (next to the PNGs they embed)."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.md", render_markdown(metrics, plot_files))
    atomic_write_text(out_dir / "report.html", render_html(metrics, plot_files))


def published_results_table() -> list[dict[str, Any]]:
    """:data:`PUBLISHED_RESULTS` as plain dicts (for JSON or pandas)."""
    return [asdict(r) for r in PUBLISHED_RESULTS]

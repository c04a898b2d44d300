"""The cull report: ``index.html`` (offline, no server, no script), ``cull.json``, ``cull.csv``, ``thumbs/``.

The page is rendered here, in Python, so that it reads the same from a file, from a browser with
scripts off, or from a mail attachment: groups in shoot order, the pick highlighted, each photo with
its thumbnail, score, stars and a small inline-SVG chart of its rating distribution. The look is
the service page's (``static/index.html``): the same colours, fonts and cards.
"""

from __future__ import annotations

import csv
import html
import io
import logging
from pathlib import Path
from string import Template

from beholder.cull.run import CulledPhoto, CullResult
from beholder.files import PathLike, atomic_write_bytes, atomic_write_text, write_json
from beholder.pages import page_text

log = logging.getLogger(__name__)

CSV_COLUMNS = [
    "path", "group", "pick", "stars", "mean", "std", "percentile", "shoot_percentile",
    "time", "time_source", "error",
]  # fmt: skip


def _template() -> Template:
    text = page_text("cull", "report.html")
    return Template(text)


def thumbnail_name(index: int) -> str:
    return f"thumbs/{index + 1:05d}.jpg"


def distribution_svg(distribution: list[float], mean: float) -> str:
    """A 10-bar chart of the rating distribution with a dashed line at the mean (the web page's chart)."""
    width, height, top, base = 220, 64, 4, 50
    step = width / len(distribution)
    peak = max(distribution) or 1.0
    label = ", ".join(f"{100 * p:.1f}%" for p in distribution)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="rating distribution 1 to 10: {label}">'
    ]
    for i, p in enumerate(distribution):
        bar = max(1.0, (base - top) * p / peak)
        hue = i / 9 * 130  # red (1) to green (10), as on the web page
        parts.append(
            f'<rect class="bar" x="{i * step + 2:.1f}" y="{base - bar:.1f}" width="{step - 4:.1f}" '
            f'height="{bar:.1f}" fill="hsl({hue:.0f}, 62%, 48%)" data-score="{i + 1}" data-probability="{p:.6f}">'
            f"<title>score {i + 1}: {100 * p:.1f}%</title></rect>"
            f'<text x="{i * step + step / 2:.1f}" y="{height - 3}" text-anchor="middle">{i + 1}</text>'
        )
    x = (mean - 0.5) * step
    parts.append(
        f'<line class="mean-marker" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{base}" '
        'stroke="#101828" stroke-dasharray="3 2"/></svg>'
    )
    return "".join(parts)


def ordinal(number: float) -> str:
    """1 -> '1st', 22 -> '22nd', 13 -> '13th'."""
    value = round(number)
    suffix = "th" if 10 <= value % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(value % 10, "th")
    return f"{value}{suffix}"


def _stars(count: int) -> str:
    return f'<span class="stars" title="{count} of 5 stars">{"★" * count}<span class="off">{"★" * (5 - count)}</span></span>'


def _card(photo: CulledPhoto, index: int, thumbnails: bool) -> str:
    name = html.escape(Path(photo.path).name)
    title = html.escape(photo.path)
    if not photo.ok:
        return (
            f'<article class="card error" data-path="{title}"><div class="placeholder">⚠</div>'
            f'<div class="body"><div class="name" title="{title}">{name}</div>'
            f'<div class="message">{html.escape(photo.error or "")}</div></div></article>'
        )
    kind = "pick" if photo.pick else "alternate"
    image = (
        f'<img src="{thumbnail_name(index)}" alt="{name}" loading="lazy">'
        if thumbnails and photo.thumbnail
        else '<div class="placeholder"></div>'
    )
    return (
        f'<article class="card {kind}" data-path="{title}" data-mean="{photo.mean:.6f}" '
        f'data-stars="{photo.stars}" data-group="{photo.group}">{image}'
        f'<span class="badge">{"pick" if photo.pick else "alternate"}</span>'
        f'<div class="body"><div class="name" title="{title}">{name}</div>'
        f'<div class="score"><span class="mean">{photo.mean:.2f}</span>'
        f'<span class="std">± {photo.std:.2f}</span>{_stars(photo.stars or 0)}</div>'
        f'<div class="meta">{ordinal(photo.ava_percentile)} percentile of AVA · {html.escape(photo.time.text()[11:])}</div>'
        f"{distribution_svg(photo.distribution or [0.1] * 10, photo.mean)}</div></article>"
    )


def render_html(result: CullResult, *, title: str = "", thumbnails: bool = True) -> str:
    sections = []
    for number, group in enumerate(result.groups, start=1):
        first = result.photos[group[0]]
        size = f"{len(group)} frame{'s' if len(group) != 1 else ''}"
        cards = "".join(_card(result.photos[i], i, thumbnails) for i in group)
        sections.append(
            f'<section class="group" id="group-{number}" data-size="{len(group)}">'
            f'<h2>Group {number} · {size}<span class="when">{html.escape(first.time.text())}</span></h2>'
            f'<div class="cards">{cards}</div></section>'
        )
    failed = [(i, p) for i, p in enumerate(result.photos) if not p.ok]
    failures = ""
    if failed:
        cards = "".join(_card(p, i, thumbnails) for i, p in failed)
        failures = (
            f'<section class="group failures"><h2>Could not be read · {len(failed)}</h2>'
            f'<div class="cards">{cards}</div></section>'
        )
    rated = len(result.photos) - len(failed)
    picks = sum(p.pick for p in result.photos)
    summary = (
        f"{rated} photos in {len(result.groups)} groups, {picks} picks"
        + (f", {len(failed)} could not be read" if failed else "")
        + "."
    )
    options = result.options
    footer = html.escape(
        f"Model {options.get('model', '')}; groups: frames within {options['group_seconds']} s "
        f"and pHash similarity at least {options['similarity']}; {options['keep']} pick(s) per group."
    )
    return _template().substitute(
        title=html.escape(title or "shoot"),
        summary=html.escape(summary),
        groups="\n".join(sections),
        failures=failures,
        footer=footer,
    )


def render_csv(result: CullResult) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for photo in result.photos:
        row = photo.to_dict()
        for key in ("mean", "std"):
            row[key] = "" if row[key] is None else f"{row[key]:.4f}"
        for key in ("percentile", "shoot_percentile"):
            row[key] = "" if row[key] is None else f"{row[key]:.1f}"
        row["pick"] = "" if not photo.ok else str(photo.pick).lower()
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def write_report(result: CullResult, out_dir: PathLike, *, title: str = "") -> Path:
    """Write thumbnails, ``cull.json``, ``cull.csv`` and ``index.html`` (last) into ``out_dir``."""
    out = Path(out_dir)
    written = set()
    for index, photo in enumerate(result.photos):
        if photo.thumbnail:
            written.add(atomic_write_bytes(out / thumbnail_name(index), photo.thumbnail).name)
    for stale in (out / "thumbs").glob("[0-9][0-9][0-9][0-9][0-9].jpg"):  # from an earlier, larger run
        if stale.name not in written:
            stale.unlink()
    write_json(out / "cull.json", result.to_dict())
    atomic_write_text(out / "cull.csv", render_csv(result))
    page = atomic_write_text(out / "index.html", render_html(result, title=title))
    log.info("cull report written to %s", page)
    return page

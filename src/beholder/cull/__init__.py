"""Cull a shoot: group bursts and near-duplicates, pick the best of each, rate, write sidecars, report.

``cull(paths, scorer)`` returns a :class:`CullResult`; :func:`write_report` and
:func:`write_sidecars` turn it into files. ``beholder cull`` is the command-line face.
See docs/culling.md.
"""

from __future__ import annotations

from beholder.cull.run import CulledPhoto, CullResult, analyse, cull, decide
from beholder.cull.xmp import plan_sidecars, write_sidecars

__all__ = [
    "CullResult",
    "CulledPhoto",
    "analyse",
    "cull",
    "decide",
    "plan_sidecars",
    "write_report",
    "write_sidecars",
]


def write_report(result: CullResult, out_dir, *, title: str = ""):
    """Write ``index.html``, ``cull.json``, ``cull.csv`` and ``thumbs/`` into ``out_dir``."""
    from beholder.cull.report import write_report as _write

    return _write(result, out_dir, title=title)

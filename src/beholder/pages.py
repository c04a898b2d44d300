"""The HTML pages Beholder serves or writes: the service's web page and the cull report.

Both are self-contained (no external assets: the service may run offline, and a report is opened
from disk), so the CSS they share lives in ``static/base.css`` and is inlined into each page where
it says ``/* beholder:base.css */``.
"""

from __future__ import annotations

from importlib import resources

_BASE_CSS_MARKER = "/* beholder:base.css */"


def page_text(*parts: str) -> str:
    """The packaged page at ``beholder/<parts>`` with the shared CSS inlined."""
    root = resources.files("beholder")
    text = root.joinpath(*parts).read_text(encoding="utf-8")
    return text.replace(_BASE_CSS_MARKER, root.joinpath("static", "base.css").read_text(encoding="utf-8"))

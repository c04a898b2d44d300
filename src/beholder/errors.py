"""Exception types shared by the library and the CLI, and how their messages stay one line.

The CLI maps :class:`ConfigError` (and its subclasses) to exit code 2; everything that is about one
input file (a corrupt image, say) is reported per file and never aborts a batch.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """``text`` safe on one line of a terminal, a table or a log: control and format characters
    (newline, ESC, bidi overrides) as Python escapes, and bytes that were not UTF-8 (surrogate
    escapes, PEP 383) as ``\\xff``."""
    if text.isprintable():
        return text
    return "".join(
        ch
        if ch.isprintable()
        else f"\\x{ord(ch) - 0xDC00:02x}"
        if 0xDC80 <= ord(ch) <= 0xDCFF
        else ascii(ch)[1:-1]
        for ch in text
    )


def one_line(message: object) -> str:
    """A message that may quote a decoder or a server, as one printable line: whitespace runs
    (newlines included) become one space, and what is left unprintable is escaped."""
    return printable(" ".join(str(message).split()))


class BeholderError(Exception):
    """Base class of every error Beholder raises on purpose."""


class ConfigError(BeholderError):
    """Bad usage or configuration: unknown model, missing file, unreadable checkpoint. CLI exit code 2."""


class WeightsUnavailableError(ConfigError):
    """Weights are neither local nor downloadable (offline, say). The message tells how to get them."""


class ImageLoadError(BeholderError):
    """One image could not be read. The message names the file and the problem."""

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        # Decoder messages (libheif's, say) may end in a newline or span lines; a per-file error is
        # printed as one line of a table, CSV or log.
        self.problem = one_line(problem)
        super().__init__(f"{self.path}: {self.problem}")

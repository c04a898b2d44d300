"""Exception types shared by the library and the CLI.

The CLI maps :class:`ConfigError` (and its subclasses) to exit code 2; everything that is about one
input file (a corrupt image, say) is reported per file and never aborts a batch.
"""

from __future__ import annotations


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
        # printed as one line of a table, CSV or log, so whitespace runs collapse to one space.
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}")

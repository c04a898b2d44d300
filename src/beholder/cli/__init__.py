"""The ``beholder`` command line: a thin layer over the library.

Each sub-command lives in its own module of this package and exposes ``register(subparsers)``,
which adds its parser (most through :func:`add_command`, from the module's docstring) and sets
``func`` (``args -> exit code``). Modules are imported lazily by
name so that ``beholder score`` never pays for importing the training or serving stack.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from beholder import __version__
from beholder.errors import ConfigError

# Sub-command modules, in the order `beholder --help` lists them.
COMMAND_MODULES = [
    "beholder.cli.score",
    "beholder.cli.cull",
    "beholder.cli.models",
    "beholder.cli.ava",
    "beholder.cli.prepare",
    "beholder.cli.train",
    "beholder.cli.evaluate",
    "beholder.cli.export",
    "beholder.cli.serve",
]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="beholder",
        description="Quantify image aesthetics with NIMA: predict the distribution of human 1-10 ratings.",
    )
    parser.add_argument("--version", action="version", version=f"beholder {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def add_command(
    subparsers: argparse._SubParsersAction, name: str, doc: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """The parser of sub-command ``name``, its texts taken from ``doc``, its module's docstring.

    The docstring's first line is the command's line in ``beholder --help``; the paragraphs after
    it are the description its own ``--help`` shows (re-wrapped, as argparse does).
    """
    summary, _, description = doc.partition("\n\n")
    return subparsers.add_parser(name, help=summary.strip(), description=description.strip(), **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Pillow re-checks its own pixel limit (89 MP) when it decodes a TIFF, outside the header step
    # where beholder.imageio quiets it; Beholder's limit (--max-pixels) was already applied there.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"beholder {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # an unwritable --out, a full disk, a missing file opened by a command
        log.debug("%s failed", args.command, exc_info=exc)
        print(f"beholder {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"beholder {args.command}: interrupted", file=sys.stderr)
        return 130


def describe_os_error(exc: OSError) -> str:
    """One line naming the path(s) and the problem, e.g. ``/proc/x: No such file or directory``."""
    reason = "no space left on device" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    paths = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

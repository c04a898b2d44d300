"""score photos (files, directories, globs)

Predict the distribution of human 1-10 ratings for each photo, its mean and std, and the mean's
percentile among AVA photos.
"""

# Heavy modules are imported inside run(), so that `beholder --help` stays instant, and with the
# default --runtime auto (ONNX Runtime) and a cached export, torch is never imported.

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from beholder.cli import add_command
from beholder.cli._common import add_model_arguments, scorer_from_args
from beholder.errors import printable

if TYPE_CHECKING:
    from beholder.inference import ScoreResult

PROGRESS_THRESHOLD = 16  # show a progress bar from this many inputs on
_BARS = " ▁▂▃▄▅▆▇█"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "score", __doc__)
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image file, directory (recursive) or glob")
    add_model_arguments(parser, onnx=True)
    parser.add_argument("--format", choices=["table", "json", "jsonl", "csv"], default="table")
    parser.add_argument("--rank", action="store_true", help="sort by mean score, best first")
    parser.add_argument(
        "--fidelity",
        choices=["exact", "fast"],
        default="exact",
        help="exact (default): as the reference model; fast: reduced JPEG decode of large photos",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="image decoding threads (default: CPUs)")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    # -- tables: `beholder score --table IN --out OUT` lives in cli/score_table.py ------------
    from beholder.cli.score_table import add_table_arguments

    add_table_arguments(parser)
    # ------------------------------------------------------------------------------------------
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # -- tables: hand over to cli/score_table.py ----------------------------------------------
    from beholder.cli.score_table import run_table, table_options_without_table

    if args.table:
        return run_table(args)
    if not args.paths or table_options_without_table(args):
        print("beholder score: error: give image PATHs, or --table IN --out OUT", file=sys.stderr)
        return 2
    # ------------------------------------------------------------------------------------------
    from beholder.imageio import find_images
    from beholder.inference import ScoreResult, rank

    found = find_images(args.paths)
    if not found.paths:
        for problem in found.problems:
            print(f"beholder score: {problem}", file=sys.stderr)
        print("beholder score: error: no images found in the given paths", file=sys.stderr)
        return 2
    scorer = scorer_from_args(args, batch_size=args.batch_size, workers=args.workers, fidelity=args.fidelity)
    progress = not args.no_progress and len(found.paths) >= PROGRESS_THRESHOLD
    results = scorer.score(found.paths, progress=progress)
    # Inputs that gave no file at all (an unreadable directory, a glob matching nothing) are failures too.
    results += [ScoreResult(path=problem.path, error=problem.problem) for problem in found.problems]
    if args.rank:
        results = rank(results)
    # A file name that is not UTF-8 arrives as surrogate escapes (PEP 383): a strict UTF-8 stdout
    # (most locales) would raise on them once every image is scored. CSV gets the name's
    # own bytes back (JSON and JSONL escape them); the table and stderr show escapes instead.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")
    sys.stdout.write(render(results, args.format))
    failures = [r for r in results if not r.ok]
    for result in failures:
        print(f"beholder score: {printable(result.path)}: {result.error}", file=sys.stderr)
    if failures:
        print(f"beholder score: {len(failures)} of {len(results)} inputs failed", file=sys.stderr)
        return 1
    return 0


def render(results: Sequence[ScoreResult], fmt: str) -> str:
    """Format :class:`~beholder.inference.ScoreResult` objects as table, json, jsonl or csv text."""
    from beholder.inference import results_json

    if fmt == "json":
        return results_json(results) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r.to_dict(), allow_nan=False) + "\n" for r in results)
    if fmt == "csv":
        return _csv(results)
    return _table(results)


def _csv(results: Sequence[ScoreResult]) -> str:
    from beholder.ratings import PROBABILITY_COLUMNS

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "mean", "std", "percentile", *PROBABILITY_COLUMNS, "error"])
    for r in results:
        if r.ok:
            probabilities = [f"{p:.6f}" for p in r.distribution]
            writer.writerow(
                [r.path, f"{r.mean:.4f}", f"{r.std:.4f}", f"{r.percentile:.2f}", *probabilities, ""]
            )
        else:
            writer.writerow([r.path, "", "", "", *[""] * len(PROBABILITY_COLUMNS), r.error])
    return buffer.getvalue()


def _table(results: Sequence[ScoreResult]) -> str:
    paths = [printable(r.path) for r in results]
    width = max([len(path) for path in paths] + [4])
    lines = [f"{'path':<{width}}  {'mean':>5}  {'std':>5}  {'AVA %ile':>8}  distribution 1..10"]
    for path, r in zip(paths, results):
        if r.ok:
            peak = max(r.distribution) or 1.0
            spark = "".join(_BARS[min(8, round(p / peak * 8))] for p in r.distribution)
            lines.append(f"{path:<{width}}  {r.mean:5.2f}  {r.std:5.2f}  {r.percentile:8.1f}  {spark}")
        else:
            lines.append(f"{path:<{width}}  {'-':>5}  {'-':>5}  {'-':>8}  error: {r.error}")
    return "\n".join(lines) + "\n"

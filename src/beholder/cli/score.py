"""``beholder score``: score photos from files, directories or globs."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from typing import List

from beholder.cli._common import add_model_arguments, scorer_from_args

PROGRESS_THRESHOLD = 16  # show a progress bar from this many inputs on


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score photos (files, directories, globs)",
        description="Predict the distribution of human 1-10 ratings for each photo, and its mean and std.",
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="image file, directory (recursive) or glob")
    add_model_arguments(parser)
    parser.add_argument("--format", choices=["table", "json", "jsonl", "csv"], default="table")
    parser.add_argument("--rank", action="store_true", help="sort by mean score, best first")
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
    from beholder.inference import expand_inputs

    paths = expand_inputs(args.paths)
    if not paths:
        print("beholder score: error: no images found in the given paths", file=sys.stderr)
        return 2
    scorer = scorer_from_args(args, batch_size=args.batch_size, workers=args.workers)
    progress = not args.no_progress and len(paths) >= PROGRESS_THRESHOLD
    results = scorer.score(paths, progress=progress)
    if args.rank:
        # Failed inputs go last, in input order; sorted() is stable.
        results = sorted(results, key=lambda r: (r.error is not None, -(r.mean or 0.0)))
    sys.stdout.write(render(results, args.format))
    failures = [r for r in results if not r.ok]
    for result in failures:
        print(f"beholder score: {result.path}: {result.error}", file=sys.stderr)
    if failures:
        print(f"beholder score: {len(failures)} of {len(results)} inputs failed", file=sys.stderr)
        return 1
    return 0


def render(results: List, fmt: str) -> str:
    """Format :class:`~beholder.inference.ScoreResult` objects as table, json, jsonl or csv text."""
    if fmt == "json":
        return json.dumps([r.to_dict() for r in results], indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r.to_dict()) + "\n" for r in results)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "mean", "std", *[f"p{i}" for i in range(1, 11)], "error"])
        for r in results:
            if r.ok:
                writer.writerow(
                    [r.path, f"{r.mean:.4f}", f"{r.std:.4f}", *[f"{p:.6f}" for p in r.distribution], ""]
                )
            else:
                writer.writerow([r.path, "", "", *[""] * 10, r.error])
        return buffer.getvalue()
    width = max([len(r.path) for r in results] + [4])
    lines = [f"{'path':<{width}}  {'mean':>5}  {'std':>5}  distribution 1..10"]
    bars = " ▁▂▃▄▅▆▇█"
    for r in results:
        if r.ok:
            peak = max(r.distribution) or 1.0
            spark = "".join(bars[min(8, round(p / peak * 8))] for p in r.distribution)
            lines.append(f"{r.path:<{width}}  {r.mean:5.2f}  {r.std:5.2f}  {spark}")
        else:
            lines.append(f"{r.path:<{width}}  {'-':>5}  {'-':>5}  error: {r.error}")
    return "\n".join(lines) + "\n"

"""``beholder score --table IN --out OUT``: score the images a table names (see docs/catalogues.md).

The options join ``beholder score``'s parser (:func:`add_table_arguments`); ``score`` hands over
to :func:`run_table` when ``--table`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys

TABLE_OPTIONS = ("out", "column", "id_column", "resume", "engine", "ray_address", "group_by", "top")


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tables (catalogues)")
    group.add_argument(
        "--table", metavar="IN", help="score the images a .csv, .parquet or .jsonl table names"
    )
    group.add_argument("--out", metavar="OUT", help="the table with scores (.parquet, .csv or .jsonl)")
    group.add_argument("--column", default="path", help="column with paths or http(s) URLs (default: path)")
    group.add_argument("--id-column", metavar="ID", help="column naming each row, in reported failures")
    group.add_argument(
        "--resume", action="store_true", help="finish an interrupted run; score only missing rows"
    )
    group.add_argument("--engine", choices=["local", "ray"], default="local")
    group.add_argument(
        "--ray-address", metavar="ADDR", help="attach to this Ray cluster (default: start Ray here)"
    )
    group.add_argument("--num-cpus", type=int, default=None, help="CPUs of a Ray started here (default: all)")
    group.add_argument("--group-by", metavar="COL", help="add rank_in_group (1 = best in its group)")
    group.add_argument(
        "--top", type=int, metavar="K", help="with --group-by, keep the best K rows of each group"
    )
    group.add_argument("--part-rows", type=int, default=1000, help="rows per committed part (default: 1000)")
    group.add_argument(
        "--url-timeout", type=float, default=30.0, help="seconds per URL request (default: 30)"
    )
    group.add_argument("--url-retries", type=int, default=3, help="retries of a failed URL (default: 3)")
    group.add_argument(
        "--url-per-host", type=int, default=4, help="URLs fetched at once per host (default: 4)"
    )


def table_options_without_table(args: argparse.Namespace) -> list:
    """Table options given without ``--table`` (a usage error)."""
    defaults = {"column": "path", "resume": False, "engine": "local"}
    return [name for name in TABLE_OPTIONS if getattr(args, name) not in (None, defaults.get(name))]


def run_table(args: argparse.Namespace) -> int:
    """Exit 0 when every row was scored, 1 when some rows carry an error, 2 for usage errors."""
    from beholder.tables import score_table

    if args.paths:
        print("beholder score: error: give image PATHs or --table, not both", file=sys.stderr)
        return 2
    if getattr(args, "onnx", None):
        print("beholder score: error: --table takes --model or --checkpoint, not --onnx", file=sys.stderr)
        return 2
    if not args.out:
        print("beholder score: error: --table needs --out", file=sys.stderr)
        return 2
    summary = score_table(
        args.table,
        args.out,
        column=args.column,
        id_column=args.id_column,
        resume=args.resume,
        engine=args.engine,
        ray_address=args.ray_address,
        num_cpus=args.num_cpus,
        group_by=args.group_by,
        top=args.top,
        model=args.model,
        checkpoint=args.checkpoint,
        weights=args.weights,
        runtime=args.runtime,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        fidelity=getattr(args, "fidelity", "exact"),
        part_rows=args.part_rows,
        url_timeout=args.url_timeout,
        url_retries=args.url_retries,
        url_per_host=args.url_per_host,
        progress=False if args.no_progress else None,
    )
    print(json.dumps(summary))
    for failure in summary["failures"]:
        name = failure.get(args.id_column or args.column)
        print(f"beholder score: {name}: {failure['error']}", file=sys.stderr)
    if summary["errors"]:
        print(f"beholder score: {summary['errors']} of {summary['rows']} rows have an error", file=sys.stderr)
        return 1
    return 0

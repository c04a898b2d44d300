"""``beholder prepare --labels ratings.csv``: your own rated photos into a prepared directory (docs/data.md)."""

from __future__ import annotations

import argparse

from beholder.cli.ava import add_cache_arguments, prepare_kwargs, print_prepare_summary


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="your own rated photos (a CSV) -> manifest.parquet for train and evaluate",
        description="Read a CSV with a path column and votes_1..votes_10, p1..p10 or mean [+ std], then "
        "validate, measure and resize the photos exactly as `ava prepare` does. Writes OUT/manifest.parquet, "
        "OUT/rejected.csv, OUT/prepare.json. Reruns are incremental. See docs/data.md.",
    )
    parser.add_argument("--labels", required=True, metavar="CSV", help="the ratings CSV")
    parser.add_argument(
        "--images",
        default=None,
        metavar="DIR",
        help="where the CSV's relative paths point (default: its folder)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="prepared directory")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share drawn for val (0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share drawn for test (0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawn split (0)")
    parser.add_argument(
        "--default-std",
        type=float,
        default=None,
        help="rating spread of rows that give only a mean (default 1.4, AVA's typical)",
    )
    add_cache_arguments(parser)
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beholder.data.labels import prepare_labels

    summary = prepare_labels(
        args.labels,
        args.out,
        images_dir=args.images,
        test_fraction=args.test_fraction,
        **({} if args.default_std is None else {"default_std": args.default_std}),
        **prepare_kwargs(args),
    )
    return print_prepare_summary(summary, args.out)

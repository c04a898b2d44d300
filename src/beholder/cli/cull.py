"""cull a shoot: group bursts, pick the best, rate 1-5 stars, XMP sidecars, HTML report

Order photos by capture time, group consecutive look-alike frames (bursts, near-duplicates), pick
the best-scoring frames of each group, give every photo 1-5 stars from its rank in the shoot, and
write an offline HTML report (and, with --xmp, sidecars photo tools read).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from beholder.cli import add_command
from beholder.cli._common import add_model_arguments, scorer_from_args

DEFAULT_OUT = "beholder-cull"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "cull", __doc__)
    parser.add_argument("paths", nargs="+", metavar="DIR", help="folder (recursive), photo file or glob")
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        help=f"report folder: index.html, cull.json, cull.csv (default: {DEFAULT_OUT})",
    )
    parser.add_argument("--xmp", action="store_true", help="write NAME.xmp sidecars beside the photos")
    parser.add_argument(
        "--xmp-naming",
        choices=["replace", "append"],
        default="replace",
        help="sidecar names: NAME.xmp (replace; Lightroom, Capture One) or NAME.EXT.xmp (append; darktable, "
        "digiKam's default); default replace",
    )
    parser.add_argument(
        "--group-seconds",
        type=float,
        default=2.0,
        help="most seconds between frames of one group (default 2)",
    )
    parser.add_argument(
        "--similarity",
        type=float,
        default=0.8,
        help="least pHash similarity (1 - differing bits / 64) between frames of one group (default 0.8)",
    )
    parser.add_argument("--keep", type=int, default=1, help="picks per group (default 1)")
    parser.add_argument("--dry-run", action="store_true", help="write nothing; print what would change")
    add_model_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="image decoding threads (default: CPUs)")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    parser.set_defaults(func=run)


def _inputs(patterns: list[str], out: Path) -> list[str]:
    """The photos to cull, without anything inside the report folder (its thumbnails)."""
    from beholder.imageio import expand_inputs

    out = out.resolve()
    return [p for p in expand_inputs(patterns) if out not in Path(p).resolve().parents]


def run(args: argparse.Namespace) -> int:
    from beholder.cull import cull
    from beholder.cull.report import write_report
    from beholder.cull.xmp import plan_sidecars, write_sidecars
    from beholder.errors import ConfigError

    if args.keep < 1:
        raise ConfigError(f"--keep must be at least 1, got {args.keep}")
    if not 0.0 <= args.similarity <= 1.0:
        raise ConfigError(f"--similarity must be between 0 and 1, got {args.similarity}")
    if args.group_seconds < 0:
        raise ConfigError(f"--group-seconds must not be negative, got {args.group_seconds}")
    out = Path(args.out)
    paths = _inputs(args.paths, out)
    if not paths:
        print("beholder cull: error: no images found in the given paths", file=sys.stderr)
        return 2
    scorer = scorer_from_args(args, batch_size=args.batch_size, workers=args.workers)
    result = cull(
        paths,
        scorer,
        group_seconds=args.group_seconds,
        similarity=args.similarity,
        keep=args.keep,
        progress=False if args.no_progress else None,
    )
    failures = result.failures
    rated = len(result.photos) - len(failures)
    picks = sum(p.pick for p in result.photos)
    print(f"beholder cull: {rated} photos, {len(result.groups)} groups, {picks} picks")
    status = 0
    if args.xmp:
        changes, errors = plan_sidecars(result, args.xmp_naming)
        for change in changes:
            if args.dry_run:
                print(f"would {change.describe()}")
        if not args.dry_run:
            written = write_sidecars(changes)
            print(f"beholder cull: {written} sidecars written, {len(changes) - written} unchanged")
        for error in errors:
            print(f"beholder cull: sidecar not written: {error}", file=sys.stderr)
        status = 1 if errors else status
    if args.dry_run:
        for photo in result.photos:
            if photo.ok:
                mark = "pick" if photo.pick else "alternate"
                print(
                    f"{photo.path}: group {photo.group}, {photo.stars} stars, {mark}, mean {photo.mean:.2f}"
                )
        print(f"beholder cull: dry run: nothing written (the report would go to {out})")
    else:
        page = write_report(result, out, title=", ".join(args.paths))
        print(f"beholder cull: report {page}")
    for photo in failures:
        print(f"beholder cull: {photo.path}: {photo.error}", file=sys.stderr)
    if failures:
        print(
            f"beholder cull: {len(failures)} of {len(result.photos)} photos could not be read",
            file=sys.stderr,
        )
        status = 1
    return status

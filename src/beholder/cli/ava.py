"""``beholder ava download | prepare | eda``: get, clean and explore the AVA data (docs/data.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from beholder.cli import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ava", help="AVA data: download, prepare (clean + resize), explore")
    commands = parser.add_subparsers(dest="ava_command", metavar="STEP")
    parser.set_defaults(func=lambda args: _help(parser))

    progress = argparse.ArgumentParser(add_help=False)
    progress.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal)",
    )

    dl = commands.add_parser(
        "download",
        parents=[progress],
        help="download the images of AVA ids (resumable, polite)",
        description="Download AVA images concurrently into the --out directory as <id>.jpg; a rerun skips "
        "completed files. Writes download.json and failures.csv there too. See docs/data.md.",
    )
    dl.add_argument("--ava-txt", required=True, help="AVA.txt (its valid rows give the ids)")
    dl.add_argument("--out", required=True, help="image directory")
    dl.add_argument("--ids", default=None, help="only the ids in this file (one per line, e.g. a .jpgl list)")
    dl.add_argument(
        "--url-template",
        default=None,
        help="image URL containing {id}; with --page-mode the page URL (default: DPChallenge's image.php)",
    )
    dl.add_argument(
        "--page-mode",
        action="store_true",
        help="the URL gives an HTML page per id whose <img> is the image (the original DPChallenge source)",
    )
    dl.add_argument("--workers", type=int, default=8, help="download threads (default 8)")
    dl.add_argument("--per-host", type=int, default=4, help="concurrent requests per host (default 4)")
    dl.add_argument("--limit", type=int, default=None, help="at most N ids")
    dl.add_argument("--timeout", type=float, default=30.0, help="seconds to connect / per read (default 30)")
    dl.add_argument("--retries", type=int, default=3, help="retries of transient failures (default 3)")
    dl.add_argument(
        "--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each time"
    )
    dl.add_argument(
        "--abort-after",
        type=int,
        default=20,
        help="stop after N ids in a row fail to connect (default 20; 0 never)",
    )
    dl.add_argument(
        "--max-mb", type=float, default=50.0, help="fail an image larger than this many MB (default 50)"
    )
    dl.add_argument(
        "--max-failed-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="exit 0 when at most this share (0..1) of the requested ids failed (default 0: any failure "
        "exits 1); AVA always has some ids that are gone",
    )
    dl.set_defaults(func=run_download)

    prep = commands.add_parser(
        "prepare",
        parents=[progress],
        help="validate, measure and resize the images; write manifest.parquet",
        description="Parse AVA.txt, assign splits, validate and measure every image and write a resized "
        "cache. Writes OUT/manifest.parquet, OUT/rejected.csv, OUT/prepare.json. Reruns are incremental.",
    )
    prep.add_argument("--ava-txt", required=True, help="AVA.txt-format label file")
    prep.add_argument("--images", required=True, help="directory of <id>.jpg files")
    prep.add_argument("--out", required=True, help="prepared directory")
    prep.add_argument(
        "--test-list",
        default=None,
        help="official test ids (generic_test.jpgl; default: aesthetics_image_lists/ beside AVA.txt if there)",
    )
    prep.add_argument("--val-fraction", type=float, default=0.1, help="share of non-test ids for val (0.1)")
    prep.add_argument("--seed", type=int, default=0, help="seed of the validation split (0)")
    add_cache_arguments(prep)
    prep.set_defaults(func=run_prepare)

    eda = commands.add_parser(
        "eda",
        help="statistics and plots of a prepared directory",
        description="Write OUT/report.html with its PNG plots beside it, and OUT/summary.json.",
    )
    eda.add_argument("--data", required=True, help="prepared directory (holding manifest.parquet)")
    eda.add_argument("--out", required=True, help="report directory")
    eda.add_argument("--top", type=int, default=16, help="images in each best/worst grid (16)")
    eda.add_argument("--sample-rows", type=int, default=10, help="rows in the sample table (10)")
    eda.add_argument(
        "--central",
        type=float,
        nargs=2,
        default=(4.0, 7.0),
        metavar=("LOW", "HIGH"),
        help="central range of mean ratings (default 4 7)",
    )
    eda.set_defaults(func=run_eda)


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """The resize-cache and validation options shared by `ava prepare` and `prepare --labels`."""
    parser.add_argument(
        "--image-size", type=int, default=256, help="side of the square cache images, 32..2048 (256)"
    )
    parser.add_argument("--quality", type=int, default=95, help="cache JPEG quality (95)")
    parser.add_argument(
        "--resample",
        default="bilinear",
        choices=["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"],
        help="resize filter for the cache (bilinear)",
    )
    parser.add_argument("--min-side", type=int, default=64, help="reject images with a shorter side (64 px)")
    parser.add_argument(
        "--fast-decode",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="decode JPEGs at reduced scale before an antialiasing resize (default on)",
    )
    parser.add_argument("--workers", type=int, default=None, help="decode threads (default min(8, CPUs))")


def prepare_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments both prepare commands pass alike: the val share and seed of the drawn
    split, the progress bar and the options of :func:`beholder.data.prepare.cache_options`."""
    return {
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "progress": args.progress,
        "image_size": args.image_size,
        "jpeg_quality": args.quality,
        "resample": args.resample,
        "min_side": args.min_side,
        "fast_decode": args.fast_decode,
        "workers": args.workers,
    }


def print_prepare_summary(summary: dict, out: str) -> int:
    """The one-line summary of a prepare run; exit 0, or 1 when no image is usable."""
    from beholder.data.manifest import MANIFEST_FILE

    splits = ", ".join(f"{name} {count}" for name, count in summary["splits"].items())
    reasons = ", ".join(f"{k} {v}" for k, v in summary["rejected"].items() if v)
    rate = summary["images_per_second"]
    print(
        f"prepare: {summary['manifest_rows']} images ({splits}), {summary['rejected_total']} rejected"
        + (f" ({reasons})" if reasons else "")
        + f"; {summary['images']['processed']} processed, {summary['images']['reused']} unchanged"
        + f" in {summary['seconds']:.1f} s"
        + (f" ({rate:.0f} img/s)" if rate else "")
        + f" -> {os.path.join(out, MANIFEST_FILE)}"
    )
    return EXIT_OK if summary["manifest_rows"] else EXIT_PARTIAL


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def check_url(url: str, what: str) -> None:
    """A ConfigError for a URL that cannot even be parsed (``[::1``, port 99999)."""
    import urllib.parse

    from beholder.errors import ConfigError

    try:
        urllib.parse.urlsplit(url.replace("{id}", "0")).port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        raise ConfigError(f"{what} {url!r} is not a valid URL: {exc}") from None


def run_download(args: argparse.Namespace) -> int:
    from beholder.data.ava import read_image_list
    from beholder.data.download import FAILURES_FILE, download
    from beholder.errors import ConfigError

    if not 0.0 <= args.max_failed_fraction <= 1.0:
        raise ConfigError(f"--max-failed-fraction must be in 0..1, got {args.max_failed_fraction}")
    if args.url_template is not None:
        check_url(args.url_template, "--url-template")
    ids = read_image_list(args.ids) if args.ids else None
    summary = download(
        args.ava_txt,
        args.out,
        ids=ids,
        url_template=args.url_template,
        page_mode=args.page_mode,
        workers=args.workers,
        per_host=args.per_host,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.backoff,
        limit=args.limit,
        abort_after=args.abort_after,
        progress=args.progress,
        max_bytes=int(args.max_mb * 1024 * 1024),
    )
    reasons = ", ".join(f"{k} {v}" for k, v in summary["failures_by_reason"].items())
    line = (
        f"download: {summary['ok']} ok, {summary['skipped']} skipped, {summary['failed']} failed"
        + (f" ({reasons})" if reasons else "")
        + (f", {summary['not_attempted']} not attempted" if summary["not_attempted"] else "")
        + f" in {summary['seconds']:.1f} s -> {args.out}"
    )
    if summary["failed"]:
        line += f"; see {Path(args.out) / FAILURES_FILE}"
    print(line)
    if summary["aborted"]:
        print(f"beholder ava download: {summary['aborted']}")
        return EXIT_PARTIAL
    share = summary["failed_fraction"]
    if share > args.max_failed_fraction:
        if summary["failed"] and args.max_failed_fraction:
            print(f"beholder ava download: {share:.1%} of the ids failed, over --max-failed-fraction")
        return EXIT_PARTIAL
    return EXIT_OK


def run_prepare(args: argparse.Namespace) -> int:
    from beholder.data.prepare import prepare

    summary = prepare(
        args.ava_txt,
        args.images,
        args.out,
        test_list=args.test_list,
        **prepare_kwargs(args),
    )
    return print_prepare_summary(summary, args.out)


def run_eda(args: argparse.Namespace) -> int:
    from beholder.eda import REPORT_FILE, eda

    summary = eda(
        args.data, args.out, top_k=args.top, sample_rows=args.sample_rows, central=tuple(args.central)
    )
    rating = summary["mean_rating"]
    votes = summary["n_votes"]
    spread = "" if rating["std"] is None else f" ± {rating['std']:.2f}"  # None for a single image
    counts = (
        f"{votes['min']:.0f} to {votes['max']:.0f} votes per image (mean {votes['mean']:.0f})"
        if votes["count"]
        else "no vote counts"  # ratings given as distributions or means
    )
    print(
        f"eda: {summary['n_images']} images; {counts}; mean rating {rating['mean']:.2f}{spread} "
        f"-> {os.path.join(args.out, REPORT_FILE)}"
    )
    return EXIT_OK

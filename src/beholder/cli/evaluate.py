"""evaluate a model on AVA's test split or your own rated photos

Score rated images with the model's own deterministic preprocessing and write metrics.json,
predictions.csv, plots and report.md/report.html comparing the model with published results
(NIMA, Talebi & Milanfar 2018).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from beholder.cli import add_command
from beholder.cli._common import add_model_arguments, check_device, scorer_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "evaluate", __doc__)
    add_model_arguments(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data", metavar="PREPARED_DIR", help="a directory written by `beholder ava prepare`"
    )
    source.add_argument("--images", metavar="DIR", help="your own photos (with --labels)")
    parser.add_argument(
        "--labels",
        metavar="CSV",
        help="ratings of the photos in --images: id or path, and votes_1..votes_10 / c1..c10, p1..p10 or mean",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=["train", "val", "test", "all"],
        help="manifest split to evaluate (default: test, the official AVA test list)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="image decoding threads (default: CPUs)")
    parser.add_argument(
        "--tail-thresholds",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        default=None,
        help="true means below LOW and above HIGH are the tails measured apart (default: 3.5 7.2)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beholder import evaluation as ev
    from beholder.errors import ConfigError
    from beholder.metrics import TAIL_THRESHOLDS

    if args.images and not args.labels:
        raise ConfigError("--images needs --labels CSV")
    if args.labels and not args.images:
        raise ConfigError("--labels goes with --images DIR (for --data the labels are in the manifest)")
    if args.images and args.split != "test":
        raise ConfigError("--split applies to --data; --images/--labels evaluates every rated photo")
    tails = ev.check_tail_thresholds(args.tail_thresholds or TAIL_THRESHOLDS)
    # Read and check the data before loading the model: a wrong path should fail in milliseconds.
    if args.data:
        from beholder.data.manifest import load_manifest

        data = load_manifest(args.data)
        ev.labels_from_manifest(data, args.split)
        data_label = args.data
    else:
        data = ev.load_user_labels(args.images, args.labels)
        data_label = args.labels
    ev.check_out_dir(args.out)
    check_device(args.device)
    scorer = scorer_from_args(args, batch_size=args.batch_size, workers=args.workers)
    metrics = ev.evaluate(
        scorer,
        data,
        args.out,
        split=args.split,
        progress=not args.no_progress,
        plots=not args.no_plots,
        data_label=data_label,
        tail_thresholds=tails,
        provenance=checkpoint_provenance(args.checkpoint, args.trust_checkpoint) if args.checkpoint else None,
    )
    if metrics["n_failed"]:
        print(
            f"beholder evaluate: WARNING: {metrics['n_failed']} image(s) could not be scored and were "
            f"excluded from the metrics; see {args.out}/failures.csv",
            file=sys.stderr,
        )
    print(summary_line(metrics, args.out))
    return 1 if metrics["n_failed"] else 0


def checkpoint_provenance(path: str, trust: bool = False) -> dict[str, Any] | None:
    """A checkpoint's ``provenance`` (where its weights came from, what it was fine-tuned from)."""
    from beholder.models.checkpoint import read_checkpoint

    payload = read_checkpoint(path, trust=trust)
    provenance = dict(payload.get("provenance") or {})
    if payload.get("init") and "init" not in provenance:  # a fine-tuned model's starting point
        provenance["init"] = payload["init"]
    return provenance or None


def summary_line(metrics: dict, out_dir: str) -> str:
    """One line: the headline figures and where the report is."""

    def fmt(key: str, digits: int = 3) -> str:
        value = metrics[key]
        return "n/a" if value is None else f"{value:.{digits}f}"

    accuracy = "n/a" if metrics["accuracy"] is None else f"{100 * metrics['accuracy']:.2f}%"
    return (
        f"{metrics['model']}: n={metrics['n']} accuracy={accuracy} LCC={fmt('lcc_mean')} "
        f"SRCC={fmt('srcc_mean')} EMD={fmt('emd')} MAE={fmt('mae_mean')} -> {out_dir}/report.html"
    )

"""``beholder train``: two-phase NIMA training on a prepared directory (see docs/training.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from beholder.errors import ConfigError

EXAMPLES = """examples:
  beholder train --data prepared/ --out runs/nima
  beholder train --data prepared/ --out runs/b0 model.backbone=timm/efficientnet_b0 model.backbone_weights=timm
  beholder train --data prepared/ --out runs/quick phase1.epochs=1 phase2.epochs=1 data.undersample_per_bin=100
  beholder train --data prepared/ --out runs/nima --resume
  beholder train --data prepared/ --out runs/nima --resume phase2.epochs=12      # extend a finished run
  beholder train --data mine/ --out runs/tuned model.init=nima-mobilenet-idealo phase1.epochs=0
  beholder train --data prepared/ --out runs/rare --config nima_mobilenet_rebalanced
  torchrun --nproc-per-node 4 -m beholder train --data prepared/ --out runs/ddp
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train NIMA (phase 1: head, phase 2: all layers) with the EMD loss",
        description=(
            "Train a NIMA model on a directory prepared by `beholder ava prepare` or `beholder prepare`. "
            "A YAML recipe gives the configuration; KEY=VALUE overrides go on top."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", type=Path, help="prepared directory (manifest.parquet); required")
    parser.add_argument("--out", type=Path, help="run directory to write; required")
    parser.add_argument(
        "--config",
        default=None,
        help="recipe name (nima_mobilenet, nima_mobilenet_full, nima_mobilenet_rebalanced) or YAML path "
        "[default: nima_mobilenet; with --resume: the run's config.yaml]",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt"
    )
    parser.add_argument(
        "--list-keys",
        action="store_true",
        help="print every config key with its default as KEY=VALUE (YAML values) and exit",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. phase2.lr=1e-4"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beholder.config import (
        DEFAULT_RECIPE,
        TrainConfig,
        config_from_dict,
        load_config,
        read_yaml,
        to_flat_dict,
        yaml_scalar,
    )

    if args.list_keys:
        for key, value in to_flat_dict(TrainConfig()).items():
            print(f"{key}={yaml_scalar(value)}")
        return 0
    if args.data is None or args.out is None:
        raise ConfigError("--data PREPARED_DIR and --out RUN_DIR are required")
    base = None
    source = args.config
    if args.resume and source is None:
        saved = args.out / "config.yaml"
        if not saved.is_file():
            raise ConfigError(f"nothing to resume: {saved} does not exist")
        base = config_from_dict(read_yaml(saved))
    elif source is None:
        source = DEFAULT_RECIPE
    config = load_config(source, args.overrides, base=base)

    from beholder.training import fit

    rank0 = os.environ.get("RANK", "0") == "0"

    def show(row: dict[str, Any], line: str) -> None:
        print(line, flush=True)

    def resumed(epoch: int) -> None:
        if rank0:
            print(f"resumed from epoch {epoch}", flush=True)

    summary = fit(config, args.data, args.out, resume=args.resume, on_epoch_end=show, on_resume=resumed)
    if not rank0:
        return 0
    if summary["best_epoch"] is not None:
        print(
            f"done: best epoch {summary['best_epoch']} val EMD {summary['best_val_emd']:.4f} "
            f"SRCC {summary['best_val_srcc']:.3f}; {summary['images_seen']} images in {summary['total_seconds']:.0f} s"
        )
    if summary["best_checkpoint"] is not None:
        print(
            f"run directory: {args.out}  (score with: beholder score --checkpoint {summary['best_checkpoint']} IMAGES)"
        )
    else:
        print(f"run directory: {args.out}  (no best checkpoint: no epoch was finished)")
    return 0

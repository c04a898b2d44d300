"""Arguments and helpers shared by the commands that load a model (score, evaluate, serve, export)."""

from __future__ import annotations

import argparse
from typing import Any, Optional


def add_model_arguments(parser: argparse.ArgumentParser, runtime: Optional[str] = "torch") -> None:
    """``--model NAME | --checkpoint FILE``, ``--weights FILE``, ``--device`` and ``--runtime``.

    ``runtime`` is the default runtime, or None for commands that never run the model (export).
    """
    from beholder.defaults import DEFAULT_MODEL

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", default=None, help=f"registered model name (default: {DEFAULT_MODEL})")
    group.add_argument("--checkpoint", default=None, help="a checkpoint written by `beholder train`")
    parser.add_argument(
        "--weights", default=None, help="weights file for --model, instead of the resolved one"
    )
    parser.add_argument(
        "--device", default=None, help="torch device, e.g. cpu or cuda (default: cuda if available)"
    )
    if runtime is not None:
        parser.add_argument(
            "--runtime",
            default=runtime,
            help=f"inference runtime: torch, onnx, openvino or auto (the fastest installed); default {runtime}",
        )


def scorer_from_args(args: argparse.Namespace, **kwargs: Any):
    """Build the :class:`~beholder.inference.Scorer` the model arguments ask for."""
    from beholder.defaults import DEFAULT_MODEL
    from beholder.errors import ConfigError
    from beholder.inference import Scorer

    options = {"device": args.device, "runtime": getattr(args, "runtime", "torch"), **kwargs}
    if args.checkpoint:
        if args.weights:
            raise ConfigError("--weights applies to --model, not to --checkpoint")
        return Scorer.from_checkpoint(args.checkpoint, **options)
    return Scorer.from_pretrained(args.model or DEFAULT_MODEL, weights=args.weights, **options)

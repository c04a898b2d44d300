"""Arguments and helpers shared by the commands that load a model (score, evaluate, serve, export)."""

from __future__ import annotations

import argparse
from typing import Any, Optional


def add_model_arguments(
    parser: argparse.ArgumentParser, runtime: Optional[str] = "default", onnx: bool = False
) -> None:
    """``--model NAME | --checkpoint FILE [| --onnx FILE]``, ``--weights FILE``, ``--device``, ``--runtime``.

    ``runtime`` is the default runtime (``"default"``: :func:`default_runtime`, so that every command
    that scores uses the same engine), or None for commands that never run the model (export).
    ``onnx`` offers ``--onnx FILE``: score with an ONNX file written by ``beholder export``.
    """
    if runtime == "default":
        runtime = default_runtime()
    from beholder.defaults import DEFAULT_MODEL

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", default=None, help=f"registered model name (default: {DEFAULT_MODEL})")
    group.add_argument("--checkpoint", default=None, help="a checkpoint written by `beholder train`")
    if onnx:
        group.add_argument(
            "--onnx",
            default=None,
            metavar="FILE",
            help="an ONNX file written by `beholder export` (checked against its metadata before use)",
        )
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


def default_runtime() -> str:
    """``auto`` where ONNX Runtime is installed (it scores without importing torch), else ``torch``."""
    import importlib.util

    return "auto" if importlib.util.find_spec("onnxruntime") is not None else "torch"


def scorer_from_args(args: argparse.Namespace, **kwargs: Any):
    """Build the :class:`~beholder.inference.Scorer` the model arguments ask for."""
    from beholder.defaults import DEFAULT_MODEL
    from beholder.errors import ConfigError
    from beholder.inference import Scorer

    options = {"device": args.device, "runtime": getattr(args, "runtime", "torch"), **kwargs}
    if getattr(args, "onnx", None):
        if args.weights:
            raise ConfigError("--weights applies to --model, not to --onnx")
        return Scorer.from_onnx(args.onnx, **options)
    if args.checkpoint:
        if args.weights:
            raise ConfigError("--weights applies to --model, not to --checkpoint")
        return Scorer.from_checkpoint(args.checkpoint, **options)
    return Scorer.from_pretrained(args.model or DEFAULT_MODEL, weights=args.weights, **options)

"""Arguments and helpers shared by the commands that load a model (score, evaluate, serve, export)."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_arguments(
    parser: argparse.ArgumentParser, runtime: str | None = "default", onnx: bool = False
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
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="also load an old-format --checkpoint (NumPy RNG state inside); anything that could "
        "run code is still refused",
    )
    if runtime is not None:
        parser.add_argument(
            "--runtime",
            default=runtime,
            help="inference runtime: torch, onnx, openvino, openvino-int8 (faster, means within about 0.02) "
            f"or auto (the fastest exact one installed); default {runtime}",
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

    check_device(args.device)
    options = {"device": args.device, "runtime": getattr(args, "runtime", "torch"), **kwargs}
    if getattr(args, "onnx", None):
        if args.weights:
            raise ConfigError("--weights applies to --model, not to --onnx")
        return Scorer.from_onnx(args.onnx, **options)
    if args.checkpoint:
        if args.weights:
            raise ConfigError("--weights applies to --model, not to --checkpoint")
        if args.trust_checkpoint:
            from beholder.models import load_checkpoint

            model, _ = load_checkpoint(args.checkpoint, trust=True)
            return Scorer(model, name=str(args.checkpoint), **options)
        return Scorer.from_checkpoint(args.checkpoint, **options)
    return Scorer.from_pretrained(args.model or DEFAULT_MODEL, weights=args.weights, **options)


def check_device(device: str | None) -> None:
    """A ConfigError (one line, exit 2) for a device that is not a torch device or not present."""
    if device is None:
        return
    import torch

    from beholder.errors import ConfigError

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"--device {device}: Apple's MPS is not available on this machine; use --device cpu"
        )

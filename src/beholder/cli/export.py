"""export a model to ONNX (dynamic batch, preprocessing in the metadata)

Export a registered model or a checkpoint to ONNX: input 'images' float32 (batch, 3, H, W)
preprocessed as the metadata 'beholder.preprocessing' says, output the rating distribution over
1..10 (or logits). Verified with onnx.checker.
"""

from __future__ import annotations

import argparse
import sys

from beholder.cli import add_command
from beholder.cli._common import add_model_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(subparsers, "export", __doc__)
    add_model_arguments(parser, runtime=None)
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="output format (onnx)")
    parser.add_argument("--out", required=True, metavar="FILE", help="file to write, e.g. nima.onnx")
    parser.add_argument(
        "--opset",
        type=int,
        default=None,
        help="ONNX opset (default 18); one the installed exporter cannot write is refused, never replaced",
    )
    parser.add_argument(
        "--output",
        choices=["probabilities", "logits"],
        default="probabilities",
        help="graph output: probabilities (softmax included, default) or logits",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from beholder.errors import ConfigError
    from beholder.export import DEFAULT_OPSET, export_onnx, load_onnx_metadata
    from beholder.models import create_model, get_model_spec, load_checkpoint
    from beholder.models.registry import DEFAULT_MODEL
    from beholder.weights import sha256_file

    if args.checkpoint:
        if args.weights:
            raise ConfigError("--weights applies to --model, not to --checkpoint")
        model, payload = load_checkpoint(args.checkpoint, trust=args.trust_checkpoint)
        name = str(args.checkpoint)
        provenance = {**payload.get("provenance", {}), "checkpoint_sha256": sha256_file(args.checkpoint)}
    else:
        name = args.model or DEFAULT_MODEL
        spec = get_model_spec(name)
        model = create_model(name, weights=args.weights)
        provenance = {"weights": spec.weights.to_dict(), "trained_on": spec.trained_on}
        if args.weights:
            provenance["weights_file_sha256"] = sha256_file(args.weights)
    path = export_onnx(
        model,
        args.out,
        opset=args.opset or DEFAULT_OPSET,
        output=args.output,
        name=name,
        provenance=provenance,
    )
    metadata = load_onnx_metadata(path)
    pre = metadata["preprocessing"]
    print(
        f"wrote {path}: {name}, opset {metadata['opset']}, output {metadata['output']}, "
        f"input (batch, 3, {', '.join(str(v) for v in metadata['input']['shape'][2:])}), "
        f"preprocessing resize {pre['resize']} {pre['interpolation']}, crop {pre['crop']}",
        file=sys.stderr,
    )
    return 0

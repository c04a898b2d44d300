"""Convert idealo's NIMA MobileNet weights (Keras h5) into the safetensors file the package ships.

    python scripts/convert_idealo_weights.py weights_mobilenet_aesthetic_0.07.hdf5 [--dtype float32]

The source is checked against the sha256 pinned in the model registry, loaded with Beholder's own
Keras h5 reader into the registered architecture, and its ``state_dict`` is written to
``src/beholder/resources/nima_mobilenet_idealo.safetensors`` with its provenance in the file's
metadata: one sorted JSON string under the key ``beholder`` (safetensors writes separate metadata
keys in a random order). With no timestamps or library versions in it, the output is
deterministic: rerunning the script reproduces the committed file byte for byte, and the sha256
pinned in the registry's ``packaged`` entry.

Floating-point tensors are stored as ``--dtype``: float32 by default, because float16 (half the
size) moves means by up to 0.023 (``benchmarks/weights_precision.py`` measures it). float16 files
load too, upcast to float32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from beholder.models.nima import build_nima, load_keras_nima_weights  # noqa: E402
from beholder.models.registry import DEFAULT_MODEL, get_model_spec  # noqa: E402
from beholder.weights import PACKAGED_FORMAT, PACKAGED_FORMAT_VERSION, packaged_path, sha256_file  # noqa: E402

DTYPES = {"float16": torch.float16, "float32": torch.float32}


def convert(source: Path, dtype: str) -> dict[str, torch.Tensor]:
    """The registered default model's state_dict, loaded from ``source``, floats cast to ``dtype``."""
    spec = get_model_spec(DEFAULT_MODEL)
    actual = sha256_file(source)
    if actual != spec.weights.sha256:
        raise SystemExit(f"{source}: sha256 {actual} is not idealo's file ({spec.weights.sha256})")
    model = build_nima(spec.architecture, preprocessing=spec.preprocessing)
    load_keras_nima_weights(model, source)
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().contiguous()
        state[name] = tensor.to(DTYPES[dtype]) if tensor.is_floating_point() else tensor
    return state


def metadata(source: Path, dtype: str) -> dict[str, str]:
    spec = get_model_spec(DEFAULT_MODEL)
    return {
        "format": PACKAGED_FORMAT,
        "format_version": str(PACKAGED_FORMAT_VERSION),
        "model": spec.name,
        "architecture": json.dumps(spec.architecture.to_dict(), sort_keys=True),
        "dtype": dtype,
        "source_file": spec.weights.filename,
        "source_url": spec.weights.url or "",
        "source_sha256": sha256_file(source),
        "source": spec.weights.source,
        "license": spec.weights.license,
        "converted_by": "scripts/convert_idealo_weights.py",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="idealo's weights_mobilenet_aesthetic_0.07.hdf5")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--out", type=Path, default=None, help="default: the packaged file")
    args = parser.parse_args(argv)
    spec = get_model_spec(DEFAULT_MODEL)
    out = args.out or packaged_path(spec.packaged.filename)
    state = convert(args.source, args.dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    save_file(
        state,
        str(temporary),
        metadata={"beholder": json.dumps(metadata(args.source, args.dtype), sort_keys=True)},
    )
    temporary.replace(out)
    digest = sha256_file(out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes, {args.dtype}), sha256 {digest}")
    if digest != spec.packaged.sha256:
        print("note: this differs from the sha256 pinned in beholder/models/registry.py; update the pin")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

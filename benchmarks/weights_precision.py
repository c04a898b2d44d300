"""What storing the packaged weights in float16 costs in scores (both are computed in float32).

    python benchmarks/weights_precision.py --ava AVA_SAMPLE_IMAGES --h5 weights_mobilenet_aesthetic_0.07.hdf5

Converts idealo's h5 to float16 and float32 safetensors with ``scripts/convert_idealo_weights.py``
(into a temporary folder), loads each the way the package does, and prints mean and max |Δmean|
against the model loaded straight from the h5, on the real AVA sample images and on generated
photo-like images. The packaged file is float16 when the max |Δmean| is at most 0.005.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from beholder.models.nima import build_nima, load_keras_nima_weights  # noqa: E402
from beholder.models.registry import DEFAULT_MODEL, get_model_spec  # noqa: E402
from beholder.preprocessing import build_eval_transform  # noqa: E402
from beholder.synthetic import photo_like  # noqa: E402
from beholder.weights import load_packaged_state_dict  # noqa: E402

SCORES = torch.arange(1, 11, dtype=torch.float64)


def load_converter():
    path = ROOT / "scripts" / "convert_idealo_weights.py"
    module_spec = importlib.util.spec_from_file_location("convert_idealo_weights", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def means(model: torch.nn.Module, batch: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        probabilities = torch.softmax(model(batch).double(), dim=-1)
    return (probabilities @ SCORES).numpy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ava", type=Path, required=True, help="folder of real photos (the AVA sample)")
    parser.add_argument(
        "--h5", type=Path, required=True, help="idealo's weights_mobilenet_aesthetic_0.07.hdf5"
    )
    parser.add_argument("--generated", type=int, default=64)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    spec = get_model_spec(DEFAULT_MODEL)
    transform = build_eval_transform(spec.preprocessing)
    real = sorted(args.ava.glob("*.jpg"))
    images = [Image.open(path).convert("RGB") for path in real]
    images += [photo_like(800, 600, 10_000 + seed) for seed in range(args.generated)]
    batch = torch.stack([transform(image) for image in images])
    reference = build_nima(spec.architecture, preprocessing=spec.preprocessing)
    load_keras_nima_weights(reference, args.h5)
    expected = means(reference.eval(), batch)
    converter = load_converter()
    print(
        f"{len(real)} real + {args.generated} generated images; |Δmean| against the h5 model, float32 compute"
    )
    print(f"{'storage':8} {'bytes':>11} {'real mean':>10} {'real max':>9} {'all mean':>9} {'all max':>8}")
    with tempfile.TemporaryDirectory() as folder:
        for dtype in ("float16", "float32"):
            out = Path(folder) / f"{dtype}.safetensors"
            converter.main([str(args.h5), "--dtype", dtype, "--out", str(out)])
            model = build_nima(spec.architecture, preprocessing=spec.preprocessing)
            stored = spec.packaged.__class__(**{**spec.packaged.to_dict(), "sha256": None})
            model.load_state_dict(load_packaged_state_dict(stored, out))
            delta = np.abs(means(model.eval(), batch) - expected)
            print(
                f"{dtype:8} {out.stat().st_size:>11,} {delta[: len(real)].mean():>10.6f} "
                f"{delta[: len(real)].max():>9.6f} {delta.mean():>9.6f} {delta.max():>8.6f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

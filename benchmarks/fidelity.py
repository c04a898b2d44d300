"""How far ``fidelity="fast"`` (JPEG DCT-scaled decode, then the model's resize) drifts from ``exact``.

For each size (12 MP 4032x3024, 2 MP 1632x1224, 0.5 MP 816x612) it writes N seeded photo-like
JPEGs at q90, scores them with idealo's NIMA through ONNX Runtime in both fidelities, and prints
the SRCC of fast against exact and the mean and maximum |delta mean|. It also checks that exact
reproduces idealo's Keras reference means on the AVA sample images when they are given.

Usage: ``python benchmarks/fidelity.py --weights-dir DIR [--images 64] [--samples DIR]``, where DIR
holds ``weights_mobilenet_aesthetic_0.07.hdf5`` (exported once to ONNX in a temporary folder).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from beholder.imageio import is_image_file
from beholder.preprocessing import load_input
from beholder.ratings import SCORES
from beholder.synthetic import write_photo_jpegs

SIZES = {"12 MP": (4032, 3024), "2 MP": (1632, 1224), "0.5 MP": (816, 612)}
KERAS_MEANS = {
    "42039": 5.154,
    "42040": 4.232,
    "42041": 5.450,
    "42042": 5.164,
    "42044": 5.729,
    "800749": 6.081,
}


def export_idealo(folder: Path) -> tuple[str, object]:
    from beholder.export import export_onnx
    from beholder.models import create_model

    model = create_model(progress=False)
    path = export_onnx(model, folder / "idealo.onnx", name="idealo")
    return str(path), model.preprocessing


def means(session, paths: list[str], pre, fidelity: str, threads: int = 2) -> np.ndarray:
    with ThreadPoolExecutor(threads) as pool:
        inputs = list(pool.map(lambda p: load_input(p, pre, fidelity=fidelity), paths))
    out = []
    for start in range(0, len(inputs), 32):
        probabilities = session.run(None, {"images": np.stack(inputs[start : start + 32])})[0]
        out.append(probabilities @ np.asarray(SCORES, np.float64))
    return np.concatenate(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", required=True)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--samples", default=None, help="AVA sample images, to check exact against Keras")
    parser.add_argument("--workdir", default=None, help="keep generated JPEGs here (default: temporary)")
    args = parser.parse_args(argv)
    os.environ["BEHOLDER_WEIGHTS_PATH"] = args.weights_dir

    import onnxruntime as ort
    from scipy.stats import spearmanr

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        onnx_path, pre = export_idealo(Path(tmp))
        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        if args.samples:
            paths = sorted(str(p) for p in Path(args.samples).iterdir() if is_image_file(p))
            exact = means(session, paths, pre, "exact")
            worst = max(abs(m - KERAS_MEANS[Path(p).stem]) for p, m in zip(paths, exact))
            print(f"exact vs idealo Keras reference on {len(paths)} AVA images: max |delta mean| {worst:.4f}")
        print("| size | images | SRCC fast vs exact | mean abs delta mean | max abs delta mean |")
        print("|---|---|---|---|---|")
        for label, size in SIZES.items():
            paths = write_photo_jpegs(work / label.replace(" ", ""), size, args.images, seed=1000)
            exact, fast = means(session, paths, pre, "exact"), means(session, paths, pre, "fast")
            delta = np.abs(fast - exact)
            srcc = spearmanr(exact, fast).statistic
            print(
                f"| {label} {size[0]}x{size[1]} | {len(paths)} | {srcc:.4f} | {delta.mean():.4f} | {delta.max():.4f} |"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()

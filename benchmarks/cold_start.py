"""Cold start: `beholder score ONE.jpg` as a whole process, against a minimal PIL + onnxruntime script.

Both read the same cached ONNX file (the default model's export in a private ``BEHOLDER_ONNX_CACHE``)
and score the same photo-like JPEG; each run is a fresh interpreter, timed from spawn to exit. Runs
are interleaved (beholder, script, beholder, script...) so that load from other processes hits both
alike, and the median ratio is printed. Also timed once each: the very first run (empty cache: the
model is exported, then scored) and ``--runtime torch``.

Usage: ``python benchmarks/cold_start.py [--runs 5] [--size 4032x3024]``. Target: ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photo_like import write_photo_jpegs

#: What a user would write with PIL and onnxruntime alone: decode, nearest 224x224, x/127.5-1, run.
MINIMAL_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
from PIL import Image

model, image = sys.argv[1], sys.argv[2]
pixels = np.asarray(Image.open(image).convert("RGB").resize((224, 224), Image.NEAREST), np.float32)
batch = (pixels / 127.5 - 1.0).transpose(2, 0, 1)[None]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
probabilities = session.run(None, {"images": batch})[0][0]
print(image, float(probabilities @ np.arange(1, 11)))
"""


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.stdout.strip()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command (at least 3)")
    parser.add_argument("--size", default="4032x3024", help="the photo's WIDTHxHEIGHT (default 12 MP)")
    args = parser.parse_args(argv)
    if args.runs < 3:
        parser.error("--runs must be at least 3")
    width, height = (int(v) for v in args.size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (image,) = write_photo_jpegs(work / "photo", (width, height), 1, seed=7)
        cache = work / "onnx"
        env = {**os.environ, "BEHOLDER_ONNX_CACHE": str(cache), "BEHOLDER_CACHE": str(work / "cache")}
        env.pop("BEHOLDER_WEIGHTS_PATH", None)
        beholder = [sys.executable, "-m", "beholder", "score", "--no-progress", image]

        first, _ = timed(beholder, env)  # exports the model into the empty cache, then scores
        (onnx_file,) = cache.glob("*.onnx")
        script = [sys.executable, "-c", MINIMAL_SCRIPT, str(onnx_file), image]
        times: dict[str, list[float]] = {"beholder score": [], "PIL + onnxruntime script": []}
        outputs = {}
        for _ in range(args.runs):
            for name, command in (("beholder score", beholder), ("PIL + onnxruntime script", script)):
                seconds, outputs[name] = timed(command, env)
                times[name].append(seconds)
        torch_seconds, _ = timed([*beholder[:-1], "--runtime", "torch", image], env)

        print(
            f"one {width}x{height} JPEG ({os.path.getsize(image) / 1e6:.2f} MB), {args.runs} interleaved runs each"
        )
        print(f"{'command':<44} {'median s':>9} {'min s':>7} {'max s':>7}")
        for name, values in times.items():
            print(f"{name:<44} {statistics.median(values):9.3f} {min(values):7.3f} {max(values):7.3f}")
        ratio = statistics.median(times["beholder score"]) / statistics.median(
            times["PIL + onnxruntime script"]
        )
        print(f"median ratio beholder / script: {ratio:.2f}x (target <= 1.5x)")
        print(f"first run, empty cache (export + score): {first:.2f} s")
        print(f"beholder score --runtime torch (one run): {torch_seconds:.2f} s")
        print("outputs:", *(f"  {name}: {text.splitlines()[-1]}" for name, text in outputs.items()), sep="\n")


if __name__ == "__main__":
    main()

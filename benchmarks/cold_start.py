"""Cold start: `beholder score ONE.jpg` as a whole process, against a minimal PIL + onnxruntime script.

All score the same photo-like JPEG; each run is a fresh interpreter, timed from spawn to exit. Runs
are interleaved (first run, cache hit, script, first run...) so that load from other processes hits
them alike, and the median ratios are printed:

* "first run, empty cache": ``beholder score`` with a new, empty cache folder every time, as a new
  user's first run (the default model's ONNX file ships in the package: nothing is exported);
* "cache hit": ``beholder score`` with the packaged ONNX file hidden, on the export cache filled
  once before the loop (what ``--weights FILE`` and checkpoints do from their second run);
* the script runs the packaged ONNX file.

Also timed once each: the first run with the packaged ONNX file hidden (the model is exported, then
scored; this fills the cache) and ``--runtime torch``.

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

from beholder.synthetic import write_photo_jpegs

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


#: ``beholder`` as a command, with the registry's packaged ONNX file hidden (as tests/test_fast_path does).
WITHOUT_PACKAGED_ONNX = """
import sys
from beholder.models.registry import ModelSpec
ModelSpec.verified_packaged_onnx = lambda self: None
from beholder.cli import main
sys.exit(main(sys.argv[1:]))
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

    from beholder.models.registry import DEFAULT_MODEL, get_model_spec

    packaged = get_model_spec(DEFAULT_MODEL).verified_packaged_onnx()
    if packaged is None:
        raise SystemExit("the default model's packaged ONNX file is missing or damaged")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (image,) = write_photo_jpegs(work / "photo", (width, height), 1, seed=7)
        cache = work / "onnx"
        env = {**os.environ, "BEHOLDER_ONNX_CACHE": str(cache), "BEHOLDER_CACHE": str(work / "cache")}
        env.pop("BEHOLDER_WEIGHTS_PATH", None)
        score = ["score", "--no-progress", image]
        beholder = [sys.executable, "-m", "beholder", *score]
        hidden = [sys.executable, "-c", WITHOUT_PACKAGED_ONNX, *score]

        exported, _ = timed(hidden, env)  # exports the model into the empty cache, then scores
        if len(list(cache.glob("*.onnx"))) != 1:
            raise SystemExit(f"the export did not fill the cache {cache}")
        script = [sys.executable, "-c", MINIMAL_SCRIPT, str(packaged), image]
        names = ("first run, empty cache", "cache hit (packaged ONNX hidden)", "PIL + onnxruntime script")
        times: dict[str, list[float]] = {name: [] for name in names}
        outputs = {}
        for run in range(args.runs):
            empty = work / f"empty-{run}"  # a new user's first run: caches that do not exist yet
            first_env = {**env, "BEHOLDER_ONNX_CACHE": str(empty / "onnx"), "BEHOLDER_CACHE": str(empty)}
            for name, command, run_env in zip(names, (beholder, hidden, script), (first_env, env, env)):
                seconds, outputs[name] = timed(command, run_env)
                times[name].append(seconds)
            if empty.exists():
                raise SystemExit(f"the first run wrote into its empty cache: {sorted(empty.rglob('*'))}")
        torch_seconds, _ = timed([*beholder[:-1], "--runtime", "torch", image], env)

        print(
            f"one {width}x{height} JPEG ({os.path.getsize(image) / 1e6:.2f} MB), {args.runs} interleaved runs each"
        )
        print(f"{'command':<44} {'median s':>9} {'min s':>7} {'max s':>7}")
        for name, values in times.items():
            print(f"{name:<44} {statistics.median(values):9.3f} {min(values):7.3f} {max(values):7.3f}")
        baseline = statistics.median(times["PIL + onnxruntime script"])
        for name in names[:2]:
            ratio = statistics.median(times[name]) / baseline
            print(f"median ratio {name} / script: {ratio:.2f}x (target <= 1.5x)")
        print(f"first run with the packaged ONNX file hidden (export + score, once): {exported:.2f} s")
        print(f"beholder score --runtime torch (one run): {torch_seconds:.2f} s")
        print("outputs:", *(f"  {name}: {text.splitlines()[-1]}" for name, text in outputs.items()), sep="\n")


if __name__ == "__main__":
    main()

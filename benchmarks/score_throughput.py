"""End-to-end scoring throughput: Beholder's Scorer against a plain eager fp32 PyTorch loop.

Generates N 800x600 JPEGs, then times, in the same process and on the same files:

* baseline: PIL open -> resize -> to tensor -> model, batch 32, one thread of decoding, eager
  fp32, NCHW, ``torch.no_grad`` (what most NIMA scripts do);
* the :class:`~beholder.inference.Scorer` with each installed runtime (decoding on threads,
  overlapped with the model, fused BatchNorm, channels_last, ``inference_mode``);
* the same with a bilinear-preprocessing model, where JPEG draft decoding is allowed.

Weights do not change the speed, so the model is the default model's architecture with random
weights (no download needed). Usage: ``python benchmarks/score_throughput.py [--images 256]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Callable, List

import numpy as np
import torch
from PIL import Image

from beholder.inference import Scorer
from beholder.models import build_nima, get_model_spec
from beholder.models.registry import DEFAULT_MODEL
from beholder.preprocessing import build_eval_transform
from beholder.runtimes import available_runtimes, create_runtime


def make_jpegs(directory: Path, count: int, seed: int = 0) -> List[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        # Smooth gradients plus noise: compresses like a photo, not like flat colour or pure noise.
        y, x = np.mgrid[0:600, 0:800]
        base = np.stack([x / 800, y / 600, (x + y) / 1400], -1) * 255 * rng.uniform(0.5, 1.0, 3)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = directory / f"img_{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def baseline(model: torch.nn.Module, paths: List[str], batch_size: int) -> None:
    transform = build_eval_transform(model.preprocessing)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack(
                [transform(Image.open(p).convert("RGB")) for p in paths[start : start + batch_size]]
            )
            torch.softmax(model(batch), dim=-1)


def timed(function: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="best of N timed passes per row")
    parser.add_argument("--runtimes", nargs="*", default=None, help="default: every installed runtime")
    args = parser.parse_args(argv)

    spec = get_model_spec(DEFAULT_MODEL)
    torch.manual_seed(0)
    model = build_nima(spec.architecture, preprocessing=spec.preprocessing).eval()
    bilinear = dataclasses.replace(spec.preprocessing, interpolation="bilinear")
    bilinear_model = build_nima(spec.architecture, preprocessing=bilinear).eval()
    bilinear_model.load_state_dict(model.state_dict())

    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp), args.images)
        print(
            f"{args.images} JPEGs 800x600, batch {args.batch_size}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, best of {args.repeats}"
        )
        rows = [("baseline: eager fp32, PIL, 1 process", lambda: baseline(model, paths, args.batch_size))]
        for runtime in args.runtimes or [*available_runtimes(), "auto"]:
            scorer = Scorer(model, runtime=runtime, batch_size=args.batch_size)
            label = runtime if runtime != "auto" else f"auto (-> {scorer.runtime.name})"
            rows.append((f"beholder Scorer, runtime={label}", lambda s=scorer: s.score(paths)))
        draft_scorer = Scorer(bilinear_model, batch_size=args.batch_size)
        rows.append(
            ("beholder Scorer, torch, bilinear model (JPEG draft)", lambda: draft_scorer.score(paths))
        )

        reference = None
        print(f"{'configuration':<55} {'img/s':>8} {'ratio':>7}")
        for name, function in rows:
            function()  # warm-up: thread pools, oneDNN kernels, runtime sessions
            seconds = timed(function, args.repeats)
            rate = args.images / seconds
            reference = reference or rate
            print(f"{name:<55} {rate:8.1f} {rate / reference:6.2f}x")

        model_only(model, draft_scorer.preprocess(paths[0]), args)


def model_only(model: torch.nn.Module, image: torch.Tensor, args) -> None:
    """The model alone on a preprocessed batch: each runtime against eager fp32 (unfused, NCHW).

    Runs are interleaved (one call of each, repeated), so that load from other processes on a
    shared machine hits every row alike; prints the best and the median.
    """
    batch = image.expand(args.batch_size, *image.shape).contiguous()  # (B, 3, H, W)

    def eager(x):
        with torch.no_grad():
            return torch.softmax(model(x), dim=-1)

    calls = {"eager fp32 (no fusion, NCHW, no_grad)": eager}
    for runtime in args.runtimes or available_runtimes():
        calls[f"runtime={runtime}"] = create_runtime(runtime, model)
    times = {name: [] for name in calls}
    for call in calls.values():
        call(batch)  # warm-up
    for _ in range(max(5, 3 * args.repeats)):
        for name, call in calls.items():
            start = time.perf_counter()
            call(batch)
            times[name].append(time.perf_counter() - start)
    print(
        f"\nmodel only: preprocessed batch of {args.batch_size}, no decoding (best, median of {len(times[name])})"
    )
    print(f"{'configuration':<55} {'img/s':>8} {'ratio':>7} {'median':>8}")
    reference = args.batch_size / min(next(iter(times.values())))
    for name, seconds in times.items():
        best, median = args.batch_size / min(seconds), args.batch_size / float(np.median(seconds))
        print(f"{name:<55} {best:8.1f} {best / reference:6.2f}x {median:8.1f}")


if __name__ == "__main__":
    main()

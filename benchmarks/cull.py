"""Culling throughput: ``cull`` (decode once, thumbnail, pHash, score, group, stars) against ``score``.

Generates a shoot of N photos (bursts of 4 near-duplicates and single frames, with EXIF capture
times, as ``tests/cull_helpers.py`` makes them, at 12 MP by default), then times, in the same
process, on the same files, with the same Scorer:

* ``Scorer.score(paths)``: what ``beholder score`` does;
* ``cull(paths, scorer)``: what ``beholder cull`` does before writing anything;
* the same plus the report (thumbnails, cull.json, cull.csv, index.html);
* and, separately, the grouping/picking/stars step alone on the analysed photos.

Weights do not change the speed, so the model is the default model's architecture with random
weights (no download needed). Usage: ``python benchmarks/cull.py [--photos 500] [--size 4000x3000]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from beholder.cull import cull, decide, write_report
from beholder.inference import Scorer
from beholder.models import build_nima, get_model_spec
from beholder.models.registry import DEFAULT_MODEL
from cull_helpers import MARGIN, SHOOT_START, render_scene, write_frame


def make_shoot(folder: Path, count: int, size: tuple[int, int]) -> list[str]:
    """``count`` photos: bursts of 4 frames 0.3 s apart, then a single frame, repeated.

    Scenes are rendered at 800 px and scaled up to ``size`` (rendering texture noise at 12 MP
    takes seconds per photo); a 12 MP JPEG costs the same to decode either way.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    small = (800, max(1, round(800 * size[1] / size[0])))
    paths, moment, scene_number = [], SHOOT_START, 0
    while len(paths) < count:
        scene_number += 1
        frames = 4 if scene_number % 2 else 1
        scene = render_scene(scene_number, small)
        scene = scene.resize((size[0] + 2 * MARGIN, size[1] + 2 * MARGIN), Image.Resampling.BICUBIC)
        for k in range(min(frames, count - len(paths))):
            shift = tuple(int(v) for v in rng.integers(-4, 5, 2)) if k else (0, 0)
            path = folder / f"IMG_{len(paths):04d}.jpg"
            write_frame(scene, path, shift, moment, quality=90)
            paths.append(str(path))
            moment += dt.timedelta(seconds=0.3 if k < frames - 1 else 1.5)
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the generated photos")
    parser.add_argument("--runtime", default="torch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="best of N timed passes per row")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))

    spec = get_model_spec(DEFAULT_MODEL)
    torch.manual_seed(0)
    model = build_nima(spec.architecture, preprocessing=spec.preprocessing).eval()
    scorer = Scorer(model, runtime=args.runtime, batch_size=args.batch_size)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = make_shoot(Path(tmp) / "shoot", args.photos, size)
        print(f"generated {len(paths)} photos {size[0]}x{size[1]} in {time.perf_counter() - start:.0f} s")
        print(
            f"runtime {args.runtime}, batch {args.batch_size}, {scorer.workers} decode threads, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), best of {args.repeats}"
        )
        cull(paths[: args.batch_size], scorer, progress=False)  # warm-up: imports, thread pools, kernels

        results = {}

        def culled():
            results["cull"] = cull(paths, scorer, progress=False)

        def with_report():
            write_report(cull(paths, scorer, progress=False), Path(tmp) / "report")

        rows = [
            ("score (Scorer.score)", lambda: scorer.score(paths)),
            ("cull (decode once, pHash, score, group)", culled),
            ("cull + report (thumbnails, json, csv, html)", with_report),
        ]
        best = {name: float("inf") for name, _ in rows}
        for _ in range(args.repeats):  # interleaved, so that load on a shared machine hits every row
            for name, function in rows:
                start = time.perf_counter()
                function()
                best[name] = min(best[name], time.perf_counter() - start)
        reference = len(paths) / best[rows[0][0]]
        print(f"{'configuration':<46} {'photos/s':>9} {'ratio':>7}")
        for name, seconds in best.items():
            rate = len(paths) / seconds
            print(f"{name:<46} {rate:9.2f} {rate / reference:6.2f}x")

        start = time.perf_counter()
        result = decide(results["cull"].photos, group_seconds=2.0, similarity=0.8, keep=1)
        grouping = time.perf_counter() - start
        print(
            f"grouping, picks and stars alone: {1000 * grouping:.1f} ms for {len(paths)} photos "
            f"({len(result.groups)} groups)"
        )


if __name__ == "__main__":
    main()

"""Throughput of ``beholder ava prepare`` next to plain PIL decoding of the same files.

Generates photo-like JPEGs into a temporary directory (200 at 800x600 by default), then measures,
in the same run and with the same number of threads:

* plain decode: ``PIL.Image.open(path).load()`` of every file -- the floor any validation pays;
* prepare: parse, validate (complete decode), measure, resize and JPEG-encode the cache, write the
  manifest -- with the default fast (draft) JPEG decoding, and with full-resolution decoding;
* an incremental rerun with nothing changed.

Each figure is the best of ``--repeat`` runs. Usage::

    python benchmarks/prepare_throughput.py [--n 200] [--width 800] [--height 600] [--workers 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from beholder.data.prepare import prepare


def make_images(directory: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """Photo-like JPEGs: smooth colour fields with texture (pure noise would be unrealistically slow)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    # A few textures computed once and mixed per image keep generation cheap.
    textures = [
        (
            20 * np.sin(x / rng.uniform(5, 40) + y / rng.uniform(5, 40)) + rng.normal(0, 6, (height, width))
        ).astype(np.int16)[..., None]
        for _ in range(4)
    ]
    paths = []
    for image_id in range(1, n + 1):
        coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.int16)
        pixels = np.clip(base + textures[image_id % len(textures)], 0, 255).astype(np.uint8)
        path = directory / f"{image_id}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def write_labels(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lines = []
    for image_id in range(1, n + 1):
        votes = rng.integers(0, 50, 10)
        votes[4] += 1  # never zero votes
        lines.append(" ".join(str(v) for v in (image_id, image_id, *votes, 0, 0, 1)))
    path.write_text("\n".join(lines) + "\n")


def plain_decode(paths: list[Path], workers: int) -> float:
    def decode(path: Path) -> tuple[int, int]:
        with Image.open(path) as image:
            image.load()
            return image.size

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(decode, paths):
            pass
    return time.perf_counter() - start


def best_of(repeat: int, run) -> float:
    return min(run(k) for k in range(repeat))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of images (200)")
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--height", type=int, default=600)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="threads for both")
    parser.add_argument("--image-size", type=int, default=256, help="cache side (256)")
    parser.add_argument("--repeat", type=int, default=3, help="report the best of this many runs (3)")
    parser.add_argument("--keep", default=None, help="work in this directory and keep it")
    args = parser.parse_args(argv)

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="beholder-bench-"))
    try:
        t0 = time.perf_counter()
        paths = make_images(root / "images", args.n, args.width, args.height)
        write_labels(root / "AVA.txt", args.n)
        (root / "test.jpgl").write_text("")  # no test split; keeps prepare from warning about it
        mean_kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        print(
            f"{args.n} JPEGs {args.width}x{args.height} (mean {mean_kib:.0f} KiB, generated in "
            f"{time.perf_counter() - t0:.1f} s); {args.workers} threads; cache {args.image_size}px q95 bilinear; "
            f"best of {args.repeat}"
        )
        plain_decode(paths, args.workers)  # warm the page cache and PIL's plugins

        decode_s = best_of(args.repeat, lambda k: plain_decode(paths, args.workers))

        def run_prepare(k: int, fast: bool) -> float:
            out = root / f"prepared-{'fast' if fast else 'full'}-{k}"
            start = time.perf_counter()
            summary = prepare(
                root / "AVA.txt", root / "images", out, test_list=root / "test.jpgl", image_size=args.image_size,
                fast_decode=fast, workers=args.workers, progress=False,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            assert summary["manifest_rows"] == args.n, summary
            return seconds

        fast_s = best_of(args.repeat, lambda k: run_prepare(k, True))
        full_s = best_of(args.repeat, lambda k: run_prepare(k, False))

        def rerun(k: int) -> float:
            start = time.perf_counter()
            summary = prepare(
                root / "AVA.txt", root / "images", root / "prepared-fast-0", test_list=root / "test.jpgl",
                image_size=args.image_size, workers=args.workers, progress=False,
            )  # fmt: skip
            assert summary["images"]["processed"] == 0, summary["images"]
            return time.perf_counter() - start

        rerun_s = best_of(args.repeat, rerun)

        decode_rate = args.n / decode_s
        rows = [
            ("plain decode (PIL open + load)", decode_s),
            ("prepare, fast decode (default)", fast_s),
            ("prepare, full decode (--no-fast-decode)", full_s),
            ("prepare rerun, nothing changed", rerun_s),
        ]
        for label, seconds in rows:
            rate = args.n / seconds
            ratio = "" if label.startswith("plain") else f"   ratio to plain decode {rate / decode_rate:.2f}"
            print(f"{label:<42} {rate:8.1f} img/s  ({seconds:.2f} s){ratio}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

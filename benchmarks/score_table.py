"""Catalogue scoring (`beholder score --table`): memory against table size, and rows per second.

1. Peak RSS of a whole ``beholder score --table`` process for a 2,000-row and a 20,000-row parquet
   table (same images, same model), and their ratio: memory must not grow with the table (target:
   at most 1.5x). Each run is a child of its own small wrapper process, whose
   ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` is then that run's peak alone. A small model (MobileNet
   width 0.25 at 64x64, random weights) keeps the 20,000 rows quick: the table, not the model, is
   what is measured here.
2. Rows per second of the local and the Ray engine (local Ray, ``--num-cpus``) on the same table
   of photo-like 800x600 JPEGs with the default model, ``--runtime auto``, in this process's
   sequence (after a warm-up run that exports and caches the ONNX file for both). Figures include
   start-up and model loading, as a user sees them; the summary's ``rows_per_second``.

Usage: ``python benchmarks/score_table.py [--rows 600] [--num-cpus 2] [--skip-ray]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from beholder.synthetic import write_photo_jpegs

# Runs the command in argv[1:] and prints its peak RSS in KiB (Linux reports ru_maxrss in KiB).
_PEAK_RSS = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)"
)


def small_checkpoint(folder: Path) -> Path:
    import torch

    from beholder.models import Architecture, build_nima, save_checkpoint
    from beholder.preprocessing import Preprocessing

    torch.manual_seed(0)
    model = build_nima(Architecture(alpha=0.25), preprocessing=Preprocessing(resize=(64, 64)))
    return save_checkpoint(folder / "small.pt", model.eval())


def catalogue(folder: Path, images: list[str], rows: int) -> Path:
    """A parquet table of ``rows`` rows over ``images`` (cycled), with a listing's usual text columns."""
    path = folder / f"catalogue-{rows}.parquet"
    table = pa.table(
        {
            "sku": [f"sku-{i:08d}" for i in range(rows)],
            "path": [images[i % len(images)] for i in range(rows)],
            "title": [f"Listing {i}: a bright room with a view over the old harbour" for i in range(rows)],
        }
    )
    pq.write_table(table, path, row_group_size=5000)
    return path


def beholder_score(*args: str) -> list[str]:
    return [sys.executable, "-m", "beholder", "score", "--no-progress", *args]


def peak_rss_mib(command: list[str]) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *command], capture_output=True, text=True, check=True
    )
    kib, code = done.stdout.split()
    if int(code) not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} exited {code}")
    return int(kib) / 1024


def memory(folder: Path) -> None:
    images = write_photo_jpegs(folder / "small", (160, 120), 100)
    checkpoint = small_checkpoint(folder)
    peaks = {}
    for rows in (2_000, 20_000):
        table = catalogue(folder, images, rows)
        out = folder / f"out-{rows}.parquet"
        started = time.perf_counter()
        peaks[rows] = peak_rss_mib(
            beholder_score(
                "--table",
                str(table),
                "--out",
                str(out),
                "--checkpoint",
                str(checkpoint),
                "--runtime",
                "torch",
            )
        )
        seconds = time.perf_counter() - started
        assert pq.ParquetFile(out).metadata.num_rows == rows
        print(
            f"{rows:>6} rows: peak RSS {peaks[rows]:7.1f} MiB, {seconds:6.1f} s, {rows / seconds:6.1f} rows/s"
        )
    print(f"peak RSS 20,000 / 2,000 rows: {peaks[20_000] / peaks[2_000]:.2f}x (target: at most 1.5x)")


def throughput(folder: Path, rows: int, num_cpus: int, skip_ray: bool) -> None:
    images = write_photo_jpegs(folder / "photos", (800, 600), min(rows, 200), seed=1)
    table = catalogue(folder, images, rows)
    (folder / "warm").mkdir()
    warm = catalogue(folder / "warm", images, 8)
    subprocess.run(
        beholder_score("--table", str(warm), "--out", str(folder / "warm.parquet"), "--runtime", "auto"),
        check=False,
        capture_output=True,
    )
    engines = [("local", [])] + (
        [] if skip_ray else [("ray", ["--engine", "ray", "--num-cpus", str(num_cpus)])]
    )
    figures = {}
    for name, extra in engines:
        out = folder / f"throughput-{name}.parquet"
        done = subprocess.run(
            beholder_score("--table", str(table), "--out", str(out), "--runtime", "auto", *extra),
            capture_output=True,
            text=True,
        )
        if done.returncode not in (0, 1):
            raise RuntimeError(done.stderr[-2000:])
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        figures[name] = summary["rows_per_second"]
        print(
            f"{name:>5} engine: {summary['scored']} rows in {summary['seconds']:.1f} s = {figures[name]:.1f} rows/s"
        )
    if "ray" in figures:
        print(f"ray / local: {figures['ray'] / figures['local']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600, help="rows of the throughput table")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="beholder-table-bench-") as tmp:
        folder = Path(tmp)
        os.environ["BEHOLDER_CACHE"] = str(folder / "cache")  # children export into a fresh cache
        if not args.skip_memory:
            memory(folder)
        throughput(folder, args.rows, args.num_cpus, args.skip_ray)


if __name__ == "__main__":
    main()

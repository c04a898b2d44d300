"""Peak memory (RSS) of ``beholder score`` and ``beholder serve`` on inputs that decode huge.

Three cases, each in a fresh process, against a 1.5 GB target per input:

1. ``beholder score`` on one 121 MP 16-bit greyscale PNG (11000 x 11000; a ramp compresses to a
   few hundred kB, decodes to 242 MB of 16-bit pixels);
2. ``beholder score`` on a folder of 1,000 generated images of mixed formats and modes (JPEG, PNG,
   greyscale, palette, alpha, CMYK, 16-bit, four 12 MP 4032 x 3024 JPEGs, a few corrupt or
   truncated);
3. ``beholder serve`` answering one request that uploads four 62 MP 16-bit PNGs at once.

Peak RSS comes from ``/usr/bin/time -v`` ("Maximum resident set size"; ``apt-get install time``),
or, without it, from ``resource.getrusage(RUSAGE_CHILDREN)`` in a wrapper process. A baseline
run (``beholder score`` on one small JPEG; the service before its request) shows what the
interpreter, torch and the model take before any image: the rest is the decode.

Usage: ``python benchmarks/memory.py [--runtime torch] [--keep DIR]``. Exits 1 if a case is over
the target.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

TARGET_BYTES = 1.5e9
_TIME = "/usr/bin/time"
_WRAPPER = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print('Maximum resident set size (kbytes):', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
    "file=sys.stderr); sys.exit(code)"
)


def timed(command: list[str]) -> list[str]:
    """``command`` wrapped so that its peak RSS is printed on stderr when it exits."""
    if os.path.exists(_TIME):
        return [_TIME, "-v", *command]
    return [sys.executable, "-c", _WRAPPER, *command]


def peak_from(stderr: str) -> int:
    match = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", stderr)
    if not match:
        raise RuntimeError(f"no peak RSS in the output:\n{stderr[-2000:]}")
    return int(match.group(1)) * 1024


def beholder(*args: str) -> list[str]:
    return [sys.executable, "-m", "beholder", *args]


# -- inputs ------------------------------------------------------------------------------------


def sixteen_bit_png(path: Path, width: int, height: int) -> Path:
    """A 16-bit greyscale ramp (rows alike, so PNG's 'up' filter makes it tiny on disk)."""
    if path.exists():  # kept from an earlier run (--keep)
        return path
    ramp = np.linspace(0, 65535, width).astype(np.uint16)
    Image.fromarray(np.broadcast_to(ramp, (height, width)).copy()).save(path, compress_level=6)
    return path


def _photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 255 * rng.uniform(0.3, 1, 3)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def mixed_folder(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` images in many formats and modes; every 50th is corrupt or truncated."""
    if folder.is_dir() and len(list(folder.iterdir())) == count:  # kept from an earlier run (--keep)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = ["jpg", "png", "grey", "palette", "rgba", "cmyk", "i16", "la"]
    for index in range(count):
        width, height = int(rng.integers(200, 1400)), int(rng.integers(200, 1100))
        if index % 250 == 0:  # a few 12 MP camera-sized JPEGs (4032 x 3024)
            Image.fromarray(_photo(rng, 4032, 3024)).save(folder / f"{index:04d}-12mp.jpg", quality=90)
            continue
        if index % 50 == 49:  # corrupt: half a JPEG, or bytes that are no image at all
            data = io.BytesIO()
            Image.fromarray(_photo(rng, width, height)).save(data, "JPEG")
            blob = data.getvalue()[: len(data.getvalue()) // 2] if index % 100 == 49 else rng.bytes(5000)
            (folder / f"{index:04d}-corrupt.jpg").write_bytes(blob)
            continue
        kind = kinds[index % len(kinds)]
        image = Image.fromarray(_photo(rng, width, height))
        name = folder / f"{index:04d}-{kind}"
        if kind == "jpg":
            image.save(f"{name}.jpg", quality=85)
        elif kind == "png":
            image.save(f"{name}.png")
        elif kind == "grey":
            image.convert("L").save(f"{name}.jpg")
        elif kind == "palette":
            image.convert("P").save(f"{name}.png")
        elif kind == "rgba":
            image.putalpha(128)
            image.save(f"{name}.png")
        elif kind == "cmyk":
            image.convert("CMYK").save(f"{name}.jpg")
        elif kind == "i16":
            grey = np.asarray(image.convert("L"), np.uint16) * 257
            Image.fromarray(grey).save(f"{name}.png")
        else:
            image.convert("LA").save(f"{name}.png")
    return folder


# -- cases -------------------------------------------------------------------------------------


def score_peak(paths: list[str], runtime: str) -> tuple[int, str]:
    command = timed(beholder("score", "--runtime", runtime, "--format", "csv", "--no-progress", *paths))
    done = subprocess.run(command, capture_output=True, text=True)
    rows = [line for line in done.stdout.splitlines()[1:] if line]
    failed = sum(1 for line in rows if not line.split(",")[1])
    return peak_from(done.stderr), f"exit {done.returncode}, {len(rows)} rows, {failed} per-file errors"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rss(pid: int) -> int:
    import psutil

    process = psutil.Process(pid)
    return max(p.memory_info().rss for p in [process, *process.children(recursive=True)])


def serve_peak(uploads: list[Path], runtime: str) -> tuple[int, int, str]:
    """(peak RSS, RSS before the request, what the request got) of ``beholder serve``."""
    import httpx

    port = _free_port()
    command = timed(beholder("serve", "--runtime", runtime, "--port", str(port), "--log-level", "warning"))
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{server.stderr.read()[-2000:]}")
            time.sleep(0.2)
        idle = _rss(server.pid)
        files = [("files", (path.name, path.read_bytes(), "image/png")) for path in uploads]
        response = httpx.post(f"{url}/v1/score", files=files, timeout=600)
        body = response.json()
        if response.status_code == 200:
            errors = [row["error"] for row in body if "error" in row]
            outcome = f"HTTP 200, {len(body) - len(errors)} scored" + (
                f", errors: {errors}" if errors else ""
            )
        else:
            outcome = f"HTTP {response.status_code}: {body}"
    finally:
        # GNU time ignores SIGINT while it waits, so the group's SIGINT stops only the server.
        os.killpg(server.pid, signal.SIGINT)
        _, stderr = server.communicate(timeout=120)
    return peak_from(stderr), idle, outcome


def report(name: str, peak: int, detail: str, baseline: int | None = None) -> bool:
    over = peak > TARGET_BYTES
    extra = f", {(peak - baseline) / 1e6:+,.0f} MB over the baseline" if baseline is not None else ""
    verdict = "OVER" if over else "under"
    print(
        f"{name:<44} peak RSS {peak / 1e9:5.2f} GB ({verdict} the 1.5 GB target{extra}); {detail}", flush=True
    )
    return not over


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="torch", help="runtime for score and serve (default torch)")
    parser.add_argument(
        "--keep", type=Path, default=None, help="write the inputs here and keep them (reused by a rerun)"
    )
    args = parser.parse_args(argv)
    if not os.path.exists(_TIME):
        print(
            f"{_TIME} not found (apt-get install time): using getrusage of a wrapper process", file=sys.stderr
        )
    work = args.keep or Path(tempfile.mkdtemp(prefix="beholder-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.monotonic()
        small = work / "small.jpg"
        Image.fromarray(_photo(np.random.default_rng(1), 640, 480)).save(small)
        huge = sixteen_bit_png(work / "grey16-121mp.png", 11_000, 11_000)
        quads = [sixteen_bit_png(work / f"grey16-62mp-{n}.png", 7_874, 7_874) for n in range(4)]
        folder = mixed_folder(work / "mixed", 1_000)
        sizes = f"{huge.stat().st_size / 1e3:,.0f} kB; four 62 MP: {sum(q.stat().st_size for q in quads) / 1e3:,.0f} kB"
        print(f"inputs generated in {time.monotonic() - started:.0f} s (121 MP PNG: {sizes})", flush=True)

        baseline, detail = score_peak([str(small)], args.runtime)
        ok = report("baseline: score one 640x480 JPEG", baseline, detail)
        ok &= report("score one 121 MP 16-bit PNG", *score_peak([str(huge)], args.runtime), baseline)
        ok &= report(
            "score a folder of 1,000 mixed images", *score_peak([str(folder)], args.runtime), baseline
        )
        peak, idle, outcome = serve_peak(quads, args.runtime)
        ok &= report("serve: one request of four 62 MP 16-bit PNGs", peak, outcome, idle)
        print(f"(the service's RSS before the request: {idle / 1e9:.2f} GB)")
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

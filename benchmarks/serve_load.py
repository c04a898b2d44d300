"""Load test of ``beholder serve``: N concurrent clients on loopback, several bounded rounds.

Starts ``beholder serve`` in a subprocess on 127.0.0.1 (the default model's architecture with
random weights unless ``--model``/``--checkpoint`` is given: weights do not change the speed),
then runs ``--rounds`` rounds of ``--seconds`` each in which ``--clients`` asyncio clients post
generated JPEGs to ``/v1/score`` as fast as answers come back. Per round it prints requests and
images per second, p50/p99 latency, errors, the server's resident memory (RSS, from /proc or
psutil) and the mean images per model call (micro-batching, from /healthz); at the end, the RSS
growth from the first round to the last. Exits 1 if any request failed.

Usage: ``python benchmarks/serve_load.py [--clients 8] [--rounds 4] [--seconds 10] [--runtime auto]``.
The clients share the server's CPUs on one machine, so figures are a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


def make_jpegs(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    images = []
    for _ in range(count):
        base = (
            np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 255 * rng.uniform(0.4, 1.0, 3)
        )
        pixels = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=88)
        images.append(buffer.getvalue())
    return images


def rss_bytes(pid: int) -> int:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:  # Linux without psutil
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args: argparse.Namespace, folder: Path) -> tuple[subprocess.Popen, str]:
    if args.checkpoint or args.model:
        model_args = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--model", args.model]
    else:
        import torch

        from beholder.models import build_nima, get_model_spec, save_checkpoint
        from beholder.models.registry import DEFAULT_MODEL

        spec = get_model_spec(DEFAULT_MODEL)
        torch.manual_seed(0)
        model = build_nima(spec.architecture, preprocessing=spec.preprocessing).eval()
        model_args = ["--checkpoint", str(save_checkpoint(folder / "random.pt", model))]
    port = args.port or free_port()
    command = [sys.executable, "-m", "beholder", "serve", *model_args, "--port", str(port)]
    command += [
        "--runtime",
        args.runtime,
        "--log-level",
        "warning",
        "--batch-window-ms",
        str(args.batch_window_ms),
    ]
    log = open(folder / "server.log", "w+")  # noqa: SIM115 - closed by the caller via the process
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"server exited with {process.returncode}:\n{log.read()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    process.kill()
    raise SystemExit("server did not start within 180 s")


async def run_round(url: str, images: list[bytes], clients: int, seconds: float, per_request: int, seed: int):
    latencies: list[float] = []
    errors: list[str] = []
    rng = random.Random(seed)
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                picks = [rng.randrange(len(images)) for _ in range(per_request)]
                files = [("files", (f"img{i}.jpg", images[i], "image/jpeg")) for i in picks]
                started = time.perf_counter()
                try:
                    response = await client.post("/v1/score", files=files)
                    ok = response.status_code == 200 and all("mean" in r for r in response.json())
                    if not ok:
                        errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (default 4)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a round (default 10)")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="unreported first round, seconds (default 3)"
    )
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--size", default="800x600", help="JPEG size WxH (default 800x600)")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--batch-window-ms", type=float, default=5.0)
    parser.add_argument("--model", default=None, help="registered model (default: random weights)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--port", type=int, default=None, help="default: a free port")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    images = make_jpegs(16, (width, height))

    with tempfile.TemporaryDirectory() as tmp:
        process, url = start_server(args, Path(tmp))
        try:
            info = httpx.get(url + "/v1/models").json()["models"][0]
            print(
                f"beholder serve: model {info['name']}, runtime {info['runtime']}, {os.cpu_count()} CPUs; "
                f"{args.clients} clients x {args.images_per_request} image(s) of {width}x{height}, "
                f"{args.rounds} rounds of {args.seconds:g} s after a {args.warmup:g} s warm-up"
            )
            header = f"{'round':>5} {'req/s':>7} {'img/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'RSS MiB':>8} {'img/call':>8}"
            print(header)
            # A short unreported round first: lazy initialisation and allocator arenas settle here,
            # so that growth across the measured rounds means a leak rather than a warm-up.
            asyncio.run(run_round(url, images, args.clients, args.warmup, args.images_per_request, 0))
            rss, total_errors = [], 0
            last = httpx.get(url + "/healthz").json()
            for round_index in range(1, args.rounds + 1):
                latencies, errors, elapsed = asyncio.run(
                    run_round(url, images, args.clients, args.seconds, args.images_per_request, round_index)
                )
                health = httpx.get(url + "/healthz").json()
                calls = health["model_calls"] - last["model_calls"]
                scored = health["images_scored"] - last["images_scored"]
                last = health
                rss.append(rss_bytes(process.pid))
                total_errors += len(errors)
                p50, p99 = (np.percentile(latencies, q) * 1000 for q in (50, 99)) if latencies else (0, 0)
                print(
                    f"{round_index:>5} {len(latencies) / elapsed:7.1f} "
                    f"{len(latencies) * args.images_per_request / elapsed:7.1f} {p50:8.0f} {p99:8.0f} "
                    f"{len(errors):>6} {rss[-1] / 2**20:8.0f} {scored / max(calls, 1):8.1f}"
                )
                for error in errors[:3]:
                    print(f"      error: {error}")
            growth = (rss[-1] - rss[0]) / 2**20
            print(
                f"RSS growth from round 1 to round {args.rounds}: {growth:+.1f} MiB "
                f"({100 * (rss[-1] - rss[0]) / max(rss[0], 1):+.1f}%); errors: {total_errors}"
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    return 1 if total_errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end scoring throughput on real photo sizes: Beholder's input path against an eager fp32 loop.

For each size (12 MP 4032x3024, 2 MP 1632x1224, 0.5 MP 816x612) it writes N seeded photo-like
JPEGs at q90 (a 12 MP one is 3-4 MB, like a phone photo), then times, in the same process, on the
same files:

* baseline: PIL full decode -> nearest resize -> to tensor -> eager fp32 torch model (unfused,
  NCHW, ``no_grad``), batch 32, decoding on one thread: what most NIMA scripts do;
* the decode-only floor: PIL decode alone on the decoding threads (full size, and DCT-scaled);
* Beholder's input path, :func:`beholder.preprocessing.load_input` on a thread pool (PIL releases
  the GIL while decoding) feeding batches of 32 to ONNX Runtime (fidelity exact and fast) or to the
  torch runtime (a BatchNorm-fused, channels-last copy under ``inference_mode``; exact);
* the :class:`beholder.inference.Scorer` itself, as ``beholder score`` runs it (its default,
  ONNX Runtime with fidelity exact, and fast; the torch runtime; and, where offered, the int8
  precision on OpenVINO with both fidelities), results and all.

Weights do not change the speed, so the model is the default model's architecture with random
weights (no download needed). Rows are run interleaved, best of ``--repeats``, so that load from
other processes hits every row alike. Usage: ``python benchmarks/score_throughput.py [--images 32]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from beholder.models import build_nima, get_model_spec
from beholder.models.registry import DEFAULT_MODEL
from beholder.preprocessing import Preprocessing, build_eval_transform, load_input
from beholder.synthetic import write_photo_jpegs

SIZES = {"12 MP": (4032, 3024), "2 MP": (1632, 1224), "0.5 MP": (816, 612)}
BatchFn = Callable[[np.ndarray], np.ndarray]


def baseline(model: torch.nn.Module, paths: list[str], batch_size: int) -> None:
    transform = build_eval_transform(model.preprocessing)
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack(
                [transform(Image.open(p).convert("RGB")) for p in paths[start : start + batch_size]]
            )
            torch.softmax(model(batch), dim=-1)


def decode_only(paths: list[str], threads: int, draft: tuple[int, int] | None) -> None:
    def decode(path: str) -> None:
        with Image.open(path) as image:
            if draft:
                image.draft("RGB", draft)
            image.load()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, paths))


def pipeline(
    paths: list[str], pre: Preprocessing, fidelity: str, run: BatchFn, threads: int, batch_size: int
):
    """Decode on ``threads`` threads while the model runs batches in this one."""
    with ThreadPoolExecutor(threads) as pool:
        batch = []
        for item in pool.map(lambda path: load_input(path, pre, fidelity=fidelity), paths):
            batch.append(item)
            if len(batch) == batch_size:
                run(np.stack(batch))
                batch = []
        if batch:
            run(np.stack(batch))


def onnx_runner(path: Path, threads: int) -> BatchFn:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"images": batch})[0]


def torch_runner(model: torch.nn.Module) -> BatchFn:
    from beholder.models.fusion import fuse_conv_bn

    fused = copy.deepcopy(model).eval()
    fuse_conv_bn(fused)
    fused = fused.to(memory_format=torch.channels_last)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(batch).to(memory_format=torch.channels_last)
            return torch.softmax(fused(tensor), dim=-1).numpy()

    return run


def size_rows(model, paths: list[str], runners: dict[str, BatchFn], args) -> dict[str, Callable[[], None]]:
    """The timed rows for one size, baseline first."""
    pre = model.preprocessing
    rows = {
        "baseline: PIL full decode, nearest, eager fp32 torch, 1 thread": lambda: baseline(
            model, paths, args.batch_size
        ),
        "decode-only floor, full size": lambda: decode_only(paths, args.threads, None),
        "decode-only floor, DCT-scaled (fast)": lambda: decode_only(
            paths, args.threads, pre.fidelity_draft_size("fast")
        ),
    }
    for runtime, fidelity in (("onnxruntime", "exact"), ("onnxruntime", "fast"), ("torch", "exact")):
        rows[f"beholder load_input + {runtime}, fidelity={fidelity}"] = (
            lambda r=runners[runtime], f=fidelity: pipeline(paths, pre, f, r, args.threads, args.batch_size)
        )
    for label, scorer in scorers(model, args).items():
        rows[label] = lambda s=scorer: s.score(paths)
    return rows


def scorers(model: torch.nn.Module, args) -> dict:
    """The Scorer as `beholder score` builds it: on the model's cached export, or on torch."""
    from beholder.inference import Scorer
    from beholder.quantize import cpu_runs_int8_exactly
    from beholder.runtimes import RUNTIMES, OnnxRuntime, OpenVinoInt8Runtime, exported_onnx

    options = {"batch_size": args.batch_size, "workers": args.threads}
    engine = OnnxRuntime.from_file(exported_onnx(model))
    rows = {
        "beholder Scorer, onnxruntime, exact (default)": Scorer(engine=engine, **options),
        "beholder Scorer, onnxruntime, fast": Scorer(engine=engine, fidelity="fast", **options),
        "beholder Scorer, torch, exact": Scorer(model, runtime="torch", **options),
    }
    if "openvino-int8" in RUNTIMES and cpu_runs_int8_exactly():  # the int8 precision, where it is offered
        int8 = OpenVinoInt8Runtime.from_file(exported_onnx(model))
        rows["beholder Scorer, openvino-int8, exact"] = Scorer(engine=int8, **options)
        rows["beholder Scorer, openvino-int8, fast"] = Scorer(engine=int8, fidelity="fast", **options)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="JPEGs per size (0.5 MP gets 4x, 2 MP 2x)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="best of N timed passes per row")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="decoding threads")
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--workdir", default=None, help="keep the generated JPEGs here (default: temporary)")
    args = parser.parse_args(argv)

    spec = get_model_spec(DEFAULT_MODEL)
    torch.manual_seed(0)
    model = build_nima(spec.architecture, preprocessing=spec.preprocessing).eval()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        os.environ.setdefault("BEHOLDER_ONNX_CACHE", str(Path(tmp) / "onnx"))
        from beholder.runtimes import exported_onnx

        runners = {
            "onnxruntime": onnx_runner(exported_onnx(model), args.threads),
            "torch": torch_runner(model),
        }
        print(
            f"batch {args.batch_size}, {args.threads} decoding threads, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), best of {args.repeats}; default fidelity: exact"
        )
        for label in args.sizes:
            size = SIZES[label]
            count = args.images * {"12 MP": 1, "2 MP": 2, "0.5 MP": 4}[label]
            paths = write_photo_jpegs(work / label.replace(" ", ""), size, count, seed=2000)
            mb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1e6
            rows = size_rows(model, paths, runners, args)
            best = {name: float("inf") for name in rows}
            for _ in range(args.repeats):
                for name, function in rows.items():
                    start = time.perf_counter()
                    function()
                    best[name] = min(best[name], time.perf_counter() - start)
            print(f"\n{label} ({size[0]}x{size[1]}, {count} JPEGs, {mb:.2f} MB each at q90)")
            print(f"{'configuration':<66} {'img/s':>7} {'ratio':>6}")
            reference = count / next(iter(best.values()))
            for name, seconds in best.items():
                print(f"{name:<66} {count / seconds:7.1f} {count / seconds / reference:5.2f}x")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

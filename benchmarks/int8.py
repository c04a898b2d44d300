"""Int8 variants of the exported ONNX model: score drift and model-only speed against fp32.

    python benchmarks/int8.py --ava AVA_SAMPLE_IMAGES [--photos FOLDER_OF_REAL_PHOTOS]

Exports the default model with :func:`beholder.export.export_onnx`, quantizes it with ONNX
Runtime's static quantization (``quantize_static`` with a calibration data reader) in several
variants, and prints for each, against the fp32 ONNX model on the same inputs:

* mean and max |Δmean| and SRCC of the means, on the real AVA sample images plus generated
  photo-like images (``beholder.synthetic``; seeds different from the calibration images');
* model-only throughput at batch 8 and 32 with ONNX Runtime, as a ratio to fp32, timed in
  interleaved rounds in this process.

Calibration uses generated photo-like images, or (``photos`` variants) random crops, flips and
exposure changes of the real photos in ``--photos``. An int8 model ships only if its mean
|Δmean| is at most 0.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from beholder.synthetic import photo_like  # noqa: E402

EVAL_SEED, CALIBRATION_SEED = 10_000, 20_000
SCORES = np.arange(1, 11, dtype=np.float64)


@dataclass(frozen=True)
class Variant:
    """One way to quantize: what stays fp32, how ranges are calibrated, the graph format."""

    per_channel: bool = False
    keep_fp32: frozenset = field(
        default_factory=frozenset
    )  # of "depthwise", "first", "head", "pointwise_last"
    method: str = "MinMax"  # ORT CalibrationMethod name
    format: str = "QDQ"  # or "QOperator"
    calibration: str = "generated"  # or "photos"
    reduce_range: bool = False  # 7-bit weights: avoids u8s8 saturation on AVX2 CPUs without VNNI
    weight_type: str = "QInt8"
    activation_type: str = "QUInt8"
    extra: tuple = ()  # extra_options items
    tool: str = "ort"  # "ort" (onnxruntime.quantization) or "nncf"
    fast_bias_correction: bool = True  # nncf only
    shipped: bool = False  # beholder.quantize.quantize_int8 itself


ALL = frozenset({"depthwise", "first", "head"})
DW = frozenset({"depthwise"})
VARIANTS: dict[str, Variant] = {
    "ORT naive (per-tensor, all ops)": Variant(),
    "ORT per-channel": Variant(per_channel=True),
    "ORT per-channel, reduce_range": Variant(per_channel=True, reduce_range=True),
    "ORT per-channel, first+head fp32": Variant(per_channel=True, keep_fp32=frozenset({"first", "head"})),
    "ORT per-channel, dw fp32": Variant(per_channel=True, keep_fp32=DW),
    "ORT per-channel, dw+first+head fp32": Variant(per_channel=True, keep_fp32=ALL),
    "ORT  + Entropy": Variant(per_channel=True, keep_fp32=ALL, method="Entropy"),
    "ORT  + Percentile 99.999": Variant(per_channel=True, keep_fp32=ALL, method="Percentile"),
    "ORT  + QOperator": Variant(per_channel=True, keep_fp32=ALL, format="QOperator"),
    "ORT  + calibrated on real photos": Variant(per_channel=True, keep_fp32=ALL, calibration="photos"),
    "NNCF default (fast bias correction)": Variant(tool="nncf"),
    "NNCF full bias correction": Variant(tool="nncf", fast_bias_correction=False),
    "NNCF dw fp32": Variant(tool="nncf", keep_fp32=DW),
    "NNCF dw+first+head fp32": Variant(tool="nncf", keep_fp32=ALL),
    "NNCF dw fp32, full bias correction (shipped)": Variant(
        tool="nncf", keep_fp32=DW, fast_bias_correction=False, shipped=True
    ),
    "NNCF  + calibrated on real photos": Variant(
        tool="nncf", keep_fp32=DW, fast_bias_correction=False, calibration="photos"
    ),
}


def preprocess(images: list[Image.Image]) -> np.ndarray:
    from beholder.models.registry import DEFAULT_MODEL, get_model_spec
    from beholder.preprocessing import build_eval_transform

    transform = build_eval_transform(get_model_spec(DEFAULT_MODEL).preprocessing)
    return np.stack([transform(image).numpy() for image in images]).astype(np.float32)


def augmented_photos(folder: Path, count: int, seed: int = 0) -> list[Image.Image]:
    """``count`` realistic calibration images: random crops, flips and exposure of real photos."""
    rng = np.random.default_rng(seed)
    sources = [
        Image.open(path).convert("RGB")
        for path in sorted(folder.iterdir())
        if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")
    ]
    if not sources:
        raise SystemExit(f"{folder}: no photos (.jpg, .png, .bmp) to calibrate on")
    images = []
    for index in range(count):
        image = sources[index % len(sources)]
        scale = rng.uniform(0.5, 1.0)
        width, height = int(image.width * scale), int(image.height * scale)
        left, top = rng.integers(0, image.width - width + 1), rng.integers(0, image.height - height + 1)
        crop = image.crop((left, top, left + width, top + height))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop = ImageEnhance.Brightness(crop).enhance(rng.uniform(0.7, 1.3))
        images.append(ImageEnhance.Contrast(crop).enhance(rng.uniform(0.7, 1.3)))
    return images


def excluded_nodes(model_path: Path, keep_fp32: frozenset) -> list[str]:
    """Names of the nodes that ``keep_fp32`` keeps in float (the graph is MobileNet's Conv/Clip chain)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    convs = [node for node in graph.node if node.op_type == "Conv"]
    group = {node.name: next((a.i for a in node.attribute if a.name == "group"), 1) for node in convs}
    names = []
    if "first" in keep_fp32:
        names.append(convs[0].name)
    if "depthwise" in keep_fp32:
        names += [node.name for node in convs if group[node.name] > 1]
    if "pointwise_last" in keep_fp32:
        names += [node.name for node in convs if group[node.name] == 1][-2:]
    if "head" in keep_fp32:
        names += [
            node.name for node in graph.node if node.op_type in ("Gemm", "MatMul", "Softmax", "ReduceMean")
        ]
    return names


class BatchReader:
    """ORT CalibrationDataReader over a preprocessed (N, 3, H, W) array, in batches."""

    def __init__(self, data: np.ndarray, input_name: str, batch: int = 8):
        self.batches = iter([{input_name: data[i : i + batch]} for i in range(0, len(data), batch)])

    def get_next(self):
        return next(self.batches, None)


def quantize(fp32: Path, out: Path, variant: Variant, calibration: np.ndarray, images=None) -> Path:
    if variant.shipped:
        from beholder.quantize import quantize_int8

        return quantize_int8(fp32, out, images)
    if variant.tool == "nncf":
        return quantize_nncf(fp32, out, variant, calibration)
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(fp32),
        str(out),
        BatchReader(calibration, "images"),
        quant_format=QuantFormat[variant.format],
        per_channel=variant.per_channel,
        reduce_range=variant.reduce_range,
        weight_type=QuantType[variant.weight_type],
        activation_type=QuantType[variant.activation_type],
        nodes_to_exclude=excluded_nodes(fp32, variant.keep_fp32),
        calibrate_method=CalibrationMethod[variant.method],
        extra_options=dict(variant.extra),
    )
    return out


def quantize_nncf(fp32: Path, out: Path, variant: Variant, calibration: np.ndarray) -> Path:
    import nncf
    import onnx

    batches = [calibration[i : i + 8] for i in range(0, len(calibration), 8)]
    quantized = nncf.quantize(
        onnx.load(str(fp32)),
        nncf.Dataset(batches, lambda batch: {"images": batch}),
        subset_size=len(batches),  # NNCF counts dataset items, here batches of 8
        fast_bias_correction=variant.fast_bias_correction,
        ignored_scope=nncf.IgnoredScope(names=excluded_nodes(fp32, variant.keep_fp32)),
    )
    onnx.save(quantized, str(out))
    return out


class OpenVINOSession:
    """The subset of an ORT session's interface that this script uses, on OpenVINO at fp32 hint."""

    def __init__(self, path: Path, threads: int):
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()

    def run(self, _outputs, feed):
        self.request.infer(feed)
        return [self.request.get_output_tensor(0).data.copy()]


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def means(run, data: np.ndarray) -> np.ndarray:
    probabilities = np.concatenate(
        [run.run(None, {"images": data[i : i + 16]})[0] for i in range(0, len(data), 16)]
    )
    return probabilities.astype(np.float64) @ SCORES


def throughput(sessions: dict, batch: int, repeats: int) -> dict[str, float]:
    """Images per second of each session on one batch, median of ``repeats`` interleaved rounds."""
    data = np.random.default_rng(0).normal(0, 0.5, (batch, 3, 224, 224)).astype(np.float32)
    times: dict[str, list] = {name: [] for name in sessions}
    for run in sessions.values():
        run.run(None, {"images": data})  # warm-up
    for _ in range(repeats):
        for name, run in sessions.items():
            start = time.perf_counter()
            run.run(None, {"images": data})
            times[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(values) for name, values in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ava", type=Path, required=True, help="folder of the real AVA sample images")
    parser.add_argument("--photos", type=Path, help="real photos to calibrate the 'photos' variants on")
    parser.add_argument("--generated", type=int, default=58, help="generated evaluation images")
    parser.add_argument("--calibration", type=int, default=64, help="calibration images")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    args = parser.parse_args(argv)

    from scipy.stats import spearmanr

    from beholder.export import export_onnx
    from beholder.models import create_model
    from beholder.models.registry import DEFAULT_MODEL

    real = sorted(args.ava.glob("*.jpg"))
    evaluation = preprocess(
        [Image.open(path).convert("RGB") for path in real]
        + [photo_like(800, 600, EVAL_SEED + seed) for seed in range(args.generated)]
    )
    generated_images = [photo_like(800, 600, CALIBRATION_SEED + s) for s in range(args.calibration)]
    calibration = {"generated": preprocess(generated_images)}
    if args.photos:
        calibration["photos"] = preprocess(augmented_photos(args.photos, args.calibration))
    chosen = {name: v for name, v in VARIANTS.items() if not args.only or name.strip() in args.only}
    chosen = {name: v for name, v in chosen.items() if v.calibration in calibration}

    with tempfile.TemporaryDirectory() as folder:
        fp32 = export_onnx(create_model(DEFAULT_MODEL), Path(folder) / "fp32.onnx", name=DEFAULT_MODEL)
        sessions = {"fp32": session(fp32, args.threads), "fp32 OpenVINO": OpenVINOSession(fp32, args.threads)}
        expected = means(sessions["fp32"], evaluation)
        print(
            f"{len(real)} real + {args.generated} generated images; calibration: {args.calibration} "
            f"generated{' / augmented real photos' if args.photos else ''}\n"
        )
        print("| variant | mean abs Δmean | max abs Δmean | max on real | SRCC vs fp32 |")
        print("| --- | --- | --- | --- | --- |")
        rows = {}
        for index, (name, variant) in enumerate(chosen.items()):
            out = Path(folder) / f"int8_{index}.onnx"
            path = quantize(fp32, out, variant, calibration[variant.calibration], generated_images)
            sessions[name] = session(path, args.threads)
            if variant.tool == "nncf":  # OpenVINO runs NNCF's int8 convolutions natively
                sessions[f"{name} on OpenVINO"] = OpenVINOSession(path, args.threads)
            delta = np.abs(means(sessions[name], evaluation) - expected)
            srcc = spearmanr(means(sessions[name], evaluation), expected)[0]
            rows[name] = (delta.mean(), delta.max())
            print(
                f"| {name.strip()} | {delta.mean():.3f} | {delta.max():.3f} | {delta[: len(real)].max():.3f} "
                f"| {srcc:.3f} |",
                flush=True,
            )
        print("\nModel only, images/s (ratio to fp32 ONNX Runtime); ONNX Runtime unless named:\n")
        print("| variant | batch 8 | batch 32 |")
        print("| --- | --- | --- |")
        speeds = {batch: throughput(sessions, batch, args.repeats) for batch in (8, 32)}
        for name in sessions:
            cells = [f"{speeds[b][name]:.0f} ({speeds[b][name] / speeds[b]['fp32']:.2f}×)" for b in (8, 32)]
            print(f"| {name.strip()} | {cells[0]} | {cells[1]} |")
        passing = [name.strip() for name, (mean, _) in rows.items() if mean <= 0.05]
        print(f"\nvariants with mean |Δmean| <= 0.05: {', '.join(passing) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

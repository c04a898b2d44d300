"""Int8 quantization of an exported model: metadata kept, precision marked, scores close to fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nncf")
pytest.importorskip("openvino")

from beholder.errors import ConfigError
from beholder.export import export_onnx, load_onnx_metadata
from beholder.models import create_model
from beholder.models.registry import DEFAULT_MODEL
from beholder.preprocessing import build_eval_transform
from beholder.quantize import depthwise_convolutions, quantize_int8
from conftest import IDEALO_KERAS_MEANS, make_photo


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (int8 dot products into int32). Without it (plain AVX2),
    OpenVINO's int8 kernels add u8 x s8 products in saturating int16 and the scores break."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def onnxruntime_means(path: Path, batch: np.ndarray) -> np.ndarray:
    """ONNX Runtime runs a Q/DQ file's arithmetic exactly as written, on any CPU: it checks the file."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probabilities = session.run(None, {"images": batch})[0]
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    return probabilities @ np.arange(1, 11)


def openvino_means(path: Path, batch: np.ndarray) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    probabilities = compiled({"images": batch})[compiled.output(0)]
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    return probabilities @ np.arange(1, 11)


@pytest.mark.slow
def test_int8_default_model_stays_within_0_05_of_fp32(tmp_path: Path, sample_images: Path) -> None:
    import onnx
    from PIL import Image

    model = create_model(DEFAULT_MODEL)
    fp32 = export_onnx(model, tmp_path / "fp32.onnx", name=DEFAULT_MODEL)
    calibration = [make_photo(tmp_path / "cal" / f"{i}.jpg", size=(480, 360), seed=i) for i in range(16)]
    int8 = quantize_int8(fp32, tmp_path / "int8.onnx", calibration)

    assert load_onnx_metadata(int8)["preprocessing"] == load_onnx_metadata(fp32)["preprocessing"]
    props = {p.key: p.value for p in onnx.load(str(int8)).metadata_props}
    assert props["beholder.precision"] == "int8"
    graph = onnx.load(str(int8)).graph
    ops = [node.op_type for node in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # The depthwise convolutions stay in float32: their weights are plain initializers, not DQ outputs.
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    depthwise = set(depthwise_convolutions(onnx.load(str(fp32))))
    assert len(depthwise) == 13
    assert all(node.input[1] not in dequantized for node in graph.node if node.name in depthwise)

    transform = build_eval_transform(model.preprocessing)
    names = sorted(IDEALO_KERAS_MEANS)
    batch = np.stack([transform(Image.open(sample_images / n).convert("RGB")).numpy() for n in names])
    delta = np.abs(onnxruntime_means(int8, batch) - onnxruntime_means(fp32, batch))
    assert delta.mean() <= 0.05, delta
    if cpu_has_vnni():  # the same file on OpenVINO's native int8 kernels
        on_openvino = np.abs(openvino_means(int8, batch) - openvino_means(fp32, batch))
        assert on_openvino.mean() <= 0.05, on_openvino


def test_quantize_needs_calibration_images(tmp_path: Path) -> None:
    from beholder.models import Architecture, build_nima

    fp32 = export_onnx(build_nima(Architecture(alpha=0.25)).eval(), tmp_path / "small.onnx")
    with pytest.raises(ConfigError, match="at least one calibration image"):
        quantize_int8(fp32, tmp_path / "int8.onnx", [])
    assert not (tmp_path / "int8.onnx").exists()

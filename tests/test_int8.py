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
from beholder.quantize import cpu_runs_int8_exactly, depthwise_convolutions, quantize_int8
from conftest import IDEALO_KERAS_MEANS, make_photo


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
    if cpu_runs_int8_exactly():  # the same file on OpenVINO's native int8 kernels
        on_openvino = np.abs(openvino_means(int8, batch) - openvino_means(fp32, batch))
        assert on_openvino.mean() <= 0.05, on_openvino


def test_quantize_needs_calibration_images(tmp_path: Path) -> None:
    from beholder.models import Architecture, build_nima

    fp32 = export_onnx(build_nima(Architecture(alpha=0.25)).eval(), tmp_path / "small.onnx")
    with pytest.raises(ConfigError, match="at least one calibration image"):
        quantize_int8(fp32, tmp_path / "int8.onnx", [])
    assert not (tmp_path / "int8.onnx").exists()


@pytest.mark.slow
@pytest.mark.skipif(not cpu_runs_int8_exactly(), reason="OpenVINO's int8 sums saturate on x86 without VNNI")
def test_score_with_the_int8_runtime_quantizes_once_and_stays_near_fp32(
    sample_images: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`--runtime openvino-int8` calibrates on generated photos once, caches the file, and keeps
    the means of the 6 real AVA images near idealo's reference (docs/int8.md: mean 0.02, max 0.08)."""
    import json

    from beholder.cli import main

    monkeypatch.setenv("BEHOLDER_ONNX_CACHE", str(tmp_path / "onnx"))
    command = ["score", "--runtime", "openvino-int8", "--format", "json", str(sample_images)]
    runs = []
    for _ in range(2):
        caplog.clear()
        assert main(command) == 0
        out = capsys.readouterr().out
        runs.append((json.loads(out), caplog.text))  # stdout is only the JSON, whatever NNCF prints
    (first, first_log), (second, second_log) = runs
    assert "quantizing it once" in first_log and "quantizing it once" not in second_log
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 1  # the int8 file; fp32 is packaged
    means = {Path(row["path"]).name: row["mean"] for row in first}
    assert means == {Path(row["path"]).name: row["mean"] for row in second}
    delta = np.array([abs(means[name] - IDEALO_KERAS_MEANS[name]) for name in IDEALO_KERAS_MEANS])
    assert delta.mean() <= 0.05 and delta.max() <= 0.1, delta
    assert not np.allclose(delta, 0, atol=1e-4)  # it really ran the int8 file, not the fp32 one


def test_the_int8_runtime_is_refused_where_openvino_int8_sums_saturate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from beholder import quantize
    from beholder.inference import Scorer

    monkeypatch.setattr(quantize, "cpu_runs_int8_exactly", lambda: False)
    monkeypatch.setenv("BEHOLDER_ONNX_CACHE", str(tmp_path / "onnx"))
    with pytest.raises(ConfigError, match="needs a CPU with VNNI"):
        Scorer.from_pretrained(runtime="openvino-int8")
    assert not list((tmp_path / "onnx").glob("*.onnx"))  # refused before any quantization


def test_auto_never_picks_int8() -> None:
    from beholder.runtimes import AUTO_PREFERENCE, RUNTIMES, resolve_runtime_name

    assert "openvino-int8" in RUNTIMES  # nncf and openvino are installed (module skips otherwise)
    assert "openvino-int8" not in AUTO_PREFERENCE and resolve_runtime_name("auto", "cpu") != "openvino-int8"

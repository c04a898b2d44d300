"""ONNX export: self-describing metadata, dynamic batch, numerics, the `beholder export` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from beholder import __version__  # noqa: E402
from beholder.cli import main  # noqa: E402
from beholder.errors import ConfigError  # noqa: E402
from beholder.export import export_onnx, load_onnx_metadata, model_fingerprint  # noqa: E402
from beholder.models import Architecture, build_nima, get_model_spec, save_checkpoint  # noqa: E402
from beholder.preprocessing import Preprocessing  # noqa: E402

# Not the registry's: a bilinear resize and a crop, so the round trip checks more than defaults.
PREPROCESSING = Preprocessing(resize=(160, 160), interpolation="bilinear", crop=128)


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_nima(Architecture(alpha=0.25), preprocessing=PREPROCESSING).eval()
    # Non-trivial BatchNorm statistics, so that folding them into the convolutions is tested.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A checkpoint of a small random model, exported once through the CLI."""
    folder = tmp_path_factory.mktemp("export")
    model = small_model()
    checkpoint = save_checkpoint(folder / "small.pt", model, provenance={"trained_by": "test"})
    out = folder / "nested" / "small.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    return model, checkpoint, out


def reference_probabilities(model, batch: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(batch), dim=-1).numpy()  # (B, 10), eager and unfused


def test_metadata_round_trip(exported):
    model, checkpoint, path = exported
    meta = load_onnx_metadata(path)
    assert meta["architecture"] == model.architecture.to_dict()
    assert Preprocessing.from_dict(meta["preprocessing"]) == PREPROCESSING
    assert meta["output"] == "probabilities"
    assert meta["version"] == __version__
    assert meta["model"] == str(checkpoint)
    assert meta["provenance"]["trained_by"] == "test"
    assert len(meta["provenance"]["checkpoint_sha256"]) == 64
    assert meta["input"] == {
        "name": "images",
        "shape": ["batch", 3, 128, 128],
        "dtype": "float32",
        "layout": "NCHW",
    }
    assert meta["scores"] == list(range(1, 11))
    assert meta["opset"] == 18
    # Stored as plain ONNX metadata_props, readable by any ONNX tool without Beholder.
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["beholder.preprocessing"])["interpolation"] == "bilinear"


def test_graph_is_valid_folded_and_has_a_dynamic_batch(exported):
    _, _, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert not [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [3, 128, 128]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_dynamic_batch_matches_torch(exported, batch_size):
    model, _, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = torch.randn(batch_size, 3, 128, 128, generator=torch.Generator().manual_seed(batch_size))
    (probabilities,) = session.run(None, {"images": batch.numpy()})
    assert probabilities.shape == (batch_size, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probabilities, reference_probabilities(model, batch), atol=1e-5)


def test_export_leaves_the_model_untouched(exported):
    model, _, _ = exported
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert model_fingerprint(model) == model_fingerprint(small_model())


def test_logits_output_is_recorded_and_softmaxed_by_the_runtime(tmp_path):
    from beholder.runtimes import OnnxRuntime

    model = small_model(seed=1)
    path = export_onnx(model, tmp_path / "logits.onnx", output="logits", name="small", provenance={"a": 1})
    meta = load_onnx_metadata(path)
    assert meta["output"] == "logits" and meta["model"] == "small" and meta["provenance"] == {"a": 1}
    batch = torch.randn(2, 3, 128, 128)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        np.testing.assert_allclose(
            session.run(None, {"images": batch.numpy()})[0], model(batch).numpy(), atol=1e-4
        )
    runtime = OnnxRuntime.from_file(path)
    np.testing.assert_allclose(runtime(batch), reference_probabilities(model, batch), atol=1e-5)


def test_exported_file_has_the_usual_permissions_and_no_temporary_is_left(tmp_path):
    import os

    old = os.umask(0o027)
    try:
        path = export_onnx(small_model(), tmp_path / "perm.onnx")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["perm.onnx"]


def test_fingerprint_changes_with_weights_and_preprocessing():
    model = small_model()
    base = model_fingerprint(model)
    assert model_fingerprint(model, output="logits") != base
    with torch.no_grad():
        model.head[1].bias[0] += 1e-3
    assert model_fingerprint(model) != base
    other = build_nima(
        Architecture(alpha=0.25), preprocessing=get_model_spec("nima-mobilenet-idealo").preprocessing
    )
    other.load_state_dict(small_model().state_dict())
    assert model_fingerprint(other) != base


def test_bad_output_kind_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="probabilities, logits"):
        export_onnx(small_model(), tmp_path / "x.onnx", output="scores")
    assert not list(tmp_path.iterdir())


def test_load_metadata_refuses_foreign_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_onnx_metadata(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx at all" * 10)
    with pytest.raises(ConfigError, match="not a readable ONNX file"):
        load_onnx_metadata(junk)
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "foreign",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(ConfigError, match="not a Beholder ONNX export"):
        load_onnx_metadata(foreign)


def test_cli_errors_exit_2(tmp_path, capsys):
    assert (
        main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.onnx")]) == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["export", "--format", "tflite", "--out", str(tmp_path / "x.tflite")]) == 2
    assert not (tmp_path / "x.onnx").exists()


def test_cli_exports_a_registered_model(tmp_path, idealo_weights, capsys):
    out = tmp_path / "idealo.onnx"
    assert main(["export", "--model", "nima-mobilenet-idealo", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    meta = load_onnx_metadata(out)
    spec = get_model_spec("nima-mobilenet-idealo")
    assert meta["model"] == "nima-mobilenet-idealo"
    assert Preprocessing.from_dict(meta["preprocessing"]) == spec.preprocessing
    assert meta["provenance"]["weights"]["sha256"] == spec.weights.sha256
    assert Path(out).stat().st_size > 10_000_000  # the width-1.0 weights are inside

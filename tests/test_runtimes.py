"""Runtimes: ONNX Runtime and OpenVINO agree with torch; `auto`; unknown or missing runtimes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from beholder import runtimes
from beholder.cli import main
from beholder.errors import ConfigError
from beholder.inference import Scorer
from beholder.models import Architecture, build_nima, create_model, get_model_spec
from beholder.models.fusion import fuse_conv_bn
from beholder.runtimes import (
    AUTO_PREFERENCE,
    RUNTIMES,
    TorchRuntime,
    available_runtimes,
    create_runtime,
    resolve_runtime_name,
)
from conftest import ASSETS

IDEALO_WEIGHTS = ASSETS / "nima_idealo" / "weights_mobilenet_aesthetic_0.07.hdf5"
AVA_IMAGES = ASSETS / "ava_sample" / "images"
FAST_RUNTIMES = [name for name in ("onnx", "openvino") if name in RUNTIMES]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One export cache for the module: every ONNX-based runtime of a model reuses one export."""
    return tmp_path_factory.mktemp("runtime-cache")


@pytest.fixture
def cache(shared_cache, monkeypatch) -> Path:
    monkeypatch.setenv("BEHOLDER_CACHE", str(shared_cache))
    monkeypatch.delenv("BEHOLDER_ONNX_CACHE", raising=False)  # this module checks where files go
    return shared_cache


@pytest.fixture(scope="module")
def idealo():
    if not IDEALO_WEIGHTS.exists() or not AVA_IMAGES.is_dir():
        pytest.skip("offline assets (idealo weights, AVA sample) not available")
    return create_model("nima-mobilenet-idealo", weights=IDEALO_WEIGHTS)


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    spec = get_model_spec("nima-mobilenet-idealo")
    return build_nima(Architecture(alpha=0.25), preprocessing=spec.preprocessing).eval()


@pytest.mark.parametrize("name", FAST_RUNTIMES)
def test_fast_runtimes_match_torch_on_ava_sample(idealo, cache, name):
    """Must-show 1: distributions within 1e-4 of torch for idealo's model on the real AVA images."""
    paths = sorted(str(p) for p in AVA_IMAGES.glob("*.jpg"))
    assert len(paths) >= 3
    torch_scorer = Scorer(idealo, runtime="torch", batch_size=4)
    fast_scorer = Scorer(idealo, runtime=name, batch_size=4)
    assert fast_scorer.runtime.name == name
    expected = torch_scorer.score(paths)
    actual = fast_scorer.score(paths)
    assert all(r.ok for r in expected + actual)
    got = np.array([r.distribution for r in actual])
    np.testing.assert_allclose(got, np.array([r.distribution for r in expected]), rtol=0, atol=1e-4)
    # And against the plain eager model (no BatchNorm folding, no channels_last), on the same tensors.
    batch = torch.stack([torch.from_numpy(torch_scorer.preprocess(p)) for p in paths])
    with torch.no_grad():
        eager = torch.softmax(idealo(batch), dim=-1).numpy()
    np.testing.assert_allclose(got, eager, rtol=0, atol=1e-4)
    np.testing.assert_allclose([r.mean for r in actual], [r.mean for r in expected], atol=1e-3)


@pytest.mark.parametrize("name", FAST_RUNTIMES)
def test_runtime_interface(small, cache, name):
    runtime = create_runtime(name, small)
    batch = torch.randn(5, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    from_tensor = runtime(batch)
    from_numpy = runtime(batch.numpy().astype(np.float64))  # any float array is accepted
    assert from_tensor.shape == (5, 10) and from_tensor.dtype == np.float32
    np.testing.assert_allclose(from_tensor.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(from_tensor, from_numpy, atol=1e-6)
    np.testing.assert_allclose(runtime(batch[:1]), from_tensor[:1], atol=1e-5)  # batch size is dynamic
    np.testing.assert_allclose(from_tensor, TorchRuntime(small)(batch), atol=1e-4)
    assert runtime.threads >= 1


@pytest.mark.skipif(not FAST_RUNTIMES, reason="no ONNX-based runtime installed")
def test_export_is_cached_by_content(small, cache):
    first = create_runtime(FAST_RUNTIMES[0], small)
    stamp = first.path.stat().st_mtime_ns
    second = create_runtime(FAST_RUNTIMES[-1], small)
    assert second.path == first.path and first.path.parent == cache / "onnx"
    assert first.path.stat().st_mtime_ns == stamp  # not exported again
    assert len(list((cache / "onnx").glob("*.onnx"))) >= 1


class _BatchNormReLU(torch.nn.BatchNorm2d):
    """A BatchNorm that does more than normalise (as timm's BatchNormAct2d)."""

    def forward(self, x):
        return torch.relu(super().forward(x))


def test_fusing_folds_plain_batchnorm_only():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Conv2d(4, 4, 3),
        _BatchNormReLU(4),
    ).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.bias.uniform_(-0.5, 0.5)
    batch = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = model(batch)
        assert fuse_conv_bn(model) == 1
        assert isinstance(model[1], torch.nn.Identity) and isinstance(model[3], _BatchNormReLU)
        torch.testing.assert_close(model(batch), expected, rtol=1e-5, atol=1e-5)


def test_auto_picks_the_first_installed_in_preference_order(small, cache):
    expected = next(name for name in AUTO_PREFERENCE if name in RUNTIMES)
    assert resolve_runtime_name("auto", device="cpu") == expected
    assert resolve_runtime_name("auto", device="cuda") == "torch"  # CPU engines cannot use a GPU
    assert resolve_runtime_name("auto", device="mps") == "torch"
    assert resolve_runtime_name("auto", device="cuda:1") == "torch"
    assert resolve_runtime_name("auto", device="CPU") == expected
    assert resolve_runtime_name("onnx", device="cpu") == "onnx"
    scorer = Scorer(small, runtime="auto", device="cpu")
    assert scorer.runtime.name == expected
    assert scorer.runtime_name == expected  # the engine that runs, never "auto"


def test_auto_falls_back_to_torch(small, monkeypatch):
    monkeypatch.setattr(runtimes, "RUNTIMES", {"torch": TorchRuntime})
    assert resolve_runtime_name("auto", device="cpu") == "torch"
    assert isinstance(create_runtime("auto", small, device="cpu"), TorchRuntime)


def test_unknown_runtime_is_a_config_error(small):
    with pytest.raises(ConfigError, match=r"unknown or unavailable runtime 'tensorrt'.*torch"):
        create_runtime("tensorrt", small)
    with pytest.raises(ConfigError, match="tensorrt"):
        Scorer(small, runtime="tensorrt")


def test_missing_optional_runtime_says_how_to_install(small, monkeypatch):
    monkeypatch.setattr(runtimes, "RUNTIMES", {"torch": TorchRuntime})
    assert available_runtimes() == ["torch"]
    with pytest.raises(ConfigError, match=r"beholder\[onnx\]"):
        create_runtime("onnx", small)


def test_cli_unknown_runtime_exits_2(small, tmp_path, capsys):
    from PIL import Image

    from beholder.models import save_checkpoint

    image = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(image)
    checkpoint = save_checkpoint(tmp_path / "small.pt", small)
    assert main(["score", str(image), "--checkpoint", str(checkpoint), "--runtime", "tensorrt"]) == 2
    assert "unknown or unavailable runtime 'tensorrt'" in capsys.readouterr().err


@pytest.mark.skipif("onnx" not in RUNTIMES, reason="onnxruntime not installed")
def test_onnx_runtime_refuses_cuda_without_onnxruntime_gpu(small, cache):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        create_runtime("onnx", small, device="cuda")


@pytest.mark.skipif("openvino" not in RUNTIMES, reason="openvino not installed")
def test_openvino_refuses_unknown_device(small, cache):
    with pytest.raises(ConfigError, match="no device"):
        create_runtime("openvino", small, device="tpu")


def test_registered_runtimes_follow_installed_packages(monkeypatch):
    """A runtime whose package cannot be found is not offered; one whose package is found is."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    for hidden, kept in (("onnxruntime", "openvino"), ("openvino", "onnxruntime")):
        gone = {"onnxruntime": "onnx", "openvino": "openvino"}[hidden]
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a, h=hidden: None if name == h else real_find_spec(name, *a),
        )
        offered = runtimes._registered()
        assert gone not in offered and offered["torch"] is TorchRuntime
        stays = {"onnxruntime": "onnx", "openvino": "openvino"}[kept]
        assert (stays in offered) == (real_find_spec(kept) is not None)
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    assert list(runtimes._registered()) == available_runtimes()


def test_importing_runtimes_imports_no_engine():
    import subprocess
    import sys

    code = (
        "import sys, beholder.runtimes\n"
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'openvino') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", [*FAST_RUNTIMES, "auto"])
def test_cli_score_with_each_runtime(small, cache, tmp_path, capsys, name):
    import json

    from PIL import Image

    from beholder.models import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "small.pt", small)
    image = tmp_path / "a.jpg"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(image)
    outputs = {}
    for runtime in ("torch", name):
        args = [
            "score",
            str(image),
            "--checkpoint",
            str(checkpoint),
            "--format",
            "json",
            "--runtime",
            runtime,
        ]
        assert main(args) == 0
        outputs[runtime] = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(
        outputs[name][0]["distribution"], outputs["torch"][0]["distribution"], atol=1e-4
    )

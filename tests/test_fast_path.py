"""The torch-free fast path: ONNX cache hits import no torch, the cache is verified, users' ONNX
files are checked against their metadata, ``runtime_name`` tells the truth, ``--opset`` is honoured."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from beholder.cli import main  # noqa: E402
from beholder.errors import ConfigError  # noqa: E402
from beholder.inference import Scorer  # noqa: E402
from beholder.onnx_cache import OnnxCache  # noqa: E402
from conftest import IDEALO_KERAS_MEANS, asset  # noqa: E402

HEAVY = ("torch", "torchvision", "onnx", "openvino", "h5py", "scipy")
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def idealo_cache(tmp_path_factory) -> Path:
    """A cache folder holding the default model's export, made once for the module."""
    folder = tmp_path_factory.mktemp("fast-path-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BEHOLDER_ONNX_CACHE", str(folder))
        scorer = Scorer.from_pretrained(runtime="onnx")
    assert scorer.runtime_name == "onnx"
    assert len(list(folder.glob("*.onnx"))) == 1
    return folder


@pytest.fixture
def cache_copy(idealo_cache, tmp_path, monkeypatch) -> Path:
    """A private copy of the module's cache, for tests that damage it."""
    folder = tmp_path / "onnx-cache"
    shutil.copytree(idealo_cache, folder)
    monkeypatch.setenv("BEHOLDER_ONNX_CACHE", str(folder))
    return folder


def entry(folder: Path) -> Path:
    (path,) = folder.glob("*.onnx")
    return path


def run_score(image: Path, cache: Path, *extra: str) -> dict:
    """`beholder score --format json IMAGE` in a fresh interpreter: its output and its imported modules."""
    code = (
        "import json, sys\n"
        "from beholder.cli import main\n"
        f"code = main(['score', '--format', 'json', '--no-progress', *{list(extra)!r}, {str(image)!r}])\n"
        f"print(json.dumps({{'code': code, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "BEHOLDER_ONNX_CACHE": str(cache), "PYTHONPATH": str(SRC)}
    env["BEHOLDER_CACHE"] = str(cache.parent / "beholder-cache")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    *scores, summary = done.stdout.strip().splitlines()
    return {**json.loads(summary), "results": json.loads("\n".join(scores)), "stderr": done.stderr}


def test_a_cache_hit_scores_without_importing_torch_or_onnx(idealo_cache):
    image = asset("ava_sample/images/42039.jpg")
    run = run_score(image, idealo_cache)
    assert run["code"] == 0
    assert run["heavy"] == []
    (result,) = run["results"]
    assert result["mean"] == pytest.approx(IDEALO_KERAS_MEANS["42039.jpg"], abs=0.01)
    # The torch runtime is still there on request, and agrees.
    torch_run = run_score(image, idealo_cache, "--runtime", "torch")
    assert "torch" in torch_run["heavy"]
    assert torch_run["results"][0]["mean"] == pytest.approx(result["mean"], abs=1e-3)


def test_importing_the_scoring_core_imports_no_engine():
    code = f"import sys, beholder.inference; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_runtime_name_is_the_engine_that_runs(idealo_cache, monkeypatch):
    monkeypatch.setenv("BEHOLDER_ONNX_CACHE", str(idealo_cache))
    auto = Scorer.from_pretrained(runtime="auto", device="cpu")
    assert auto.runtime_name == auto.runtime.name == "onnx"
    assert auto.model is None  # scored from the cached file, no torch model built
    eager = Scorer.from_pretrained(runtime="torch")
    assert eager.runtime_name == eager.runtime.name == "torch"


def test_a_poisoned_cache_entry_is_rebuilt_not_used(cache_copy, caplog):
    path = entry(cache_copy)
    record = path.with_suffix(".json").read_text()
    # Another valid model with the same name: every score would come out 5.50 if it were used.
    proto = onnx.load(str(path))
    for tensor in proto.graph.initializer:
        if tensor.name.startswith("model.head.1."):
            tensor.CopyFrom(
                onnx.numpy_helper.from_array(np.zeros(tuple(tensor.dims), np.float32), tensor.name)
            )
    onnx.save(proto, str(path))
    assert path.with_suffix(".json").read_text() == record  # the record still names the old content
    with caplog.at_level(logging.WARNING, logger="beholder.onnx_cache"):
        scorer = Scorer.from_pretrained(runtime="onnx")
    assert "sha256 mismatch" in caplog.text and "rebuilding" in caplog.text
    (result,) = scorer.score([str(asset("ava_sample/images/42039.jpg"))])
    assert result.mean == pytest.approx(IDEALO_KERAS_MEANS["42039.jpg"], abs=0.01)
    assert OnnxCache(cache_copy).lookup(path.stem) == path  # the rebuilt entry verifies


def test_a_truncated_or_unrecorded_entry_is_never_used(tmp_path, caplog):
    cache = OnnxCache(tmp_path)
    builds = []

    def build(target: Path) -> None:
        builds.append(target)
        target.write_bytes(b"model bytes " * 100)

    path = cache.get("k", build)
    assert cache.get("k", build) == path and len(builds) == 1  # a verified hit
    path.write_bytes(path.read_bytes()[:500])  # truncated
    with caplog.at_level(logging.WARNING, logger="beholder.onnx_cache"):
        assert cache.lookup("k") is None
    assert "500 bytes, 1200 written" in caplog.text and not path.exists()
    assert cache.get("k", build) == path and len(builds) == 2 and path.stat().st_size == 1200
    path.with_suffix(".json").unlink()  # a file nobody recorded (copied in by hand, say)
    assert cache.lookup("k") is None and not path.exists()


def test_cli_rebuilds_a_truncated_entry_and_warns(cache_copy, capsys):
    path = entry(cache_copy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    image = asset("ava_sample/images/42040.jpg")
    assert main(["score", "--format", "json", str(image)]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["mean"] == pytest.approx(IDEALO_KERAS_MEANS["42040.jpg"], abs=0.01)
    assert OnnxCache(cache_copy).lookup(path.stem) == path


# -- users' ONNX files -------------------------------------------------------------------------


def edited(source: Path, target: Path, edit) -> Path:
    proto = onnx.load(str(source))
    edit(proto)
    onnx.save(proto, str(target))
    return target


def set_metadata(proto, key: str, value: str) -> None:
    for prop in proto.metadata_props:
        if prop.key == f"beholder.{key}":
            prop.value = value


def zero_head(proto) -> None:
    for tensor in proto.graph.initializer:
        if tensor.name.startswith("model.head.1."):
            tensor.CopyFrom(
                onnx.numpy_helper.from_array(np.zeros(tuple(tensor.dims), np.float32), tensor.name)
            )


def five_classes(proto) -> None:
    for tensor in proto.graph.initializer:
        if tensor.name.startswith("model.head.1."):
            array = onnx.numpy_helper.to_array(tensor)[:5]
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(array), tensor.name))
    proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5


def drop_softmax(proto) -> None:
    """The graph returns logits while its metadata still says probabilities."""
    (softmax,) = [node for node in proto.graph.node if node.op_type == "Softmax"]
    proto.graph.node.remove(softmax)
    for node in proto.graph.node:
        node.output[:] = [softmax.output[0] if name == softmax.input[0] else name for name in node.output]


def lie_about_size(proto) -> None:
    pre = {
        "resize": [299, 299],
        "interpolation": "nearest",
        "crop": None,
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
    }
    set_metadata(proto, "preprocessing", json.dumps(pre))


def no_metadata(proto) -> None:
    del proto.metadata_props[:]


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (zero_head, "same output"),
        (five_classes, "(5,)"),
        (drop_softmax, "not a distribution"),
        (lie_about_size, "(N, 3, 299, 299)"),
        (no_metadata, "not a Beholder ONNX export"),
        (lambda proto: set_metadata(proto, "architecture", json.dumps({"num_classes": 5})), "5 classes"),
    ],
    ids=[
        "zeroed-head",
        "five-classes",
        "logits-called-probabilities",
        "wrong-input-size",
        "no-metadata",
        "lying-classes",
    ],
)
def test_a_bad_user_onnx_file_is_refused_with_a_clear_error(idealo_cache, tmp_path, capsys, edit, words):
    bad = edited(entry(idealo_cache), tmp_path / "bad.onnx", edit)
    image = asset("ava_sample/images/42039.jpg")
    assert main(["score", "--onnx", str(bad), str(image)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and words in err
    with pytest.raises(ConfigError, match=r"bad\.onnx"):
        Scorer.from_onnx(bad)


def test_a_good_user_onnx_file_scores_like_the_registered_model(idealo_cache, tmp_path, capsys):
    mine = shutil.copy(entry(idealo_cache), tmp_path / "mine.onnx")
    images = asset("ava_sample/images")
    assert main(["score", "--format", "json", "--onnx", str(mine), str(images)]) == 0
    means = {Path(r["path"]).name: r["mean"] for r in json.loads(capsys.readouterr().out)}
    assert means == pytest.approx(IDEALO_KERAS_MEANS, abs=0.01)
    assert main(["score", "--onnx", str(tmp_path / "missing.onnx"), str(images)]) == 2
    assert "ONNX file not found" in capsys.readouterr().err
    assert main(["score", "--onnx", str(mine), "--runtime", "torch", str(images)]) == 2
    assert "--runtime onnx, openvino or auto" in capsys.readouterr().err


# -- export --opset ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> Path:
    import torch

    from beholder.models import Architecture, build_nima, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(
        tmp_path_factory.mktemp("opset") / "small.pt", build_nima(Architecture(alpha=0.25))
    )


@pytest.mark.parametrize("opset", [1, 17, 10_000])
def test_an_opset_that_cannot_be_written_is_refused(small_checkpoint, tmp_path, capsys, opset):
    out = tmp_path / "x.onnx"
    assert (
        main(["export", "--checkpoint", str(small_checkpoint), "--opset", str(opset), "--out", str(out)]) == 2
    )
    assert f"ONNX opset {opset} cannot be written here" in capsys.readouterr().err
    assert not out.exists()


def test_an_opset_that_can_be_written_is_honoured(small_checkpoint, tmp_path, capsys):
    from beholder.export import load_onnx_metadata

    out = tmp_path / "x.onnx"
    assert main(["export", "--checkpoint", str(small_checkpoint), "--opset", "20", "--out", str(out)]) == 0
    assert "opset 20" in capsys.readouterr().err
    assert load_onnx_metadata(out)["opset"] == 20

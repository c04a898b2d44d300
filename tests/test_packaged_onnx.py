"""The default model's ONNX file ships in the package: the first run exports nothing and imports no
torch; the file is pinned, verified once per process, and a damaged copy is refused, never used."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

from beholder import weights  # noqa: E402
from beholder.inference import Scorer  # noqa: E402
from beholder.models import registry  # noqa: E402
from beholder.runtimes import RUNTIMES  # noqa: E402
from conftest import IDEALO_KERAS_MEANS, asset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = registry.get_model_spec(registry.DEFAULT_MODEL)
HEAVY = ("torch", "torchvision", "onnx", "openvino", "h5py", "scipy")
ONNX_RUNTIMES = [name for name in ("onnx", "openvino") if name in RUNTIMES]


def packaged_onnx() -> Path:
    path = SPEC.packaged_onnx_file
    assert path is not None, "the default model's ONNX file is not installed"
    return path


def sample_batch(names: list[str]) -> np.ndarray:
    """The sample AVA images, preprocessed as the default model declares."""
    from beholder.preprocessing import load_input

    folder = asset("ava_sample/images")
    return np.stack([load_input(folder / name, SPEC.preprocessing) for name in names])


def run_onnx(path: Path, batch: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def means(probabilities: np.ndarray) -> np.ndarray:
    return np.asarray(probabilities, np.float64) @ np.arange(1, 11)


def test_the_packaged_onnx_file_is_pinned_and_describes_itself():
    path = packaged_onnx()
    assert path.parent.name == "resources" and path.name == SPEC.packaged_onnx.filename
    assert SPEC.packaged_onnx.format == "onnx" and SPEC.packaged_onnx.url is None
    assert weights.sha256_file(path) == SPEC.packaged_onnx.sha256
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    assert meta["beholder.model"] == SPEC.name and meta["beholder.output"] == "probabilities"
    assert json.loads(meta["beholder.provenance"]) == SPEC.export_provenance()
    assert json.loads(meta["beholder.preprocessing"]) == SPEC.preprocessing.to_dict()
    assert json.loads(meta["beholder.architecture"]) == SPEC.architecture.to_dict()


def test_the_packaged_onnx_file_reproduces_the_packaged_weights():
    torch = pytest.importorskip("torch")
    from beholder.models import create_model

    names = sorted(IDEALO_KERAS_MEANS)
    batch = sample_batch(names)
    model = create_model(SPEC.name)  # from the packaged safetensors file
    with torch.inference_mode():
        expected = torch.softmax(model(torch.from_numpy(batch)), dim=-1).numpy()
    got = run_onnx(packaged_onnx(), batch)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    keras = np.array([IDEALO_KERAS_MEANS[name] for name in names])
    np.testing.assert_allclose(means(got), keras, atol=0.01)


@pytest.mark.slow
def test_a_first_run_with_an_empty_cache_exports_nothing_and_imports_no_torch(tmp_path):
    images = asset("ava_sample/images")
    code = (
        "import json, sys\n"
        "from beholder.cli import main\n"
        f"code = main(['score', '--format', 'json', '--no-progress', {str(images)!r}])\n"
        f"print(json.dumps({{'code': code, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))\n"
    )
    cache, onnx_cache = tmp_path / "cache", tmp_path / "onnx-cache"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT / "src"),
        "BEHOLDER_CACHE": str(cache),
        "BEHOLDER_ONNX_CACHE": str(onnx_cache),
    }
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    *scores, summary = done.stdout.strip().splitlines()
    summary = json.loads(summary)
    assert summary == {"code": 0, "heavy": []}
    assert "exporting" not in done.stderr
    found = {Path(r["path"]).name: r["mean"] for r in json.loads("\n".join(scores))}
    assert found == pytest.approx(IDEALO_KERAS_MEANS, abs=0.01)
    # Nothing was written: no export, no cache entry, not even the folders.
    assert not onnx_cache.exists() and not cache.exists()


@pytest.mark.parametrize("runtime", [*ONNX_RUNTIMES, "auto"])
def test_the_onnx_runtimes_run_the_packaged_file_as_it_is(runtime, shared_onnx_cache):
    before = sorted(shared_onnx_cache.iterdir())
    scorer = Scorer.from_pretrained(runtime=runtime, device="cpu")
    assert scorer.model is None  # no torch model was built
    assert scorer.runtime.path == packaged_onnx()
    assert sorted(shared_onnx_cache.iterdir()) == before  # nothing exported
    names = sorted(IDEALO_KERAS_MEANS)
    results = scorer.score([str(asset("ava_sample/images") / name) for name in names])
    assert [r.mean for r in results] == pytest.approx([IDEALO_KERAS_MEANS[n] for n in names], abs=0.01)


def test_the_packaged_file_is_hashed_once_per_process(monkeypatch):
    hashed: list[Path] = []
    real = weights.sha256_file

    def counting(path):
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(weights, "_PACKAGED_CHECKS", {})
    monkeypatch.setattr(weights, "sha256_file", counting)
    assert SPEC.verified_packaged_onnx() == packaged_onnx()
    assert SPEC.verified_packaged_onnx() == packaged_onnx()
    assert hashed == [packaged_onnx()]


class ExportTried(Exception):
    """Raised by the test's stand-in for the exporter: the export path was taken."""


def test_explicit_weights_take_the_export_path(monkeypatch, tmp_path):
    pytest.importorskip("onnxscript")
    h5 = asset("nima_idealo/weights_mobilenet_aesthetic_0.07.hdf5")
    monkeypatch.setenv("BEHOLDER_ONNX_CACHE", str(tmp_path))

    def refuse(*args, **kwargs):
        raise ExportTried

    monkeypatch.setattr("beholder.export.export_onnx", refuse)
    with pytest.raises(ExportTried):
        Scorer.from_pretrained(weights=h5, runtime="onnx")


@pytest.fixture
def tampered_packaged_onnx(tmp_path, monkeypatch) -> Path:
    """The registry's packaged ONNX file replaced by a copy with a few bytes flipped."""
    copy = shutil.copy(packaged_onnx(), tmp_path / SPEC.packaged_onnx.filename)
    data = bytearray(copy.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    copy.write_bytes(bytes(data))
    real = registry.packaged_path
    monkeypatch.setattr(
        registry,
        "packaged_path",
        lambda name: copy if name == SPEC.packaged_onnx.filename else real(name),
    )
    return copy


@pytest.mark.slow
def test_a_tampered_packaged_file_is_refused_and_the_model_exported(
    tampered_packaged_onnx, tmp_path, monkeypatch, caplog
):
    pytest.importorskip("onnxscript")
    assert SPEC.packaged_onnx_file == tampered_packaged_onnx
    cache = tmp_path / "onnx-cache"
    monkeypatch.setenv("BEHOLDER_ONNX_CACHE", str(cache))
    with caplog.at_level(logging.WARNING):
        scorer = Scorer.from_pretrained(runtime="onnx")
    assert str(tampered_packaged_onnx) in caplog.text and "does not match" in caplog.text
    assert scorer.runtime.path.parent == cache  # exported into the cache, the damaged file unused
    names = sorted(IDEALO_KERAS_MEANS)
    results = scorer.score([str(asset("ava_sample/images") / name) for name in names])
    assert [r.mean for r in results] == pytest.approx([IDEALO_KERAS_MEANS[n] for n in names], abs=0.01)


@pytest.mark.slow
def test_the_build_script_reproduces_the_packaged_file(tmp_path):
    pytest.importorskip("onnxscript")
    script = ROOT / "scripts" / "make_packaged_onnx.py"
    module_spec = importlib.util.spec_from_file_location("make_packaged_onnx", script)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    rebuilt = module.build(tmp_path / "rebuilt.onnx")
    batch = np.concatenate(
        [
            sample_batch(sorted(IDEALO_KERAS_MEANS)),
            np.random.default_rng(0).uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32),
        ]
    )
    np.testing.assert_allclose(run_onnx(rebuilt, batch), run_onnx(packaged_onnx(), batch), rtol=0, atol=1e-6)
    from beholder.export import load_onnx_metadata

    fresh, shipped = load_onnx_metadata(rebuilt), load_onnx_metadata(packaged_onnx())
    assert fresh == shipped

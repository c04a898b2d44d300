"""The default model's weights ship inside the package: offline from the first run, verified on load."""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from beholder.cli import main
from beholder.errors import WeightsUnavailableError
from beholder.models import create_model, registry
from beholder.models.nima import build_nima, load_keras_nima_weights
from beholder.preprocessing import build_eval_transform
from beholder.weights import load_packaged_state_dict, sha256_file
from conftest import IDEALO_KERAS_MEANS, asset

ROOT = Path(__file__).resolve().parents[1]
SPEC = registry.get_model_spec(registry.DEFAULT_MODEL)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    """No BEHOLDER_WEIGHTS_PATH, the (empty, temporary) cache only, and every socket connect refused."""
    attempts: list = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError(f"network blocked by the test (connect to {address})")

    monkeypatch.delenv("BEHOLDER_WEIGHTS_PATH", raising=False)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def keras_means(model: torch.nn.Module, folder: Path) -> dict[str, float]:
    transform = build_eval_transform(model.preprocessing)
    names = sorted(IDEALO_KERAS_MEANS)
    batch = torch.stack([transform(Image.open(folder / name).convert("RGB")) for name in names])
    with torch.inference_mode():
        probabilities = torch.softmax(model(batch), dim=-1).double().numpy()
    return dict(zip(names, probabilities @ np.arange(1, 11)))


def test_default_model_is_packaged_and_pinned() -> None:
    path = SPEC.packaged_file
    assert path is not None and path.parent.name == "resources" and path.name == SPEC.packaged.filename
    assert SPEC.packaged.format == "safetensors" and SPEC.packaged.url is None
    assert sha256_file(path) == SPEC.packaged.sha256
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["beholder"])
    assert meta["source_sha256"] == SPEC.weights.sha256 and meta["source_url"] == SPEC.weights.url
    assert meta["dtype"] == "float32" and meta["model"] == SPEC.name
    assert meta["converted_by"] == "scripts/convert_idealo_weights.py"


def test_offline_default_model_reproduces_keras_means(no_network, isolated_cache, sample_images) -> None:
    model = create_model(registry.DEFAULT_MODEL)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    means = keras_means(model, sample_images)
    for name, expected in IDEALO_KERAS_MEANS.items():
        assert means[name] == pytest.approx(expected, abs=0.01), name
    assert no_network == [] and list(isolated_cache.iterdir()) == []  # no download tried, nothing cached


@pytest.mark.slow
def test_offline_score_command_exits_0_with_keras_means(no_network, sample_images, capsys) -> None:
    code = main(["score", "--format", "json", str(sample_images)])
    results = json.loads(capsys.readouterr().out)
    assert code == 0
    means = {Path(row["path"]).name: row["mean"] for row in results}
    assert means.keys() == IDEALO_KERAS_MEANS.keys()
    for name, expected in IDEALO_KERAS_MEANS.items():
        assert means[name] == pytest.approx(expected, abs=0.01), name
    assert no_network == []


def test_packaged_weights_equal_the_h5_weights() -> None:
    source = asset("nima_idealo/weights_mobilenet_aesthetic_0.07.hdf5")
    from_h5 = build_nima(SPEC.architecture, preprocessing=SPEC.preprocessing)
    load_keras_nima_weights(from_h5, source)
    packaged = load_packaged_state_dict(SPEC.packaged)
    assert packaged.keys() == from_h5.state_dict().keys()
    for name, tensor in from_h5.state_dict().items():
        assert torch.equal(packaged[name], tensor), name


def corrupted_copy(tmp_path: Path) -> Path:
    copy = tmp_path / SPEC.packaged.filename
    shutil.copyfile(SPEC.packaged_file, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    return copy


def test_corrupted_packaged_file_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    copy = corrupted_copy(tmp_path)
    with pytest.raises(WeightsUnavailableError, match="does not match the expected") as caught:
        load_packaged_state_dict(SPEC.packaged, copy)
    assert str(copy) in str(caught.value) and "reinstall" in str(caught.value)
    # The same through create_model, with the registry's lookup pointed at the damaged copy.
    monkeypatch.setattr(registry, "packaged_path", lambda filename: tmp_path / filename)
    with pytest.raises(WeightsUnavailableError, match=str(copy)):
        create_model(registry.DEFAULT_MODEL)


def test_corrupted_packaged_file_makes_score_exit_2(tmp_path: Path, monkeypatch, capsys) -> None:
    corrupted_copy(tmp_path)
    monkeypatch.setattr(registry, "packaged_path", lambda filename: tmp_path / filename)
    image = asset("ava_sample/images/42039.jpg")
    assert main(["score", str(image)]) == 2
    assert str(tmp_path / SPEC.packaged.filename) in capsys.readouterr().err


def test_wrong_file_with_matching_pin_is_refused(tmp_path: Path) -> None:
    """A safetensors file that is not a packaged Beholder state_dict is named and refused."""
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    unpinned = registry.WeightsSpec(**{**SPEC.packaged.to_dict(), "sha256": None})
    with pytest.raises(WeightsUnavailableError, match="metadata format"):
        load_packaged_state_dict(unpinned, other)


def test_explicit_weights_override_the_packaged_file(monkeypatch) -> None:
    source = asset("nima_idealo/weights_mobilenet_aesthetic_0.07.hdf5")

    def must_not_load(*args, **kwargs):
        raise AssertionError("the packaged file was read although --weights was given")

    monkeypatch.setattr("beholder.models.factory.load_packaged_state_dict", must_not_load)
    model = create_model(registry.DEFAULT_MODEL, weights=source)
    assert model.head[1].weight.shape == (10, 1024)


def test_missing_packaged_file_falls_back_to_the_search_path(idealo_weights, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(registry, "packaged_path", lambda filename: tmp_path / "absent" / filename)
    assert SPEC.packaged_file is None
    model = create_model(registry.DEFAULT_MODEL)
    assert model.head[1].weight.shape == (10, 1024)


def test_conversion_script_reproduces_the_packaged_file(tmp_path: Path) -> None:
    source = asset("nima_idealo/weights_mobilenet_aesthetic_0.07.hdf5")
    module_spec = importlib.util.spec_from_file_location(
        "convert", ROOT / "scripts/convert_idealo_weights.py"
    )
    convert = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(convert)
    out = tmp_path / "converted.safetensors"
    assert convert.main([str(source), "--out", str(out)]) == 0
    assert sha256_file(out) == SPEC.packaged.sha256
    wrong = tmp_path / "wrong.hdf5"
    wrong.write_bytes(source.read_bytes()[:-1])
    with pytest.raises(SystemExit, match="is not idealo's file"):
        convert.main([str(wrong), "--out", str(tmp_path / "never.safetensors")])
    assert not (tmp_path / "never.safetensors").exists()

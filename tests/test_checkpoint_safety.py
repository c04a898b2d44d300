"""A crafted checkpoint runs no code, in any path that loads one (data, never code)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from beholder.cli import main
from beholder.models.checkpoint import CHECKPOINT_FORMAT, read_checkpoint, save_checkpoint
from beholder.training.rng import rng_state, set_rng_state


class _Payload:
    """Unpickling this creates a marker file: the code-execution attempt."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _poisoned(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model": {}, "evil": _Payload(marker)}, path)
    return path


@pytest.fixture
def poisoned(tmp_path):
    marker = tmp_path / "code-ran"
    return _poisoned(tmp_path / "evil.pt", marker), marker


def test_plain_torch_load_would_run_it(poisoned):
    """The fixture is a real attack: an unsafe load runs its code."""
    path, marker = poisoned
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_read_checkpoint_refuses_it(poisoned):
    path, marker = poisoned
    with pytest.raises(Exception, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()


def test_scorer_from_checkpoint_refuses_it(poisoned):
    from beholder import Scorer

    path, marker = poisoned
    with pytest.raises(Exception, match="refused"):
        Scorer.from_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["score", "--checkpoint", "{ckpt}", "{image}"],
        ["evaluate", "--checkpoint", "{ckpt}", "--images", "{dir}", "--labels", "{labels}", "--out", "{out}"],
        ["export", "--checkpoint", "{ckpt}", "--out", "{out}/m.onnx"],
        ["serve", "--checkpoint", "{ckpt}", "--port", "0"],
    ],
    ids=["score", "evaluate", "export", "serve"],
)
def test_cli_load_paths_refuse_it(tmp_path, poisoned, argv, capsys):
    from conftest import make_photo

    path, marker = poisoned
    image = make_photo(tmp_path / "imgs" / "a.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,mean\na.jpg,5.0\n")
    values = {"ckpt": path, "image": image, "dir": image.parent, "labels": labels, "out": tmp_path / "out"}
    code = main([part.format(**values) for part in argv])
    assert code == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_train_resume_refuses_a_poisoned_last_pt(tmp_path, capsys):
    run = tmp_path / "run"
    marker = tmp_path / "code-ran"
    _poisoned(run / "checkpoints" / "last.pt", marker)
    (run / "config.yaml").write_text("seed: 0\n")
    code = main(["train", "--data", str(tmp_path / "data"), "--out", str(run), "--resume"])
    assert code == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()


def test_training_state_round_trips_through_a_safe_checkpoint(tmp_path):
    """RNG states and numpy values are stored as plain data and come back exactly."""
    import random

    import numpy as np

    from beholder.models.nima import Architecture, build_nima

    model = build_nima(Architecture(alpha=0.25))
    state = rng_state()
    path = save_checkpoint(tmp_path / "last.pt", model, rng=state, metrics={"emd": np.float64(0.5)})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    payload = read_checkpoint(path)  # weights_only=True
    assert payload["metrics"]["emd"] == 0.5 and type(payload["metrics"]["emd"]) is float
    set_rng_state(payload["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]
    with pytest.raises(TypeError, match="not plain data"):
        save_checkpoint(tmp_path / "bad.pt", model, extra=object())


def _old_format(path: Path) -> Path:
    """A checkpoint as Beholder wrote them before weights_only: NumPy RNG state, pickled objects."""
    import numpy as np

    from beholder.models.nima import Architecture, build_nima

    model = build_nima(Architecture(alpha=0.25))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "architecture": model.architecture.to_dict(),
        "preprocessing": model.preprocessing.to_dict(),
        "provenance": {},
        "model": model.state_dict(),
        "rng": {"numpy": np.random.get_state()},  # a tuple holding an ndarray: refused without the flag
    }
    torch.save(payload, path)
    return path


def test_old_format_checkpoint_is_refused_with_a_hint_and_loads_with_trust(
    tmp_path, capsys, caplog, monkeypatch
):
    from beholder.models.checkpoint import load_checkpoint
    from conftest import make_photo

    path = _old_format(tmp_path / "old.pt")
    image = make_photo(tmp_path / "a.jpg")
    assert main(["score", "--checkpoint", str(path), str(image)]) == 2
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert (
        main(["score", "--checkpoint", str(path), "--trust-checkpoint", "--format", "json", str(image)]) == 0
    )
    assert '"mean"' in capsys.readouterr().out
    assert any("old-format checkpoint" in r.message and r.levelname == "WARNING" for r in caplog.records)
    model, payload = load_checkpoint(path, trust=True)
    assert model.architecture.alpha == 0.25 and len(payload["rng"]["numpy"]) == 5
    exported = []  # export loads the trusted checkpoint; the ONNX writing itself is not the point
    monkeypatch.setattr("beholder.export.export_onnx", lambda model, path, **kw: exported.append(model))
    monkeypatch.setattr("beholder.export.load_onnx_metadata", lambda path: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["export", "--checkpoint", str(path), "--trust-checkpoint", "--out", str(tmp_path / "m.onnx")])
    assert len(exported) == 1 and exported[0].architecture.alpha == 0.25


@pytest.mark.parametrize("command", ["score", "export", "evaluate", "serve"])
def test_every_model_command_has_the_trust_flag_and_a_poisoned_file_runs_no_code_even_with_it(
    tmp_path, poisoned, command
):
    from beholder.cli import build_parser

    required = {"score": ["a.jpg"], "export": ["--out", "m.onnx"], "evaluate": ["--data", "d", "--out", "o"]}
    args = build_parser().parse_args(
        [command, "--checkpoint", "x.pt", "--trust-checkpoint", *required.get(command, [])]
    )
    assert args.trust_checkpoint is True
    path, marker = poisoned
    with pytest.raises(Exception, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(Exception, match="refused"):  # the flag admits NumPy data, never code
        read_checkpoint(path, trust=True)
    assert not marker.exists()

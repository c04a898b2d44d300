"""Training stops with a clear message and keeps what is done: NaN loss, full disk, file modes, bad setup."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest
import torch

from beholder import cli
from beholder.config import load_config
from beholder.losses import EMDLoss
from beholder.models.checkpoint import CheckpointWriteError, read_checkpoint, save_checkpoint
from beholder.models.nima import Architecture, build_nima
from beholder.training import TrainingDivergedError, fit, train_one_epoch
from train_helpers import TINY, make_prepared_dir, require_weights


@pytest.fixture()
def small_data(tmp_path):
    return make_prepared_dir(tmp_path / "data", counts=(24, 8, 0), size=48, cache_size=40)


def _strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which strict JSON does not allow")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_first_non_finite_loss_with_exit_2(
    small_data, tmp_path, monkeypatch, capsys
):
    require_weights(monkeypatch)
    run = tmp_path / "run"
    overrides = [
        *TINY,
        "batch_size=8",
        "phase1.epochs=1",
        "phase1.lr=1e-3",
        "phase2.epochs=4",
        "phase2.lr=1e9",
    ]
    code = cli.main(["train", "--data", str(small_data), "--out", str(run), *overrides])
    out, err = capsys.readouterr()
    assert code == 2
    # lr 1e9 saturates the softmax: the loss stays finite, every image gets the same prediction.
    assert "epoch 2/5 phase 2: the model predicts the same distribution for all 8 validation images" in err
    assert "learning rate that is too high" in err
    assert f"last good checkpoint: {run / 'checkpoints' / 'last.pt'} (epoch 1" in err
    assert "score with" not in out and "epoch 3/5" not in out  # no second epoch of NaN
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("epoch 1/5 phase 1:")
    summary = _strict_json(run / "summary.json")
    assert summary["epochs"] == 1 and summary["best_epoch"] == 1 and "collapsed" in summary["stopped"]
    assert read_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    # The weights on disk are the last finite ones.
    last = read_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.isfinite(value).all() for value in last["model"].values() if value.is_floating_point())


@pytest.mark.slow
def test_no_finished_epoch_means_no_best_checkpoint_in_the_summary(small_data, tmp_path, monkeypatch):
    require_weights(monkeypatch)
    config = load_config(None, [*TINY, "batch_size=8", "phase1.epochs=0", "phase2.epochs=4", "phase2.lr=1e9"])
    with pytest.raises(
        TrainingDivergedError, match=r"epoch 1/4 phase 2: .*collapsed.*no checkpoint was written"
    ):
        fit(config, small_data, tmp_path / "run")
    summary = _strict_json(tmp_path / "run" / "summary.json")
    assert summary["epochs"] == 0 and summary["best_checkpoint"] is None and summary["best_val_emd"] is None
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()


def test_a_nan_loss_stops_before_the_optimizer_steps_on_it():
    model = build_nima(Architecture(alpha=0.25, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    batches = [(torch.rand(2, 3, 32, 32), torch.full((2, 10), 0.1))] * 3

    def loss_fn(logits, targets):  # finite for the first batch, NaN from the second on
        loss_fn.calls += 1
        loss = EMDLoss()(logits, targets)
        return loss if loss_fn.calls == 1 else loss * float("nan")

    loss_fn.calls = 0
    with pytest.raises(
        TrainingDivergedError, match=r"train, step 2: the training loss is nan \(not finite\)"
    ):
        train_one_epoch(model, batches, optimizer, loss_fn, torch.device("cpu"))
    assert loss_fn.calls == 2 and optimizer.state[model.head[1].weight]["step"] == 1  # only the finite step
    after = model.state_dict()
    assert all(torch.isfinite(value).all() for value in after.values() if value.is_floating_point())
    assert not torch.equal(before["head.1.weight"], after["head.1.weight"])


@pytest.mark.slow
def test_a_full_disk_names_the_last_good_checkpoint(small_data, tmp_path, monkeypatch, capsys):
    require_weights(monkeypatch)
    real_save = torch.save
    disk = {"full": False}

    def save(obj, f, *args, **kwargs):
        if disk["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    config = load_config(None, [*TINY, "batch_size=8", "phase1.epochs=2", "phase2.epochs=0"])
    run = tmp_path / "run"
    with pytest.raises(CheckpointWriteError) as caught:
        fit(config, small_data, run, on_epoch_end=lambda row, line: disk.update(full=True))
    message = str(caught.value)
    assert "no space left on device" in message
    assert f"last good checkpoint: {run / 'checkpoints' / 'last.pt'} (epoch 1" in message
    assert read_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1  # intact
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temporaries
    assert len((run / "history.csv").read_text().splitlines()) == 2  # header + epoch 1

    # Through the CLI: exit code 2 and the same message, on resume too.
    monkeypatch.setattr(torch, "save", save)
    code = cli.main(["train", "--data", str(small_data), "--out", str(run), "--resume"])
    assert code == 2
    assert "no space left on device" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_real_write_failure_from_the_kernel_is_reported_with_its_reason(tmp_path, monkeypatch):
    # /dev/full answers every write with ENOSPC, as a full disk does: torch's writer must let the
    # reason through rather than a RuntimeError without it.
    import beholder.models.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "atomic_write", lambda path, write: write(Path("/dev/full")))
    with pytest.raises(
        CheckpointWriteError, match=r"model\.pt: cannot write the checkpoint: no space left on device"
    ):
        save_checkpoint(tmp_path / "model.pt", build_nima(Architecture(alpha=0.25)))


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_checkpoints_get_the_umask_mode(tmp_path, umask):
    model = build_nima(Architecture(alpha=0.25))
    previous = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "model.pt", model, epoch=1)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert read_checkpoint(path)["epoch"] == 1
    payload = read_checkpoint(path)
    assert "sampler" not in payload and "extra" not in payload["preprocessing"]


def test_missing_backbone_weights_name_the_training_option(small_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BEHOLDER_WEIGHTS_PATH", str(tmp_path / "empty"))
    overrides = [*TINY, "model.alpha=1.0", "model.backbone_weights=keras-mobilenet-v1-1.0-coralqat"]
    code = cli.main(["train", "--data", str(small_data), "--out", str(tmp_path / "run"), *overrides])
    err = capsys.readouterr().err
    assert code == 2
    assert "mobilenet_1_0_224_coralqat_no_top.h5" in err and "model.backbone_weights=FILE" in err
    assert "--weights" not in err


def test_an_image_size_larger_than_the_prepared_cache_is_refused(tmp_path, monkeypatch, capsys):
    from conftest import make_photo

    for i in range(12):
        make_photo(tmp_path / "photos" / f"{i}.jpg", size=(80, 60), seed=i)
    (tmp_path / "ratings.csv").write_text(
        "path,mean\n" + "".join(f"photos/{i}.jpg,{3 + i / 3}\n" for i in range(12))
    )
    prepared = tmp_path / "prepared"
    argv = [
        "prepare",
        "--labels",
        str(tmp_path / "ratings.csv"),
        "--out",
        str(prepared),
        "--image-size",
        "40",
    ]
    assert cli.main([*argv, "--min-side", "32", "--val-fraction", "0.25", "--test-fraction", "0"]) == 0
    capsys.readouterr()
    overrides = [*TINY, "data.image_size=64", "data.crop=56", "model.backbone_weights=null"]
    assert cli.main(["train", "--data", str(prepared), "--out", str(tmp_path / "run"), *overrides]) == 2
    err = capsys.readouterr().err
    assert "data.image_size=64 is larger than the cache" in err and "40x40" in err and "prepare.json" in err
    assert not (tmp_path / "run" / "checkpoints").exists()

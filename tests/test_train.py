"""Two-phase NIMA training: it learns, phase 1 freezes, resume is exact, DDP runs, checkpoints score.

The "it learns" run trains the width-0.25 Keras MobileNet (ImageNet weights from ../shared/assets)
on generated images whose rating distributions follow their brightness, at 64 px crops.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from beholder import metrics
from beholder.config import load_config, to_dict
from beholder.data.dataset import EpochSampler, RatingDataset
from beholder.data.manifest import load_manifest as read_manifest
from beholder.errors import ConfigError
from beholder.losses import EMDLoss
from beholder.models.checkpoint import load_checkpoint, read_checkpoint
from beholder.models.factory import create_training_model as build_model
from beholder.preprocessing import build_eval_transform, build_train_transform
from beholder.training import (
    HISTORY_COLUMNS,
    build_optimizer,
    build_scheduler,
    fit,
    freeze_backbone,
    train_one_epoch,
    unfreeze_backbone,
)
from beholder.training import validate as evaluate
from train_helpers import (
    TINY,
    WEIGHTS_025,
    WEIGHTS_025_DIR,
    make_prepared_dir,
    require_weights,
    target_matrix,
)

# The "it learns" recipe: phase 1 (5 epochs) + a short phase 2 on 256 images at 64 px crops.
LEARN = [
    *TINY,
    "data.image_size=72",
    "data.crop=64",
    "model.dropout=0.2",
    "phase1.epochs=5",
    "phase1.lr=0.01",
    "phase2.epochs=1",
    "phase2.lr=1e-4",
]


def read_history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def predict_split(model, frame) -> np.ndarray:
    """(N, 10) predicted distributions for manifest rows, with the checkpoint's eval preprocessing."""
    dataset = RatingDataset(frame, build_eval_transform(model.preprocessing))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.inference_mode():
        return torch.softmax(model(images), dim=-1).numpy()


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """One short training run shared by the tests that need a trained run directory."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        require_weights(monkeypatch)
        root = tmp_path_factory.mktemp("learn")
        data = make_prepared_dir(root / "data", counts=(256, 64, 96), size=80, cache_size=72, seed=1)
        config = load_config(None, LEARN)
        rows = []
        summary = fit(config, data, root / "run", on_epoch_end=lambda row, line: rows.append(line))
        yield {"data": data, "run": root / "run", "config": config, "summary": summary, "lines": rows}


@pytest.mark.slow
def test_training_learns_the_rating_function(learned):
    manifest = read_manifest(learned["data"])
    train, test = manifest[manifest.split == "train"], manifest[manifest.split == "test"]
    model, payload = load_checkpoint(learned["run"] / "checkpoints" / "best.pt")
    predicted = predict_split(model, test)  # (96, 10), held out from training and model selection
    truth = target_matrix(test)
    baseline = np.tile(target_matrix(train).mean(axis=0), (len(test), 1))  # predict the training mean
    srcc = metrics.srcc(metrics.distribution_mean(truth), metrics.distribution_mean(predicted))
    emd, baseline_emd = metrics.emd(truth, predicted), metrics.emd(truth, baseline)
    print(f"held-out SRCC {srcc:.3f}, EMD {emd:.4f} vs training-mean baseline {baseline_emd:.4f}")
    assert srcc >= 0.8
    assert emd < 0.7 * baseline_emd
    assert payload["epoch"] == learned["summary"]["best_epoch"]


@pytest.mark.slow
def test_run_directory_holds_every_artefact(learned):
    run, config, summary = learned["run"], learned["config"], learned["summary"]
    assert load_config(run / "config.yaml") == config
    history = read_history(run / "history.csv")
    assert list(history[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in history] == list(range(1, 7))
    assert [int(r["phase"]) for r in history] == [1] * 5 + [2]
    assert all(float(r["images_per_second"]) > 0 and float(r["seconds"]) > 0 for r in history)
    # Phase 2 took 16 steps; the lr of its last one (t=15) follows Keras' time decay.
    assert float(history[-1]["lr"]) == pytest.approx(1e-4 / (1 + 2.3e-5 * 15), rel=1e-6)
    val_losses = [float(r["val_loss"]) for r in history]
    assert summary["best_epoch"] == int(np.argmin(val_losses)) + 1
    assert summary["best_val_emd"] == pytest.approx(min(val_losses))
    assert summary["images_seen"] == 6 * 256 and summary["world_size"] == 1
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert (run / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(learned["lines"]) == 6 and learned["lines"][0].startswith("epoch 1/6 phase 1:")
    last = read_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 6 and last["phase"] == 2 and last["config"] == to_dict(config)
    assert {"optimizer", "scheduler", "rng", "history"} <= set(last)
    assert last["preprocessing"]["resize"] == [72, 72] and last["preprocessing"]["crop"] == 64
    assert last["provenance"]["backbone_weights"] == "keras-mobilenet-v1-0.25-imagenet"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.slow
def test_resume_refuses_a_changed_config_and_a_fresh_run_refuses_an_old_directory(learned):
    changed = load_config(None, [*LEARN, "phase2.lr=1e-3", "data.num_workers=1"])
    with pytest.raises(ConfigError, match=r"differs from the run.*phase2\.lr: 0\.0001 -> 0\.001"):
        fit(changed, learned["data"], learned["run"], resume=True)
    with pytest.raises(ConfigError, match="already holds a run"):
        fit(learned["config"], learned["data"], learned["run"])
    # Resuming a finished run trains nothing and reports the same best epoch.
    again = fit(load_config(learned["run"] / "config.yaml"), learned["data"], learned["run"], resume=True)
    assert again["best_epoch"] == learned["summary"]["best_epoch"] and again["epochs"] == 6


@pytest.mark.slow
def test_score_cli_uses_the_trained_checkpoint(learned, capsys):
    from beholder import cli

    if not (Path(cli.__file__).parent / "score.py").is_file():
        pytest.skip("beholder score is not there yet")
    manifest = read_manifest(learned["data"])
    test = manifest[manifest.split == "test"].head(12)
    best = learned["run"] / "checkpoints" / "best.pt"
    code = cli.main(
        ["score", "--checkpoint", str(best), "--format", "json", "--no-progress", *test["source_path"]]
    )
    assert code == 0
    scored = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in scored] == list(test["source_path"])
    expected = predict_split(load_checkpoint(best)[0], test.assign(cache_path=test["source_path"]))
    np.testing.assert_allclose([r["distribution"] for r in scored], expected, atol=2e-3)
    means = [r["mean"] for r in scored]
    assert metrics.srcc(test["mean"], means) >= 0.8


@pytest.fixture()
def small_data(tmp_path):
    return make_prepared_dir(tmp_path / "data", counts=(24, 8, 0), size=48, cache_size=40)


def test_keras_time_decay_is_a_per_step_scheduler():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([parameter], lr=3e-5)
    scheduler = build_scheduler(optimizer, decay=0.1)
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(seen, [3e-5 / (1 + 0.1 * t) for t in range(5)], rtol=1e-12)


def test_phase1_leaves_the_backbone_bit_identical_and_phase2_changes_it(small_data, monkeypatch):
    require_weights(monkeypatch)
    config = load_config(None, [*TINY, "batch_size=8", "phase2.backbone_lr=1e-3", "phase2.lr=1e-2"])
    model, _ = build_model(config)
    frame = read_manifest(small_data).query("split == 'train'")
    dataset = RatingDataset(frame, build_train_transform(model.preprocessing))
    sampler = EpochSampler(len(dataset), seed=0, batch_size=8)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}  # params + BN buffers
    head_before = model.head[1].weight.detach().clone()

    freeze_backbone(model)
    optimizer = build_optimizer(config.optimizer, model, config.phase1)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {
        id(p) for p in model.head.parameters()
    }
    stats = train_one_epoch(model, loader, optimizer, EMDLoss(), torch.device("cpu"))
    assert stats["images"] == 24
    assert not model.backbone.training and model.head.training  # BN stays in eval after model.train()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "phase 1 changed the backbone"
    assert all(p.grad is None for p in model.backbone.parameters())
    assert not torch.equal(head_before, model.head[1].weight)

    unfreeze_backbone(model)
    optimizer = build_optimizer(config.optimizer, model, config.phase2)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-2, 1e-3]  # head, backbone
    train_one_epoch(
        model, loader, optimizer, EMDLoss(), torch.device("cpu"), scheduler=build_scheduler(optimizer, 0)
    )
    assert model.backbone.training
    after = model.backbone.state_dict()
    assert not torch.equal(before["features.conv1.weight"], after["features.conv1.weight"])
    assert not torch.equal(
        before["features.conv_pw_13_bn.running_mean"], after["features.conv_pw_13_bn.running_mean"]
    )
    assert (
        after["features.conv1_bn.num_batches_tracked"] == before["features.conv1_bn.num_batches_tracked"] + 3
    )


@pytest.mark.slow
def test_feature_cache_phase1_learns_without_touching_the_backbone(small_data, tmp_path, monkeypatch):
    require_weights(monkeypatch)
    config = load_config(
        None,
        [*TINY, "batch_size=8", "feature_cache=true", "phase1.epochs=4", "phase1.lr=0.01", "phase2.epochs=0"],
    )
    summary = fit(config, small_data, tmp_path / "run")
    history = read_history(tmp_path / "run" / "history.csv")
    assert len(history) == 4 and summary["images_seen"] == 4 * 24
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    trained, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    fresh, _ = build_model(config)
    for key, value in fresh.backbone.state_dict().items():
        assert torch.equal(value, trained.backbone.state_dict()[key]), key


class _Stop(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [
        ["data.num_workers=1"],
        ["feature_cache=true"],
        ["data.rebalance.enabled=true", "data.rebalance.target_share=0.2", "data.rebalance.max_copies=2"],
    ],
)
def test_resume_is_exact_with_persistent_workers_and_the_feature_cache(
    small_data, tmp_path, monkeypatch, extra
):
    # A DataLoader that draws its workers' seed from the global RNG when it is first iterated
    # (persistent workers: once per process; the feature cache: whenever it extracts) shifts the
    # dropout masks of the epoch a run resumes at.
    require_weights(monkeypatch)
    config = load_config(None, [*TINY, "batch_size=8", "phase1.epochs=2", "phase2.epochs=1", *extra])
    fit(config, small_data, tmp_path / "straight")

    def stop_after_epoch_1(row, line):
        if row["epoch"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        fit(config, small_data, tmp_path / "stopped", on_epoch_end=stop_after_epoch_1)
    fit(config, small_data, tmp_path / "stopped", resume=True)
    expected = read_history(tmp_path / "straight" / "history.csv")
    resumed = read_history(tmp_path / "stopped" / "history.csv")
    for column in ("train_loss", "val_loss"):
        np.testing.assert_allclose(
            [float(r[column]) for r in resumed],
            [float(r[column]) for r in expected],
            rtol=1e-5,
            err_msg=column,
        )


@pytest.mark.slow
def test_a_finished_run_is_extended_by_resuming_with_more_epochs_in_its_last_phase(
    small_data, tmp_path, monkeypatch, capsys
):
    from beholder import cli

    require_weights(monkeypatch)
    run = tmp_path / "run"
    start = [
        *TINY,
        "batch_size=8",
        "phase1.epochs=1",
        "phase2.epochs=1",
        "phase2.lr=1e-3",
        "phase2.decay=0.5",
    ]
    assert cli.main(["train", "--data", str(small_data), "--out", str(run), *start]) == 0
    assert "resumed" not in capsys.readouterr().out
    for fewer in ("phase2.epochs=0", "phase1.epochs=2"):
        assert cli.main(["train", "--data", str(small_data), "--out", str(run), "--resume", fewer]) == 2
        assert "differs from the run" in capsys.readouterr().err
    assert (
        cli.main(["train", "--data", str(small_data), "--out", str(run), "--resume", "phase2.epochs=2"]) == 0
    )
    out = capsys.readouterr().out
    assert "resumed from epoch 2" in out and "epoch 3/3 phase 2:" in out
    history = read_history(run / "history.csv")
    assert [(r["epoch"], r["phase"]) for r in history] == [("1", "1"), ("2", "2"), ("3", "2")]
    # The phase's schedule went on: 3 steps per epoch, so epoch 3 ended at step t=5 of phase 2.
    assert float(history[-1]["lr"]) == pytest.approx(1e-3 / (1 + 0.5 * 5), rel=1e-6)
    assert load_config(run / "config.yaml").phase2.epochs == 2


def _train_command(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "beholder", "train", "--data", str(data), "--out", str(run), *extra]


RESUME = [
    *TINY,
    f"model.backbone_weights={WEIGHTS_025}",  # a direct file path works as well as a registered name
    "batch_size=8",
    "phase1.epochs=2",
    "phase2.epochs=3",
    "phase2.lr=1e-3",
    "phase2.decay=0.01",
    "data.undersample_per_bin=4",  # a different seeded subset every epoch
]


def _run_until(command: list[str], history: Path, rows: int, env: dict[str, str]) -> int:
    """Start ``command``, SIGKILL it once ``history`` has ``rows`` data rows; returns rows reached."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if history.is_file() and len(history.read_text().splitlines()) - 1 >= rows:
                break
            time.sleep(0.005)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, (
        f"run ended on its own ({process.returncode}): {stderr.decode()}"
    )
    return int(read_checkpoint(history.parent / "checkpoints" / "last.pt")["epoch"])


@pytest.mark.slow
def test_a_killed_and_resumed_run_ends_with_the_same_history(tmp_path):
    if not WEIGHTS_025.is_file():
        pytest.skip(f"offline weights not available: {WEIGHTS_025}")
    data = make_prepared_dir(tmp_path / "data", counts=(48, 16, 0), size=48, cache_size=40)
    env = {**os.environ, "BEHOLDER_WEIGHTS_PATH": str(WEIGHTS_025_DIR)}
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    subprocess.run(_train_command(data, straight, *RESUME), env=env, check=True, capture_output=True)

    # Killed inside phase 1, resumed, killed inside phase 2, resumed to the end.
    history = stopped / "history.csv"
    first = _run_until(_train_command(data, stopped, *RESUME), history, 1, env)
    assert 1 <= first < 5
    if first < 4:  # a resume rewrites the finished rows at once: wait for a new one
        second = _run_until(_train_command(data, stopped, "--resume"), history, max(3, first + 1), env)
        assert first < second < 5
    subprocess.run(_train_command(data, stopped, "--resume"), env=env, check=True, capture_output=True)

    expected, resumed = read_history(straight / "history.csv"), read_history(stopped / "history.csv")
    assert [(r["epoch"], r["phase"]) for r in resumed] == [(r["epoch"], r["phase"]) for r in expected]
    for column in ("lr", "train_loss", "val_loss", "val_srcc", "val_accuracy"):
        np.testing.assert_allclose(
            [float(r[column]) for r in resumed],
            [float(r[column]) for r in expected],
            rtol=1e-5,
            err_msg=column,
        )
    a, b = read_checkpoint(straight / "checkpoints/last.pt"), read_checkpoint(stopped / "checkpoints/last.pt")
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6)
    assert a["images_seen"] == b["images_seen"]


@pytest.mark.slow
def test_two_process_ddp_run_writes_artefacts_from_rank_0_only(tmp_path):
    if not WEIGHTS_025.is_file():
        pytest.skip(f"offline weights not available: {WEIGHTS_025}")
    data = make_prepared_dir(tmp_path / "data", counts=(32, 16, 0), size=48, cache_size=40)
    env = {**os.environ, "BEHOLDER_WEIGHTS_PATH": str(WEIGHTS_025_DIR), "OMP_NUM_THREADS": "1"}
    run, logs = tmp_path / "run", tmp_path / "logs"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "--log-dir",
        str(logs),
        "--redirects",
        "3",
        "-m",
        "beholder",
        "-vv",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        *TINY,
        "batch_size=8",
        "phase1.epochs=1",
        "phase2.epochs=1",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["images_seen"] == 2 * 32  # both ranks' halves counted
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "config.yaml",
        "history.csv",
        "summary.json",
        "training.png",
    ]
    history = read_history(run / "history.csv")
    assert [(r["epoch"], r["phase"]) for r in history] == [("1", "1"), ("2", "2")]
    # Per-rank logs: rank 0 wrote the artefacts, rank 1 trained (gloo) and wrote nothing.
    rank_logs = {p.parent.name: p.read_text() for p in logs.rglob("stderr.log")}
    assert set(rank_logs) == {"0", "1"}
    assert "rank 0 wrote checkpoints" in rank_logs["0"] and "wrote" not in rank_logs["1"]
    assert "rank 1 of 2" in rank_logs["1"] and "gloo" in rank_logs["1"]
    # Validation gathered both ranks' shards: the whole split, as one process would see it.
    model, _ = load_checkpoint(run / "checkpoints" / "last.pt")
    manifest = read_manifest(data)
    val = RatingDataset(manifest[manifest.split == "val"], build_eval_transform(model.preprocessing))
    metrics_one_process = evaluate(model, DataLoader(val, batch_size=8), torch.device("cpu"))
    assert float(history[-1]["val_loss"]) == pytest.approx(metrics_one_process["loss"], rel=1e-5)


@pytest.mark.slow
def test_two_process_feature_cache_keeps_every_head_in_step(tmp_path):
    # The cached head phase runs the head alone in DistributedDataParallel; if the processes'
    # heads drifted apart, the gathered validation (each rank predicts its shard with its own
    # head) would differ from one process validating rank 0's saved model.
    if not WEIGHTS_025.is_file():
        pytest.skip(f"offline weights not available: {WEIGHTS_025}")
    data = make_prepared_dir(tmp_path / "data", counts=(32, 16, 0), size=48, cache_size=40)
    env = {**os.environ, "BEHOLDER_WEIGHTS_PATH": str(WEIGHTS_025_DIR), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    command = [
        *[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
        *["-m", "beholder", "train", "--data", str(data), "--out", str(run), *TINY],
        *["batch_size=8", "feature_cache=true", "phase1.epochs=2", "phase1.lr=0.01", "phase2.epochs=0"],
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    history = read_history(run / "history.csv")
    assert [(r["epoch"], r["phase"]) for r in history] == [("1", "1"), ("2", "1")]
    model, _ = load_checkpoint(run / "checkpoints" / "last.pt")
    manifest = read_manifest(data)
    val = RatingDataset(manifest[manifest.split == "val"], build_eval_transform(model.preprocessing))
    one_process = evaluate(model, DataLoader(val, batch_size=8), torch.device("cpu"))
    assert float(history[-1]["val_loss"]) == pytest.approx(one_process["loss"], rel=1e-5)
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])


def test_unwrap_finds_the_model_inside_ddp_and_torch_compile():
    from beholder.models.checkpoint import unwrap
    from beholder.models.nima import Architecture, build_nima

    model = build_nima(Architecture(alpha=0.25))

    class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, module):
            super().__init__()
            self.module = module

    compiled = torch.compile(model)  # compiles lazily, on the first call
    assert unwrap(model) is model and unwrap(compiled) is model
    assert unwrap(Wrapper(model)) is model and unwrap(Wrapper(compiled)) is model

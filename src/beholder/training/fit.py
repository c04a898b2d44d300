"""A whole training run: :func:`fit` runs :meth:`Run.run_phase` for each phase into a run directory.

::

    RUN_DIR/config.yaml                     resolved configuration
    RUN_DIR/history.csv                     one row per epoch (HISTORY_COLUMNS)
    RUN_DIR/checkpoints/{last,best}.pt      self-describing (beholder.models.checkpoint)
    RUN_DIR/training.png                    loss curves, phase boundaries marked
    RUN_DIR/summary.json                    best epoch, best val EMD, time, images seen, start model

Reproducibility: each epoch seeds torch, numpy and random from ``(seed, epoch, rank)``, draws its
subset from ``(seed, epoch)`` and seeds each image's augmentation from ``(seed, epoch, image,
copy)``; ``last.pt`` carries model, optimizer, scheduler, grad scaler and RNG states, so
``fit(..., resume=True)`` continues as if never stopped.

Failures stop the run with a message and keep what is done: a non-finite loss
(:class:`~beholder.training.loop.TrainingDivergedError`) before the optimizer steps on it, a
checkpoint that cannot be written (:class:`~beholder.models.checkpoint.CheckpointWriteError`)
with the last good checkpoint named; both exit ``beholder train`` with code 2.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from beholder.config import TrainConfig, save_config, to_dict
from beholder.files import PathLike, remove_stale_temporaries
from beholder.losses import EMDLoss
from beholder.models.checkpoint import CheckpointWriteError, model_from_payload, save_checkpoint
from beholder.models.factory import create_training_model
from beholder.models.nima import NIMA
from beholder.training.artifacts import build_summary, format_row, plot_history, write_history, write_summary
from beholder.training.distributed import (
    DistInfo,
    Placement,
    autocast_dtype,
    broadcast_buffers,
    resolve_device,
    setup_distributed,
    teardown_distributed,
    wrap_ddp,
)
from beholder.training.loop import (
    TrainingDivergedError,
    check_validation,
    train_head_one_epoch,
    train_one_epoch,
    validate,
)
from beholder.training.phases import Phase, build_optimizer, build_scheduler, plan_phases, set_trainable
from beholder.training.rng import epoch_seed, rng_state, seed_everything, set_rng_state
from beholder.training.setup import RunData, RunFiles, open_run

log = logging.getLogger(__name__)

EpochCallback = Callable[[dict[str, Any], str], None]


def fit(
    config: TrainConfig,
    data_dir: PathLike,
    out_dir: PathLike,
    resume: bool = False,
    *,
    model: NIMA | None = None,
    on_epoch_end: EpochCallback | None = None,
    on_resume: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train NIMA phase by phase on a prepared directory and write the run directory.

    Args:
        config: the resolved configuration (see :mod:`beholder.config`).
        data_dir: a directory prepared by ``beholder ava prepare`` or ``beholder prepare``.
        out_dir: the run directory (created).
        resume: continue from ``out_dir/checkpoints/last.pt``; the config must match the run's
            except for :data:`~beholder.training.setup.RUNTIME_KEYS` (the last phase may grow).
        model: fine-tune this network (head included) instead of building one from
            ``model.backbone_weights``; like ``model.init``, for a model built in Python.
        on_epoch_end: called on rank 0 with each history row and its one-line summary.
        on_resume: called with the epoch a resumed run continues after.

    Returns:
        the summary (also written to ``summary.json``).

    Raises:
        ConfigError: bad configuration or data; TrainingDivergedError and CheckpointWriteError
            (both ConfigErrors) when training cannot go on.
    """
    config.validate()
    info = setup_distributed(config.distributed_backend)
    try:
        run = Run(config, Path(data_dir), RunFiles(Path(out_dir)), info, on_epoch_end)
        run.start(resume, model)
        if run.done and on_resume is not None:
            on_resume(run.done)
        return run.train()
    finally:
        teardown_distributed(info)


class Run:
    """The state of one training run between epochs, on one process."""

    def __init__(
        self,
        config: TrainConfig,
        data_dir: Path,
        files: RunFiles,
        info: DistInfo,
        on_epoch_end: EpochCallback | None,
    ):
        self.config, self.data_dir, self.files, self.info = config, data_dir, files, info
        self.on_epoch_end = on_epoch_end
        self.history: list[dict[str, Any]] = []
        self.best_emd, self.best_epoch, self.images_seen, self.done = math.inf, None, 0, 0
        self.payload: dict[str, Any] | None = None
        self.progress = config.progress and info.is_main
        self.total_epochs = sum(settings.epochs for _, settings in config.phases())
        self.loss_fn = EMDLoss()

    # -- before the first epoch -------------------------------------------------------------

    def start(self, resume: bool, start_from: NIMA | None) -> None:
        config, info = self.config, self.info
        self.payload = open_run(config, self.files, resume)
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(config.seed)
        device = resolve_device(config.device, info)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not config.deterministic
        self.placement = Placement(device, autocast_dtype(config.amp, device), config.channels_last)
        self.model, self.provenance = self._build_model(start_from)
        self.placement.place_model(self.model)
        self.data = RunData(config, self.data_dir, self.model.preprocessing, info, pin=device.type == "cuda")
        self.cache = None
        if config.feature_cache and any(phase.head_only for phase in plan_phases(config)):
            self.cache = self.data.feature_cache(self.model.num_features)
        if self.payload is not None:
            self._restore(self.payload)
        if info.is_main:
            self.files.checkpoints.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(self.files.checkpoints)  # left by a run killed while saving
            save_config(config, self.files.config)
            if self.history:
                write_history(self.history, self.files.history)

    def _build_model(self, start_from: NIMA | None) -> tuple[NIMA, dict[str, Any]]:
        if self.payload is not None:  # a resume: the run's own model, preprocessing and provenance
            return model_from_payload(self.payload), self.payload.get("provenance", {})
        # Rank 0 resolves (maybe downloads) the starting weights first, the others then find them.
        distributed = self.info.distributed
        if distributed and not self.info.is_main:
            dist.barrier()
        built = create_training_model(self.config, prepared_dir=self.data_dir, start_from=start_from)
        if distributed and self.info.is_main:
            dist.barrier()
        return built

    def _restore(self, payload: dict[str, Any]) -> None:
        self.history = list(payload.get("history", []))
        self.best_emd = payload.get("best_val_emd", math.inf)
        self.best_epoch = payload.get("best_epoch")
        self.images_seen = payload.get("images_seen", 0)
        self.done = int(payload["epoch"])
        if payload.get("rng") is not None:
            set_rng_state(payload["rng"])
        log.info("resuming %s after epoch %d (phase %s)", self.files.out_dir, self.done, payload.get("phase"))

    # -- epochs ----------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Every phase not finished yet, then the summary."""
        try:
            for phase in plan_phases(self.config):
                if phase.last_epoch > self.done:
                    self.run_phase(phase)
        except TrainingDivergedError as exc:
            stopped = f"{exc}; {self._last_good()}"
            self.finish(stopped)
            raise TrainingDivergedError(stopped) from exc
        return self.finish()

    def run_phase(self, phase: Phase) -> None:
        """The phase's epochs from where the run stands: trainable parameters, optimizer, schedule."""
        model, settings, info = self.model, phase.settings, self.info
        set_trainable(model, settings)
        cached = self.cache is not None and phase.head_only
        train_module: nn.Module = model.head if cached else model
        if info.distributed:  # DDP averages the gradients of whatever it wraps
            train_module = wrap_ddp(train_module, self.placement.device)
        optimizer = build_optimizer(self.config.optimizer, model, settings)
        scheduler = build_scheduler(optimizer, settings.decay)
        scaler = torch.amp.GradScaler(
            self.placement.device.type, enabled=self.placement.amp_dtype == torch.float16
        )
        payload = self.payload
        if payload is not None and payload.get("phase") == phase.number and self.done >= phase.first_epoch:
            # Continuing inside the phase the checkpoint was written in: same optimizer steps.
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            if payload.get("scaler"):
                scaler.load_state_dict(payload["scaler"])
        log.info(
            "phase %d (%s): %s, lr %g, decay %g, %d trainable parameters",
            phase.number,
            phase.name,
            phase.describe(),
            settings.lr,
            settings.decay,
            sum(p.numel() for p in model.parameters() if p.requires_grad),
        )
        for epoch in range(max(phase.first_epoch, self.done + 1), phase.last_epoch + 1):
            stats = self._train_epoch(phase, epoch, train_module, optimizer, scheduler, scaler, cached)
            self._end_epoch(
                phase, epoch, stats, {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
            )

    def _train_epoch(
        self,
        phase: Phase,
        epoch: int,
        train_module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        scaler: torch.amp.GradScaler,
        cached: bool,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        seed_everything(epoch_seed(self.config.seed, epoch, self.info.rank))
        self.data.draw_epoch(epoch)
        desc = f"epoch {epoch}/{self.total_epochs} phase {phase.number}"
        common = {"scheduler": scheduler, "distributed": self.info.distributed, "progress": self.progress}
        if not cached:
            loader = self.data.train_loader
            return train_one_epoch(
                train_module,
                loader,
                optimizer,
                self.loss_fn,
                self.placement,
                scaler=scaler,
                desc=desc,
                **common,
            )
        batches = self.data.head_batches()
        self.cache.ensure(
            self.model,
            [row for batch in batches for row in batch],
            self.placement,
            batch_size=self.data.eval_batch_size,
            num_workers=self.config.data.num_workers,
            progress=self.progress,
        )
        desc += " (cached features)"
        stats = train_head_one_epoch(
            train_module, self.cache, batches, optimizer, self.loss_fn, self.placement, desc=desc, **common
        )
        stats["seconds"] = time.perf_counter() - started  # extraction belongs to this epoch's cost
        stats["images_per_second"] = stats["images"] / stats["seconds"]
        return stats

    def _end_epoch(self, phase: Phase, epoch: int, stats: dict[str, Any], state: dict[str, Any]) -> None:
        """Validate, record the epoch and write its checkpoints, history and plot."""
        started = time.perf_counter() - stats["seconds"]
        desc = f"epoch {epoch}/{self.total_epochs} phase {phase.number}"
        if self.info.distributed:
            # DDP syncs buffers at the start of each forward, so after the last step every rank
            # holds its own BatchNorm statistics; validate (and save) rank 0's everywhere.
            broadcast_buffers(self.model)
        val = validate(
            self.model,
            self.data.val_loader,
            self.placement,
            distributed=self.info.distributed,
            progress=self.progress,
            desc=desc + " val",
        )
        check_validation(val, desc)
        self.images_seen += stats["images"]
        row = {
            "epoch": epoch,
            "phase": phase.number,
            "lr": stats["lr"],
            "train_loss": stats["loss"],
            "val_loss": val["loss"],
            "val_srcc": val["srcc_mean"],
            "val_accuracy": val["accuracy"],
            "seconds": time.perf_counter() - started,
            "images_per_second": stats["images_per_second"],
        }
        self.history.append(row)
        improved = val["emd"] < self.best_emd
        if improved:
            self.best_emd, self.best_epoch = val["emd"], epoch
        line = format_row(row, self.total_epochs) + (" *best*" if improved else "")
        log.info("%s", line)
        if self.info.is_main:
            self._save(phase, epoch, val, improved, state)
            if self.on_epoch_end is not None:
                self.on_epoch_end(row, line)
        self.done = epoch

    def _save(
        self, phase: Phase, epoch: int, val: dict[str, Any], improved: bool, state: dict[str, Any]
    ) -> None:
        common = {
            "provenance": self.provenance,
            "epoch": epoch,
            "phase": phase.number,
            "config": to_dict(self.config),
            "metrics": val,
            "history": self.history,
            "best_val_emd": self.best_emd,
            "best_epoch": self.best_epoch,
            "images_seen": self.images_seen,
        }
        scaler = state["scaler"]
        try:
            if improved:
                save_checkpoint(self.files.best, self.model, **common)
            # last.pt before history.csv: a history row on disk always has its checkpoint.
            save_checkpoint(
                self.files.last,
                self.model,
                **common,
                optimizer=state["optimizer"].state_dict(),
                scheduler=state["scheduler"].state_dict(),
                scaler=scaler.state_dict() if scaler.is_enabled() else None,
                rng=rng_state(),
            )
        except CheckpointWriteError as exc:
            raise CheckpointWriteError(exc.path, f"{exc.reason}; {self._last_good()}") from exc
        write_history(self.history, self.files.history)
        plot_history(self.history, self.files.plot)
        log.debug("rank %d wrote checkpoints and history for epoch %d", self.info.rank, epoch)

    def _last_good(self) -> str:
        if self.done and self.files.last.is_file():
            return f"last good checkpoint: {self.files.last} (epoch {self.done}; resume with --resume)"
        return "no checkpoint was written"

    # -- after the last epoch --------------------------------------------------------------

    def finish(self, stopped: str | None = None) -> dict[str, Any]:
        summary = build_summary(
            self.history,
            best_epoch=self.best_epoch,
            best_val_emd=self.best_emd,
            images_seen=self.images_seen,
            world_size=self.info.world_size,
            device=str(self.placement.device),
            checkpoints={"best": self.files.best, "last": self.files.last},
            provenance=self.provenance,
            stopped=stopped,
        )
        if self.info.is_main:
            if self.history and not self.files.plot.is_file():
                plot_history(self.history, self.files.plot)
            write_summary(summary, self.files.summary)
            log.debug("rank %d wrote summary.json", self.info.rank)
        return summary

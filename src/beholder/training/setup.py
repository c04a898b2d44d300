"""What a run needs before its first epoch: its files, the checkpoint it resumes, and its data.

:func:`open_run` decides between a fresh run and a resume (and refuses a changed config);
:class:`RunData` holds the datasets, loaders and the epoch sampler, and draws each epoch's
subset (undersampled, rare bins oversampled) as a pure function of ``(seed, epoch)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from beholder.config import TrainConfig, config_from_dict, diff_configs
from beholder.data.dataset import (
    EpochSampler,
    RareCopyAugment,
    RatingDataset,
    oversample_rare,
    seed_worker,
    undersample,
)
from beholder.data.manifest import load_manifest
from beholder.errors import ConfigError
from beholder.models.checkpoint import read_checkpoint
from beholder.preprocessing import Preprocessing, build_eval_transform, build_train_transform
from beholder.training.distributed import DistInfo
from beholder.training.loop import FeatureCache

log = logging.getLogger(__name__)

#: Config keys that may change between a run and its resume: they do not change the results.
RUNTIME_KEYS = frozenset({"device", "data.num_workers", "progress", "distributed_backend"})


@dataclass(frozen=True)
class RunFiles:
    """The files of a run directory."""

    out_dir: Path

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def history(self) -> Path:
        return self.out_dir / "history.csv"

    @property
    def plot(self) -> Path:
        return self.out_dir / "training.png"

    @property
    def summary(self) -> Path:
        return self.out_dir / "summary.json"

    @property
    def config(self) -> Path:
        return self.out_dir / "config.yaml"


def open_run(config: TrainConfig, files: RunFiles, resume: bool) -> dict[str, Any] | None:
    """The ``last.pt`` payload to resume from (None for a fresh run), after checking the config.

    Raises ConfigError: nothing to resume, a fresh run into a directory that holds one, or a
    resume whose config differs from the run's in more than :data:`RUNTIME_KEYS` (the last
    phase's epochs may grow, to extend a run).
    """
    if not resume:
        if files.last.exists():
            raise ConfigError(
                f"{files.out_dir} already holds a run ({files.last}); use --resume or another --out"
            )
        return None
    if not files.last.is_file():
        raise ConfigError(f"nothing to resume: {files.last} does not exist")
    payload = read_checkpoint(files.last)
    check_resume(config, payload, files.last)
    return payload


def check_resume(config: TrainConfig, payload: dict[str, Any], path: Path) -> None:
    saved = config_from_dict(payload.get("config") or {})
    changed = {k: v for k, v in diff_configs(saved, config).items() if k not in RUNTIME_KEYS}
    last_phase = f"{config.phases()[-1][0]}.epochs"
    if last_phase in changed and changed[last_phase][1] >= changed[last_phase][0]:
        del changed[last_phase]  # extending the last phase continues its schedule unchanged
    if changed:
        listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(
            f"--resume with a config that differs from the run in {path}: {listing} "
            f"(only {', '.join(sorted(RUNTIME_KEYS))} may change, and {last_phase} may grow)"
        )


class RunData:
    """The training and validation data of a run, and the epoch sampler that draws from them."""

    def __init__(self, config: TrainConfig, data_dir: Path, pre: Preprocessing, info: DistInfo, pin: bool):
        self.config = config
        data = config.data
        manifest = load_manifest(data_dir)
        frames = {split: manifest[manifest["split"] == split] for split in (data.train_split, data.val_split)}
        for split, frame in frames.items():
            if frame.empty:
                raise ConfigError(f"{data_dir}: the manifest has no {split!r} rows")
        rebalance = data.rebalance
        rare_copy = (
            RareCopyAugment(rebalance.scale_jitter, rebalance.jpeg_quality_min) if rebalance.enabled else None
        )
        common = {"use_cache": data.use_cache, "draft_size": pre.draft_size()}
        train_frame = frames[data.train_split]
        self.train_set = RatingDataset(
            train_frame, build_train_transform(pre, hflip=data.hflip), rare_copy_transform=rare_copy, **common
        )
        self.val_set = RatingDataset(frames[data.val_split], build_eval_transform(pre), **common)
        # The feature cache reads the training images as validation does: no random crop or flip.
        self.cache_set = RatingDataset(train_frame, build_eval_transform(pre), **common)
        workers = data.num_workers
        options: dict[str, Any] = {
            "num_workers": workers,
            "persistent_workers": workers > 0,
            "worker_init_fn": seed_worker,
            "pin_memory": pin,
        }
        self.sampler = EpochSampler(
            len(self.train_set),
            seed=config.seed,
            num_replicas=info.world_size,
            rank=info.rank,
            batch_size=config.batch_size,
        )
        # Each loader draws its workers' base seed from its own generator, not the global RNG: a
        # persistent loader draws only when first iterated, so a resumed run would otherwise shift
        # the dropout masks of the epoch it resumes at.
        self.train_loader = DataLoader(
            self.train_set,
            batch_size=config.batch_size,
            sampler=self.sampler,
            generator=torch.Generator().manual_seed(config.seed),
            **options,
        )
        self.val_loader = DataLoader(
            self.val_set,
            batch_size=self.eval_batch_size,
            sampler=list(range(info.rank, len(self.val_set), info.world_size)),
            generator=torch.Generator().manual_seed(config.seed),
            **options,
        )

    @property
    def eval_batch_size(self) -> int:
        return self.config.eval_batch_size or self.config.batch_size

    def draw_epoch(self, epoch: int) -> None:
        """Point the sampler at ``epoch``'s images: undersampled, then rare bins oversampled."""
        data = self.config.data
        seed = [self.config.seed, epoch if data.resample_each_epoch else 0]
        means = self.train_set.means
        subset = undersample(means, data.undersample_per_bin, data.bins, seed=seed)
        extra = None
        if data.rebalance.enabled:
            extra = oversample_rare(
                means,
                subset,
                bins=data.bins,
                target_share=data.rebalance.target_share,
                max_copies=data.rebalance.max_copies,
                seed=[*seed, 0x0BA1],
            )
        self.sampler.set_epoch(epoch, subset, extra)

    def head_batches(self) -> list[list[int]]:
        """This process's batches of the epoch as dataset rows (for the feature cache)."""
        rows = [key[0] for key in self.sampler]
        size = self.config.batch_size
        return [rows[i : i + size] for i in range(0, len(rows), size)]

    def feature_cache(self, num_features: int) -> FeatureCache:
        return FeatureCache(self.cache_set, num_features)

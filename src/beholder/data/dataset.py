"""Torch datasets over a prepared AVA manifest, mean-score undersampling and a seeded epoch sampler.

The manifest (``beholder ava prepare``) is trusted: a missing or unreadable image raises
:class:`~beholder.errors.ImageLoadError` naming the file instead of being skipped. Transforms come
from the model's :class:`~beholder.preprocessing.Preprocessing`, so training, evaluation and
scoring agree on what the network sees.

Reproducibility: random augmentation (crop, flip) is seeded per sample from ``(seed, epoch,
image)`` by :class:`EpochSampler`, so an epoch's batches are the same whether images are loaded
in the training process or in workers, by one process or several, in one run or after a resume.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from beholder.errors import ConfigError
from beholder.imageio import open_image

log = logging.getLogger(__name__)

VOTE_COLUMNS = [f"votes_{i}" for i in range(1, 11)]
REQUIRED_COLUMNS = ["image_id", "split", *VOTE_COLUMNS, "mean", "cache_path", "source_path"]
_PATH_COLUMNS = ("cache_path", "source_path")


def read_manifest(prepared_dir: Union[str, Path]) -> pd.DataFrame:
    """The manifest of a prepared directory, with absolute image paths.

    Uses :func:`beholder.data.ava.load_manifest` when the data module provides it; otherwise reads
    ``manifest.parquet`` and resolves relative paths against ``prepared_dir``. Raises ConfigError
    if the manifest is missing or lacks columns training needs.
    """
    prepared_dir = Path(prepared_dir)
    try:
        from beholder.data.ava import load_manifest
    except ImportError:  # the data module is not there (yet): read the parquet ourselves
        load_manifest = None
    if load_manifest is not None:
        frame = load_manifest(prepared_dir)
    else:
        path = prepared_dir / "manifest.parquet"
        if not path.is_file():
            raise ConfigError(f"no manifest.parquet in {prepared_dir} (run `beholder ava prepare` first)")
        frame = pd.read_parquet(path)
        for column in _PATH_COLUMNS:
            if column in frame.columns:
                frame[column] = [_absolute(prepared_dir, value) for value in frame[column]]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ConfigError(f"{prepared_dir}: manifest lacks columns {missing}")
    return frame.reset_index(drop=True)


def _present(value: Any) -> bool:
    """A non-empty path value (not None, NaN, NA or "")."""
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value)) and str(value) != ""


def _absolute(root: Path, value: Any) -> Optional[str]:
    if not _present(value):
        return None
    path = Path(value)
    return str(path if path.is_absolute() else root / path)


def vote_distributions(frame: pd.DataFrame) -> np.ndarray:
    """(N, 10) float32 rating distributions ``votes_i / sum(votes)`` from the manifest's counts."""
    votes = frame[VOTE_COLUMNS].to_numpy(dtype=np.float64)  # (N, 10)
    totals = votes.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        bad = frame.loc[totals[:, 0] <= 0, "image_id"].tolist()[:5]
        raise ConfigError(f"manifest rows without votes (image ids {bad}...)")
    return (votes / totals).astype(np.float32)


class RatingDataset(Dataset):
    """Images of one manifest split -> (image tensor (3, H, W), rating distribution (10,) float32).

    Args:
        frame: manifest rows (absolute paths), e.g. ``manifest[manifest.split == "train"]``.
        transform: PIL RGB image -> tensor (``build_train_transform`` / ``build_eval_transform``).
        use_cache: read ``cache_path`` (the prepared resized copy); rows whose cache path is empty,
            and every row when False, read ``source_path``.
        draft_size: JPEG draft decode size passed to :func:`beholder.imageio.open_image`.

    An item key is an index, or ``(index, seed)`` from :class:`EpochSampler`: the transform's
    random draws are then made from ``torch.manual_seed(seed)`` without touching the caller's RNG.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        transform: Callable[[Any], torch.Tensor],
        *,
        use_cache: bool = True,
        draft_size: Optional[Tuple[int, int]] = None,
    ):
        frame = frame.reset_index(drop=True)
        cache = frame["cache_path"] if use_cache and "cache_path" in frame.columns else [None] * len(frame)
        self.paths: List[str] = [
            str(c) if _present(c) else str(s) for c, s in zip(cache, frame["source_path"])
        ]
        self.image_ids = frame["image_id"].to_numpy()
        self.targets = vote_distributions(frame)  # (N, 10)
        self.means = frame["mean"].to_numpy(dtype=np.float64)  # (N,)
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, seed: Optional[int] = None) -> torch.Tensor:
        """The transformed image of row ``index``; raises ImageLoadError naming the file."""
        image = open_image(self.paths[index], draft_size=self.draft_size)
        if seed is None:
            return self.transform(image)
        # Leave the caller's RNG (dropout, shuffling) alone: fork the CPU generator, which the
        # transforms draw from, and seed only it (torch.manual_seed would reseed every GPU too).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.transform(image)

    def __getitem__(self, key: Union[int, Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        return self.load(int(index), seed), torch.from_numpy(self.targets[index])


def undersample(
    means: np.ndarray, per_bin: Optional[int], bins: int = 10, seed: Union[int, Sequence[int]] = 0
) -> np.ndarray:
    """Rebalance by mean score: at most ``per_bin`` images from each of ``bins`` equal-width bins.

    AVA's means crowd around 5.5, so a model trained on all of them learns to predict the middle.
    The bins span the observed range of ``means``; sparse outer bins keep all their images. With
    2000 per bin, AVA's training split gives about 14,000 images. Returns sorted row indices;
    ``per_bin=None`` returns all rows. Deterministic for a given ``seed`` (an int or a sequence of
    ints such as ``[seed, epoch]``).
    """
    means = np.asarray(means, dtype=np.float64)
    everything = np.arange(len(means))
    if per_bin is None or len(means) == 0:
        return everything
    edges = np.linspace(means.min(), means.max(), bins + 1)
    # interior edges only: the maximum falls into the last bin rather than an extra one.
    bin_of = np.digitize(means, edges[1:-1])  # (N,) in 0..bins-1
    rng = np.random.default_rng(seed)
    chosen = []
    for b in range(bins):
        members = everything[bin_of == b]
        if len(members) > per_bin:
            members = rng.choice(members, size=per_bin, replace=False)
        chosen.append(members)
    return np.sort(np.concatenate(chosen))


def augmentation_seeds(seed: int, epoch: int, size: int) -> np.ndarray:
    """(size,) int64 per-image seeds for one epoch, a pure function of (seed, epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0xA06]))
    return rng.integers(0, 2**62, size=size, dtype=np.int64)


class EpochSampler(Sampler):
    """Yields ``(dataset index, augmentation seed)`` for one epoch's subset of a dataset.

    The subset (e.g. from :func:`undersample`) is shuffled and split between processes by a
    :class:`~torch.utils.data.DistributedSampler` seeded with ``seed`` and the epoch; with
    ``batch_size`` the remainder that does not fill a batch is dropped (as long as one batch is
    left), so every process takes the same number of steps and no BatchNorm sees a batch of one.
    Call :meth:`set_epoch` before iterating; the sampler lives in the main process, so it works
    with persistent DataLoader workers.
    """

    def __init__(
        self,
        dataset_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        batch_size: Optional[int] = None,
    ):
        self.dataset_size = dataset_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.batch_size = batch_size
        self.epoch = 0
        self.indices = np.arange(dataset_size)

    def set_epoch(self, epoch: int, indices: Optional[Sequence[int]] = None) -> None:
        """Select the epoch (and its subset of dataset indices; default: all)."""
        self.epoch = epoch
        self.indices = (
            np.arange(self.dataset_size) if indices is None else np.asarray(indices, dtype=np.int64)
        )

    def _positions(self) -> List[int]:
        inner = DistributedSampler(
            range(len(self.indices)),
            num_replicas=self.num_replicas,
            rank=self.rank,
            shuffle=self.shuffle,
            seed=self.seed,
        )
        inner.set_epoch(self.epoch)
        positions = list(inner)
        if self.batch_size and len(positions) >= self.batch_size:
            positions = positions[: len(positions) - len(positions) % self.batch_size]
        return positions

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        seeds = augmentation_seeds(self.seed, self.epoch, self.dataset_size)
        for position in self._positions():
            index = int(self.indices[position])
            yield index, int(seeds[index])

    def __len__(self) -> int:
        return len(self._positions())


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and random from the worker's torch seed.

    Augmentation is seeded per sample anyway; this covers any other randomness in a transform.
    """
    import random

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)

"""Torch datasets over a prepared manifest, mean-score rebalancing and a seeded epoch sampler.

The manifest (:func:`beholder.data.manifest.load_manifest`) is trusted: a missing or unreadable
image raises :class:`~beholder.errors.ImageLoadError` naming the file instead of being skipped.
Transforms come from the model's :class:`~beholder.preprocessing.Preprocessing`, so training,
evaluation and scoring agree on what the network sees.

Rebalancing works on equal-width bins of the mean score (:func:`mean_bins`): crowded bins are
undersampled (:func:`undersample`, the seed's), rare ones oversampled (:func:`oversample_rare`),
and the oversampled extra copies get only augmentation that keeps how good a photo looks
(:class:`RareCopyAugment`).

Reproducibility: random augmentation is seeded per sample from ``(seed, epoch, image, copy)``
by :class:`EpochSampler`, so an epoch's batches are the same whether images are loaded in the
training process or in workers, by one process or several, in one run or after a resume.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, Sampler

from beholder.errors import ConfigError
from beholder.imageio import open_image
from beholder.ratings import VOTE_COLUMNS, votes_to_distribution

log = logging.getLogger(__name__)

#: A dataset key: an index, ``(index, seed)``, or ``(index, seed, copy)`` for an oversampled copy.
SampleKey = int | tuple[int, int] | tuple[int, int, int]


def _present(value: Any) -> bool:
    """A non-empty path value (not None, NaN, NA or "")."""
    return value is not None and not (pd.api.types.is_scalar(value) and pd.isna(value)) and str(value) != ""


def vote_distributions(frame: pd.DataFrame) -> np.ndarray:
    """(N, 10) float32 rating distributions from the manifest's vote counts."""
    try:
        return votes_to_distribution(frame[VOTE_COLUMNS].to_numpy(dtype=np.float64)).astype(np.float32)
    except ValueError as exc:
        ids = frame["image_id"].tolist()[:5]
        raise ConfigError(f"manifest rows with unusable votes (image ids {ids}...): {exc}") from exc


class RareCopyAugment:
    """PIL -> PIL augmentation for the oversampled copies of rare ratings, drawn from torch's RNG.

    Only transforms that keep a photo's aesthetics: a crop of ``1 - scale_jitter`` to 1 of the
    area at the photo's own aspect ratio and at a random place (the composition stays), then a
    JPEG re-encode at a quality between ``jpeg_quality_min`` and 95. No brightness, colour or
    blur changes: darkening a photo changes how people rate it. (torchvision's
    RandomResizedCrop also draws the aspect ratio and resizes, hence the crop written here.)
    """

    def __init__(self, scale_jitter: float = 0.1, jpeg_quality_min: int | None = 75):
        from torchvision.transforms import v2 as T

        self.scale_jitter = scale_jitter
        self.jpeg = T.JPEG(quality=(jpeg_quality_min, 95)) if jpeg_quality_min is not None else None

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.scale_jitter > 0:
            side = math.sqrt(1.0 - self.scale_jitter * torch.rand(()).item())  # of each dimension
            width, height = image.size
            crop_w, crop_h = max(1, round(width * side)), max(1, round(height * side))
            left = int(torch.randint(0, width - crop_w + 1, ()).item())
            top = int(torch.randint(0, height - crop_h + 1, ()).item())
            image = image.crop((left, top, left + crop_w, top + crop_h))
        return self.jpeg(image) if self.jpeg is not None else image


class RatingDataset(Dataset):
    """Images of one manifest split -> (image tensor (3, H, W), rating distribution (10,) float32).

    Args:
        frame: manifest rows (absolute paths), e.g. ``load_manifest(dir, splits="train")``.
        transform: PIL RGB image -> tensor (``build_train_transform`` / ``build_eval_transform``).
        use_cache: read ``cache_path`` (the prepared resized copy); rows whose cache path is empty,
            and every row when False, read ``source_path``.
        draft_size: JPEG draft decode size passed to :func:`beholder.imageio.open_image`.
        rare_copy_transform: applied before ``transform`` to oversampled copies (keys with a copy
            number, from :class:`EpochSampler`), e.g. :class:`RareCopyAugment`.

    An item key is an index, ``(index, seed)`` or ``(index, seed, copy)`` from
    :class:`EpochSampler`: the transforms' random draws are then made from
    ``torch.manual_seed(seed)`` without touching the caller's RNG.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        transform: Callable[[Any], torch.Tensor],
        *,
        use_cache: bool = True,
        draft_size: tuple[int, int] | None = None,
        rare_copy_transform: Callable[[Image.Image], Image.Image] | None = None,
    ):
        frame = frame.reset_index(drop=True)
        cache = frame["cache_path"] if use_cache and "cache_path" in frame.columns else [None] * len(frame)
        self.paths: list[str] = [
            str(c) if _present(c) else str(s) for c, s in zip(cache, frame["source_path"])
        ]
        self.image_ids = frame["image_id"].to_numpy()
        self.targets = vote_distributions(frame)  # (N, 10)
        self.means = frame["mean"].to_numpy(dtype=np.float64)  # (N,)
        self.transform = transform
        self.draft_size = draft_size
        self.rare_copy_transform = rare_copy_transform

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int, seed: int | None = None, copy: int = 0) -> torch.Tensor:
        """The transformed image of row ``index``; raises ImageLoadError naming the file."""
        image = open_image(self.paths[index], draft_size=self.draft_size)
        if seed is None:
            return self.transform(image)
        # Leave the caller's RNG (dropout, shuffling) alone: fork the CPU generator, which the
        # transforms draw from, and seed only it (torch.manual_seed would reseed every GPU too).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            if copy and self.rare_copy_transform is not None:
                image = self.rare_copy_transform(image)
            return self.transform(image)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed, copy = (*key, 0)[:3] if isinstance(key, tuple) else (key, None, 0)
        return self.load(int(index), seed, int(copy)), torch.from_numpy(self.targets[index])


# ---------------------------------------------------------------------------------------------
# rebalancing by mean score


def mean_bins(means: np.ndarray, bins: int) -> np.ndarray:
    """(N,) bin of each mean, 0..bins-1, in ``bins`` equal-width bins over the observed range."""
    means = np.asarray(means, dtype=np.float64)
    if len(means) == 0:
        return np.zeros(0, dtype=np.int64)
    edges = np.linspace(means.min(), means.max(), bins + 1)
    # interior edges only: the maximum falls into the last bin rather than an extra one.
    return np.digitize(means, edges[1:-1])


def undersample(
    means: np.ndarray, per_bin: int | None, bins: int = 10, seed: int | Sequence[int] = 0
) -> np.ndarray:
    """Rebalance by mean score: at most ``per_bin`` images from each of ``bins`` equal-width bins.

    AVA's means crowd around 5.5, so a model trained on all of them learns to predict the middle.
    The bins span the observed range of ``means``; sparse outer bins keep all their images. With
    2000 per bin, AVA's training split gives about 14,000 images. Returns sorted row indices;
    ``per_bin=None`` returns all rows. Deterministic for a given ``seed`` (an int or a sequence of
    ints such as ``[seed, epoch]``).
    """
    everything = np.arange(len(means))
    if per_bin is None or len(means) == 0:
        return everything
    bin_of = mean_bins(means, bins)
    rng = np.random.default_rng(seed)
    chosen = []
    for b in range(bins):
        members = everything[bin_of == b]
        if len(members) > per_bin:
            members = rng.choice(members, size=per_bin, replace=False)
        chosen.append(members)
    return np.sort(np.concatenate(chosen))


def oversample_rare(
    means: np.ndarray,
    indices: Sequence[int],
    *,
    bins: int = 10,
    target_share: float = 0.05,
    max_copies: int = 4,
    seed: int | Sequence[int] = 0,
) -> np.ndarray:
    """Extra draws of the images of rare mean-score bins: sorted dataset indices, repeats allowed.

    ``indices`` is the epoch's subset (after :func:`undersample`). Each bin (as in
    :func:`mean_bins` over all of ``means``) holding fewer than ``target_share * len(indices)``
    of them is drawn again up to that count, each image at most ``max_copies`` times in all: every
    member gets the same number of extra copies, and the remainder goes to members chosen at
    random from ``seed``. Empty bins stay empty; nothing is returned for bins already at the share.
    """
    indices = np.asarray(indices, dtype=np.int64)
    bin_of = mean_bins(means, bins)[indices]
    target = math.ceil(target_share * len(indices))
    rng = np.random.default_rng(seed)
    extras = []
    for b in range(bins):
        members = indices[bin_of == b]
        count = len(members)
        if count == 0 or count >= target:
            continue
        wanted = min(target - count, (max_copies - 1) * count)
        repeats = np.full(count, wanted // count)
        repeats[rng.choice(count, size=wanted % count, replace=False)] += 1
        extras.append(np.repeat(members, repeats))
    return np.sort(np.concatenate(extras)) if extras else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# the epoch sampler


def augmentation_seeds(seed: int, epoch: int, size: int) -> np.ndarray:
    """(size,) int64 per-image seeds for one epoch, a pure function of (seed, epoch)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0xA06]))
    return rng.integers(0, 2**62, size=size, dtype=np.int64)


def _copy_numbers(extra: np.ndarray) -> np.ndarray:
    """1, 2, ... for the successive repeats of each index in sorted ``extra``."""
    if len(extra) == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[True, extra[1:] != extra[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(extra)), 0))
    return np.arange(len(extra)) - group_start + 1


class EpochSampler(Sampler):
    """Yields dataset keys for one epoch: ``(index, seed)``, and ``(index, seed, copy)`` for extra copies.

    The epoch's entries (a subset from :func:`undersample`, plus the extra copies from
    :func:`oversample_rare`) are shuffled and split between processes by a
    :class:`~torch.utils.data.DistributedSampler` seeded with ``seed`` and the epoch; with
    ``batch_size`` the remainder that does not fill a batch is dropped (as long as one batch is
    left), so every process takes the same number of steps and no BatchNorm sees a batch of one.
    Each copy of an image gets its own augmentation seed. Call :meth:`set_epoch` before
    iterating; everything is a pure function of ``(seed, epoch, subset, extra)``, so a resumed
    run draws the same batches. The sampler lives in the main process, so it works with
    persistent DataLoader workers.
    """

    def __init__(
        self,
        dataset_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
        batch_size: int | None = None,
    ):
        self.dataset_size = dataset_size
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.batch_size = batch_size
        self.set_epoch(0)

    def set_epoch(
        self, epoch: int, indices: Sequence[int] | None = None, extra: Sequence[int] | None = None
    ) -> None:
        """Select the epoch, its subset of dataset indices (default: all) and extra copies (default: none)."""
        self.epoch = epoch
        subset = np.arange(self.dataset_size) if indices is None else np.asarray(indices, dtype=np.int64)
        extra = np.sort(np.asarray([] if extra is None else extra, dtype=np.int64))
        self.indices = np.concatenate([subset, extra])
        self.copies = np.concatenate([np.zeros(len(subset), dtype=np.int64), _copy_numbers(extra)])

    def _positions(self) -> list[int]:
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

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        seeds = augmentation_seeds(self.seed, self.epoch, self.dataset_size).astype(np.uint64)
        golden = np.uint64(0x9E3779B97F4A7C15)  # a copy's seed: the image's, moved by a large odd step
        for position in self._positions():
            index, copy = int(self.indices[position]), int(self.copies[position])
            if copy == 0:
                yield index, int(seeds[index])
            else:
                with np.errstate(over="ignore"):  # wrapping uint64 arithmetic is intended
                    moved = (seeds[index] + np.uint64(copy) * golden) & np.uint64(2**62 - 1)
                yield index, int(moved), copy

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

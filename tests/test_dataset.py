"""The manifest dataset, mean-score undersampling and the seeded epoch sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from beholder.data.dataset import (
    EpochSampler,
    RareCopyAugment,
    RatingDataset,
    mean_bins,
    oversample_rare,
    seed_worker,
    undersample,
)
from beholder.data.manifest import load_manifest as read_manifest
from beholder.errors import ImageLoadError
from beholder.preprocessing import Preprocessing, build_eval_transform, build_train_transform
from train_helpers import make_prepared_dir, target_matrix

PRE = Preprocessing(resize=(40, 40), interpolation="bilinear", crop=32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return make_prepared_dir(tmp_path_factory.mktemp("prepared"), counts=(24, 8, 8), size=48, cache_size=40)


def test_read_manifest_resolves_relative_paths(prepared):
    raw = pd.read_parquet(prepared / "manifest.parquet")
    assert not Path(raw["cache_path"][0]).is_absolute()
    manifest = read_manifest(prepared)
    assert len(manifest) == 40
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in manifest["cache_path"])
    assert set(manifest["split"]) == {"train", "val", "test"}


def test_items_are_image_tensors_and_vote_distributions(prepared):
    frame = read_manifest(prepared).query("split == 'train'")
    dataset = RatingDataset(frame, build_eval_transform(PRE))
    image, target = dataset[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert image.min() >= -1.0 and image.max() <= 1.0  # Keras normalisation: x / 127.5 - 1
    assert target.shape == (10,) and target.dtype == torch.float32
    np.testing.assert_allclose(target.numpy(), target_matrix(frame)[3], rtol=1e-6)
    assert dataset.paths[3].endswith(f"cache/{frame['image_id'].iloc[3]}.jpg")


def test_cache_path_falls_back_to_source(prepared):
    frame = read_manifest(prepared).query("split == 'val'").reset_index(drop=True)
    frame.loc[0, "cache_path"] = None
    frame.loc[1, "cache_path"] = ""
    dataset = RatingDataset(frame, build_eval_transform(PRE))
    assert dataset.paths[0] == frame["source_path"][0] and dataset.paths[1] == frame["source_path"][1]
    assert dataset.paths[2] == frame["cache_path"][2]
    assert (
        RatingDataset(frame, build_eval_transform(PRE), use_cache=False).paths[2] == frame["source_path"][2]
    )
    assert dataset[0][0].shape == (3, 32, 32)


def test_a_missing_image_fails_loudly_with_its_name(prepared, tmp_path):
    frame = read_manifest(prepared).query("split == 'test'").reset_index(drop=True)
    gone = tmp_path / "gone.jpg"
    frame.loc[0, "cache_path"] = str(gone)
    dataset = RatingDataset(frame, build_eval_transform(PRE))
    with pytest.raises(ImageLoadError, match=r"gone\.jpg: file not found"):
        dataset[0]


def test_seeded_augmentation_is_repeatable_and_leaves_the_global_rng_alone(prepared):
    frame = read_manifest(prepared).query("split == 'train'")
    dataset = RatingDataset(frame, build_train_transform(PRE))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, again = dataset[(5, 77)][0], dataset[(5, 77)][0]
    assert torch.equal(first, again)
    assert torch.equal(torch.get_rng_state(), state)
    others = [dataset[(5, seed)][0] for seed in range(8)]
    assert any(not torch.equal(first, other) for other in others)  # crops/flips really vary


def test_seeded_augmentation_leaves_accelerator_generators_alone(prepared, monkeypatch):
    # On a GPU the head's dropout draws from the CUDA generator: loading an image must not reseed it.
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    frame = read_manifest(prepared).query("split == 'train'")
    dataset = RatingDataset(frame, build_train_transform(PRE))
    first = dataset[(5, 77)][0]
    assert reseeded == []
    assert torch.equal(first, dataset[(5, 77)][0])


def test_undersample_caps_each_mean_bin_and_is_seeded():
    rng = np.random.default_rng(0)
    means = np.concatenate([rng.normal(5.5, 0.4, 1000), [1.5, 1.6, 9.4]])  # crowded middle, rare extremes
    chosen = undersample(means, per_bin=50, bins=10, seed=3)
    counts = np.histogram(means[chosen], bins=np.linspace(means.min(), means.max(), 11))[0]
    assert counts.max() == 50
    assert {1000, 1001, 1002} <= set(chosen.tolist())  # sparse bins keep all they have
    assert np.array_equal(chosen, undersample(means, per_bin=50, bins=10, seed=3))
    assert not np.array_equal(chosen, undersample(means, per_bin=50, bins=10, seed=[3, 1]))
    assert np.array_equal(undersample(means, per_bin=None), np.arange(len(means)))
    assert len(np.unique(chosen)) == len(chosen)


def test_epoch_sampler_splits_between_processes_with_per_image_seeds():
    subset = np.arange(0, 100, 2)  # 50 images
    single = EpochSampler(100, seed=1, batch_size=8)
    single.set_epoch(3, subset)
    pairs = list(single)
    assert len(pairs) == len(single) == 48  # remainder of 2 dropped: no partial batch
    assert {i for i, _ in pairs} <= set(subset.tolist())
    seed_of = dict(pairs)
    shards = []
    for rank in range(2):
        sampler = EpochSampler(100, seed=1, num_replicas=2, rank=rank, batch_size=8)
        sampler.set_epoch(3, subset)
        shards.append(list(sampler))
    assert len(shards[0]) == len(shards[1]) == 24
    assert not {i for i, _ in shards[0]} & {i for i, _ in shards[1]}
    everything = EpochSampler(100, seed=1)  # no batch: nothing dropped, every image's seed
    everything.set_epoch(3, subset)
    seed_of = dict(everything)
    assert len(seed_of) == 50 and all(seed_of[i] == s for i, s in pairs)
    for index, seed in shards[0] + shards[1]:  # an image's seed does not depend on the split
        assert seed_of[index] == seed
    again = EpochSampler(100, seed=1, batch_size=8)
    again.set_epoch(3, subset)
    assert list(again) == pairs
    again.set_epoch(4, subset)
    assert list(again) != pairs


def test_batches_do_not_depend_on_worker_processes(prepared):
    frame = read_manifest(prepared).query("split == 'train'")
    dataset = RatingDataset(frame, build_train_transform(PRE))

    def batches(workers):
        sampler = EpochSampler(len(dataset), seed=5, batch_size=8)
        sampler.set_epoch(2)
        loader = DataLoader(
            dataset, batch_size=8, sampler=sampler, num_workers=workers, worker_init_fn=seed_worker
        )
        return [images for images, _ in loader]

    in_process, with_workers = batches(0), batches(2)
    assert len(in_process) == 3
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers))


# -- rare ratings: oversampling and the augmentation of the extra copies -------------------------


def _ava_like_means(n: int = 2000, seed: int = 0) -> np.ndarray:
    """Means crowded around 5.4, with thin tails (a few percent below 3.5 and above 7.2)."""
    return np.clip(np.random.default_rng(seed).normal(5.4, 0.75, n), 1.5, 9.2)


def test_oversampling_raises_rare_bins_to_the_target_share_with_capped_copies():
    means = _ava_like_means()
    subset = undersample(means, per_bin=300, bins=10, seed=1)
    extra = oversample_rare(means, subset, bins=10, target_share=0.05, max_copies=4, seed=2)
    bin_of = mean_bins(means, 10)
    before = np.bincount(bin_of[subset], minlength=10)
    after = before + np.bincount(bin_of[extra], minlength=10)
    target = int(np.ceil(0.05 * len(subset)))
    for b in range(10):
        if before[b] == 0 or before[b] >= target:  # empty and common bins get no copies
            assert after[b] == before[b], b
        else:  # rare bins: up to the target, and never more than 4 draws of one image
            assert after[b] == min(target, 4 * before[b]), b
    assert set(extra.tolist()) <= set(subset.tolist())
    assert np.bincount(extra).max() <= 3  # at most 3 extra copies, plus the original
    assert np.array_equal(
        extra, oversample_rare(means, subset, bins=10, target_share=0.05, max_copies=4, seed=2)
    )
    assert not np.array_equal(
        extra, oversample_rare(means, subset, bins=10, target_share=0.05, max_copies=4, seed=3)
    )


def test_epoch_sampler_with_extra_copies_is_deterministic_and_resumable():
    means = _ava_like_means(400)
    subset = undersample(means, per_bin=60, bins=10, seed=[5, 2])
    extra = oversample_rare(means, subset, bins=10, target_share=0.1, max_copies=3, seed=[5, 2, 1])
    assert len(extra) > 0

    def epoch(number, **kwargs):
        sampler = EpochSampler(len(means), seed=5, batch_size=8, **kwargs)
        sampler.set_epoch(number, subset, extra)
        return list(sampler)

    keys = epoch(2)
    copies = [key for key in keys if len(key) == 3]
    assert {index for index, _, _ in copies} <= set(extra.tolist())
    assert len(keys) == (len(subset) + len(extra)) // 8 * 8
    # Every draw of an image gets its own augmentation seed.
    by_image: dict[int, list[int]] = {}
    for key in keys:
        by_image.setdefault(key[0], []).append(key[1])
    assert all(len(set(seeds)) == len(seeds) for seeds in by_image.values())
    # A fresh sampler (a resumed run) draws the same epoch; another epoch draws another order.
    assert epoch(2) == keys and epoch(3) != keys
    shards = [epoch(2, num_replicas=2, rank=rank) for rank in range(2)]
    assert len(shards[0]) == len(shards[1]) and not set(shards[0]) & set(shards[1])
    everything = EpochSampler(len(means), seed=5)
    everything.set_epoch(2, subset, extra)
    all_keys = list(everything)
    for key in shards[0] + shards[1]:  # the split between processes changes no key
        assert key in all_keys


def test_extra_copies_get_only_aesthetics_keeping_augmentation(prepared):
    frame = read_manifest(prepared).query("split == 'train'")
    augment = RareCopyAugment(scale_jitter=0.1, jpeg_quality_min=75)
    dataset = RatingDataset(frame, build_train_transform(PRE), rare_copy_transform=augment)
    original = dataset[(4, 11)][0]
    copy = dataset[(4, 11, 1)][0]
    assert copy.shape == original.shape and not torch.equal(copy, original)
    assert torch.equal(copy, dataset[(4, 11, 1)][0])  # seeded like any other draw
    # Brightness and colour stay: the per-channel means move by less than 2% of the range.
    image = Image.open(dataset.paths[4]).convert("RGB")
    pixels = np.asarray(image, dtype=np.float64)
    for seed in range(6):
        torch.manual_seed(seed)
        out = augment(image)
        ratio = (out.size[0] / out.size[1]) / (image.size[0] / image.size[1])
        assert 0.9 <= out.size[0] * out.size[1] / (image.size[0] * image.size[1]) <= 1.0
        assert abs(ratio - 1) < 0.06  # the photo's own aspect ratio
        assert (
            np.abs(np.asarray(out, dtype=np.float64).mean(axis=(0, 1)) - pixels.mean(axis=(0, 1))).max() < 5
        )

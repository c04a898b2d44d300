"""Generated prepared directories for the training tests (no AVA data, no other engineer's code).

Images carry a visible property (brightness) that decides their rating distribution: a
discretised Gaussian over 1..10 whose mean grows linearly with brightness. A model that learns
must reach a high rank correlation on held-out images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ASSETS

WEIGHTS_025_DIR = ASSETS / "weights" / "keras_mobilenet_v1_0.25"
WEIGHTS_025 = WEIGHTS_025_DIR / "mobilenet_2_5_224_tf_no_top.h5"

SCORES = np.arange(1, 11, dtype=np.float64)
RATING_STD = 1.5

# Small, fast settings shared by the training tests: width-0.25 MobileNet with ImageNet weights.
TINY = [
    "model.alpha=0.25",
    "model.backbone_weights=keras-mobilenet-v1-0.25-imagenet",
    "data.image_size=40",
    "data.crop=32",
    "data.num_workers=0",
    "data.undersample_per_bin=null",
    "batch_size=16",
    "progress=false",
]


def require_weights(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point BEHOLDER_WEIGHTS_PATH at the offline width-0.25 weights, or skip the test."""
    if not WEIGHTS_025.is_file():
        pytest.skip(f"offline weights not available: {WEIGHTS_025}")
    monkeypatch.setenv("BEHOLDER_WEIGHTS_PATH", str(WEIGHTS_025_DIR))
    return WEIGHTS_025


def rating_distribution(mean: float, std: float = RATING_STD) -> np.ndarray:
    """(10,) discretised Gaussian over scores 1..10."""
    p = np.exp(-0.5 * ((SCORES - mean) / std) ** 2)
    return p / p.sum()


def brightness_to_mean(brightness: float) -> float:
    return 3.0 + 4.0 * brightness


def make_image(brightness: float, rng: np.random.Generator, size: int) -> Image.Image:
    """A textured image whose average grey level is set by ``brightness`` in [0, 1]."""
    level = 30 + 190 * brightness
    tint = rng.uniform(-10, 10, size=3)
    pixels = level + tint + rng.normal(0, 6, size=(size, size, 3))
    for _ in range(3):  # a few random patches of colour, so the image is not a flat field
        x, y = rng.integers(0, size - size // 4, size=2)
        pixels[y : y + size // 4, x : x + size // 4] += rng.uniform(-15, 15, size=3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def make_prepared_dir(
    root: Path,
    counts: Sequence[int] = (64, 32, 32),
    *,
    size: int = 64,
    cache_size: int = 48,
    seed: int = 0,
    votes_per_image: int = 200,
) -> Path:
    """Write a prepared directory like ``beholder ava prepare``'s: sources, 256-style cache, manifest.

    ``counts`` are the numbers of train, val and test images. Paths are stored relative to the
    directory, as the data module writes them.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "cache").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    image_id = 1000
    for split, count in zip(("train", "val", "test"), counts):
        for brightness in rng.uniform(0, 1, size=count):
            image_id += 1
            image = make_image(float(brightness), rng, size)
            source = f"images/{image_id}.jpg"
            cache = f"cache/{image_id}.jpg"
            image.save(root / source, quality=95)
            image.resize((cache_size, cache_size), Image.Resampling.BILINEAR).save(root / cache, quality=95)
            p = rating_distribution(brightness_to_mean(float(brightness)))
            votes = np.maximum(np.round(p * votes_per_image), 0).astype(int)
            votes[int(np.argmax(p))] += 1  # never an all-zero row
            q = votes / votes.sum()
            mean = float(q @ SCORES)
            rows.append(
                {
                    "image_id": image_id,
                    "split": split,
                    **{f"votes_{i}": int(votes[i - 1]) for i in range(1, 11)},
                    "n_votes": int(votes.sum()),
                    "mean": mean,
                    "std": float(np.sqrt(q @ SCORES**2 - mean**2)),
                    "tag1": 0,
                    "tag2": 0,
                    "challenge_id": 1,
                    "source_path": source,
                    "cache_path": cache,
                    "file_bytes": (root / source).stat().st_size,
                    "width": size,
                    "height": size,
                    "aspect_ratio": 1.0,
                    "mode": "RGB",
                    "format": "JPEG",
                }
            )
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet", index=False)
    return root


def target_matrix(frame: pd.DataFrame) -> np.ndarray:
    """(N, 10) vote distributions of manifest rows."""
    votes = frame[[f"votes_{i}" for i in range(1, 11)]].to_numpy(dtype=np.float64)
    return votes / votes.sum(axis=1, keepdims=True)

"""Generated photo-like images for benchmarks that compare model outputs (precision, quantization).

Smooth gradients plus noise (what the throughput benchmarks use) all look alike to an aesthetic
model, so they say little about rank agreement. These images mix what photos have and flat
test patterns lack: 1/f ("pink") multi-scale colour structure, a few soft-edged objects with
their own gradients, a depth-of-field style blur of the background, vignetting and sensor noise,
then JPEG compression. Each seed gives a different scene; no two draws share a layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _pink_field(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A (H, W, 3) float field with power falling with spatial frequency, like natural scenes."""
    field = np.zeros((height, width, 3), np.float32)
    for octave in range(1, 8):
        cells = 2**octave
        coarse = rng.normal(0, 1, (cells * height // max(width, height) + 2, cells + 2, 3)).astype(np.float32)
        coarse = (coarse * 127 + 128).clip(0, 255).astype(np.uint8)
        up = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        field += (np.asarray(up, np.float32) - 128) / octave**1.2
    return field


def photo_like(seed: int, size: tuple[int, int] = (800, 600)) -> Image.Image:
    """One photo-like RGB image of ``size`` (width, height), fully determined by ``seed``."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky, ground = rng.uniform(30, 230, 3), rng.uniform(20, 200, 3)
    horizon = rng.uniform(0.25, 0.75) * height
    blend = (1 / (1 + np.exp(-(y - horizon) / rng.uniform(5, 60))))[..., None]
    base = sky * (1 - blend) + ground * blend
    # Mostly brightness structure with a little colour in it, as in photographs.
    pink = _pink_field(rng, width, height)
    texture = pink.mean(-1, keepdims=True) * 1.7 + (pink - pink.mean(-1, keepdims=True)) * 0.35
    base = base + texture * rng.uniform(0.3, 1.2)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    if rng.random() < 0.6:  # a shallow depth of field
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(1, 6)))
    draw = ImageDraw.Draw(image, "RGBA")
    for _ in range(rng.integers(1, 7)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.03, 0.3) * width, rng.uniform(0.03, 0.3) * height
        colour = (*rng.integers(0, 256, 3).tolist(), int(rng.integers(120, 256)))
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        if rng.random() < 0.5:
            draw.ellipse(box, fill=colour)
        else:
            draw.rectangle(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    pixels = np.asarray(image, np.float32)
    radius = np.hypot((x - width / 2) / width, (y - height / 2) / height)[..., None]
    pixels = pixels * (1 - rng.uniform(0, 0.8) * radius**2)
    pixels = pixels * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30)  # exposure
    pixels = pixels + rng.normal(0, rng.uniform(1, 8), pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def write_photo_like(directory: Path, count: int, *, first_seed: int = 0, size=(800, 600)) -> list[Path]:
    """Write ``count`` photo-like JPEGs (quality 90) named by seed; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(first_seed, first_seed + count):
        path = directory / f"photo_like_{seed:05d}.jpg"
        photo_like(seed, size).save(path, quality=90)
        paths.append(path)
    return paths

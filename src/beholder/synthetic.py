"""Seeded photo-like images: textured scenes, not smooth gradients.

The package calibrates its int8 model on them (:mod:`beholder.quantize`), and the benchmarks use
them as realistic inputs.

Each scene has a sky-to-ground gradient, random shapes with hard edges, some of them blurred (out
of focus), noise at three scales (texture, grain, sensor noise) and fine lines. That gives JPEGs
of about the size real photos have at q90 (a 4032x3024 one is 3-4 MB) and makes decoders, DCT
scaling and nearest-neighbour sampling behave as they do on photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = (max(width // 8, 8), max(height // 8, 8))
    # Large-scale structure, drawn at 1/8 scale and upsampled: a gradient and soft shapes.
    y = np.linspace(0, 1, small[1])[:, None, None]
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    base = np.broadcast_to(top * (1 - y) + bottom * y, (small[1], small[0], 3)).astype(np.uint8)
    scene = Image.fromarray(np.ascontiguousarray(base))
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = rng.uniform(-0.2, 1.0) * small[0], rng.uniform(-0.2, 1.0) * small[1]
        w, h = rng.uniform(0.05, 0.6) * small[0], rng.uniform(0.05, 0.6) * small[1]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        else:
            draw.polygon([tuple(p) for p in rng.uniform(0, 1, (5, 2)) * small], fill=colour)
    scene = scene.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3.0))))
    scene = scene.resize((width, height), Image.Resampling.BICUBIC)
    # Sharp shapes and lines at full resolution: the edges a subject in focus has.
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(3, 10))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.02, 0.3) * width, rng.uniform(0.02, 0.3) * height
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    for _ in range(int(rng.integers(5, 30))):
        points = [tuple(p) for p in rng.uniform(0, 1, (2, 2)) * (width, height)]
        draw.line(points, fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=int(rng.integers(1, 6)))
    pixels = np.asarray(scene, dtype=np.float32)
    # Texture at 1/4 scale, grain at full scale, then a blurred (out-of-focus) band.
    texture = rng.normal(0, rng.uniform(4, 20), (height // 4 + 1, width // 4 + 1, 1)).astype(np.float32)
    pixels += np.repeat(np.repeat(texture, 4, 0), 4, 1)[:height, :width]
    pixels += rng.normal(0, rng.uniform(2, 9), (height, width, 1)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    band = int(rng.uniform(0.1, 0.4) * height)
    start = int(rng.uniform(0, height - band))
    box = (0, start, width, start + band)
    image.paste(image.crop(box).filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 8)))), box)
    return image


def write_photo_jpegs(directory: Path, size: tuple[int, int], count: int, seed: int = 0) -> list[str]:
    """``count`` photo-like JPEGs (q90) of ``size`` (w, h) in ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = directory / f"photo_{size[0]}x{size[1]}_{index:03d}.jpg"
        if not path.exists():
            photo_like(*size, seed=seed + index).save(path, quality=90)
        paths.append(str(path))
    return paths

"""Generated shoots for the cull tests and benchmark: photo-like scenes, bursts, EXIF capture times.

A scene is a random colour gradient with random shapes (ellipses, rectangles, polygons, lines),
a little texture noise and a slight blur, rendered larger than the frame; a burst crops it a few
pixels apart and re-encodes each frame at its own JPEG quality, as a camera would.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHOOT_START = dt.datetime(2024, 6, 1, 14, 0, 0)
MARGIN = 12  # pixels of scene around the frame, room for camera shake


def render_scene(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A photo-like random scene, ``MARGIN`` pixels larger than ``size`` on every side."""
    rng = np.random.default_rng(seed)
    width, height = size[0] + 2 * MARGIN, size[1] + 2 * MARGIN
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    low, high = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    pixels = low + (high - low) * ramp[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 14))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        w, h = rng.uniform(0.1, 0.6) * width, rng.uniform(0.1, 0.6) * height
        kind = rng.integers(0, 4)
        if kind == 0:
            draw.ellipse([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 1:
            draw.rectangle([x0, y0, x0 + w, y0 + h], fill=colour)
        elif kind == 2:
            points = [
                (x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)) for _ in range(int(rng.integers(3, 7)))
            ]
            draw.polygon(points, fill=colour)
        else:
            draw.line([x0, y0, x0 + w, y0 + h], fill=colour, width=int(rng.integers(2, 10)))
    texture = rng.normal(0, rng.uniform(3, 12), (height, width, 3))
    pixels = np.asarray(image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5))), np.float64) + texture
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def exif_time(moment: dt.datetime) -> Image.Exif:
    """EXIF with DateTimeOriginal and SubSecTimeOriginal (hundredths) for ``moment``."""
    exif = Image.Exif()
    ifd = exif.get_ifd(0x8769)
    ifd[36867] = moment.strftime("%Y:%m:%d %H:%M:%S")
    ifd[37521] = f"{moment.microsecond // 10_000:02d}"
    return exif


def write_frame(scene: Image.Image, path: Path, shift: tuple[int, int], moment: dt.datetime, quality: int):
    dx, dy = shift
    width, height = scene.width - 2 * MARGIN, scene.height - 2 * MARGIN
    frame = scene.crop((MARGIN + dx, MARGIN + dy, MARGIN + dx + width, MARGIN + dy + height))
    frame.save(path, "JPEG", quality=quality, exif=exif_time(moment))


@dataclass
class Shoot:
    paths: list[Path]
    truth: dict[str, int]  # file name -> true group id (a burst's scene, or the single's own)


def make_shoot(
    folder: Path,
    bursts: int = 10,
    frames: int = 4,
    singles: int = 10,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
) -> Shoot:
    """Bursts of ``frames`` near-duplicates 0.3 s apart, interleaved with single frames of other scenes.

    Every frame is within 1 s of the one before it, so the capture time alone would put the whole
    shoot into one group: only the similarity can separate the scenes. File names are in shoot
    order shuffled (``frame_NNN`` is a random permutation), so the order must come from EXIF.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    plan: list[tuple[int, int]] = []  # (scene seed, frame number)
    for b in range(max(bursts, singles)):
        if b < bursts:
            plan += [(seed * 1000 + b, k) for k in range(frames)]
        if b < singles:
            plan.append((seed * 1000 + 500 + b, 0))
    names = rng.permutation(len(plan))
    moment, paths, truth, scenes = SHOOT_START, [], {}, {}
    for (scene_seed, k), name in zip(plan, names):
        scene = scenes.get(scene_seed) or scenes.setdefault(scene_seed, render_scene(scene_seed, size))
        shift = (0, 0) if k == 0 else tuple(int(v) for v in rng.integers(-4, 5, 2))
        path = folder / f"frame_{name:03d}.jpg"
        write_frame(scene, path, shift, moment, quality=int(rng.integers(80, 96)))
        paths.append(path)
        truth[path.name] = scene_seed
        moment += dt.timedelta(seconds=0.3 if k < frames - 1 and scene_seed % 1000 < 500 else 0.7)
    return Shoot(paths, truth)


def adjusted_rand_index(truth: list, found: list) -> float:
    """Adjusted Rand index of two labelings (Hubert and Arabie 1985), as scikit-learn computes it.

    Written here to keep scikit-learn out of the test dependencies: pair counts from the
    contingency table, with scipy's binomial coefficient.
    """
    from scipy.special import comb

    pairs = {}
    for t, f in zip(truth, found):
        pairs[(t, f)] = pairs.get((t, f), 0) + 1
    rows, cols = {}, {}
    for (t, f), count in pairs.items():
        rows[t] = rows.get(t, 0) + count
        cols[f] = cols.get(f, 0) + count
    index = sum(comb(n, 2) for n in pairs.values())
    row_sum, col_sum = sum(comb(n, 2) for n in rows.values()), sum(comb(n, 2) for n in cols.values())
    expected = row_sum * col_sum / comb(len(truth), 2)
    maximum = (row_sum + col_sum) / 2
    if maximum == expected:  # both labelings are one cluster or all singletons
        return 1.0
    return float((index - expected) / (maximum - expected))

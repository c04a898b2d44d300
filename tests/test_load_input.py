"""load_input: the torch-free model input, identical to the torchvision eval transform in exact mode."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beholder.errors import ImageLoadError
from beholder.imageio import open_image
from beholder.preprocessing import (
    DEFAULT_FIDELITY,
    Preprocessing,
    build_eval_transform,
    load_input,
)

PREPROCESSINGS = [
    Preprocessing(),  # idealo: 224x224 nearest
    Preprocessing(resize=(224, 224), interpolation="bilinear"),
    Preprocessing(
        resize=256, crop=224, interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    ),
    Preprocessing(resize=(200, 180), interpolation="nearest", crop=224),  # crop larger than the image: padded
]
SIZES = [(224, 224), (57, 31), (301, 457), (640, 1280)]


def _textured(size: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [np.sin(x / rng.uniform(3, 40)), np.cos(y / rng.uniform(3, 40)), (x + y) / (width + height)], -1
    )
    noisy = base * rng.uniform(60, 127, 3) + 128 + rng.normal(0, 25, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _write(folder: Path, mode: str, size: tuple[int, int], seed: int) -> Path:
    rgb = Image.fromarray(_textured(size, seed))
    if mode == "I;16":
        image = Image.fromarray((np.asarray(rgb.convert("L"), np.uint16) * 257 + seed).astype(np.uint16))
    elif mode == "F":
        image = Image.fromarray(np.asarray(rgb.convert("L"), np.float32) / 255)
    elif mode == "Ptrans":
        image = rgb.convert("P")
        image.info["transparency"] = 3
    else:
        image = rgb.convert(mode)
    suffix = {"CMYK": ".jpg", "F": ".tif", "I": ".tif", "RGB": ".jpg"}.get(mode, ".png")
    path = folder / f"{mode}_{size[0]}x{size[1]}_{seed}{suffix}"
    if mode == "Ptrans":
        image.save(path, transparency=3)
    else:
        image.save(path, **({"quality": 90} if suffix == ".jpg" else {}))
    return path


@pytest.mark.slow
def test_exact_mode_equals_the_torchvision_eval_transform(tmp_path: Path) -> None:
    modes = ["RGB", "L", "LA", "RGBA", "P", "Ptrans", "CMYK", "I;16", "I", "F", "1"]
    checked = 0
    for seed, mode in enumerate(modes):
        for size in SIZES:
            path = _write(tmp_path, mode, size, seed)
            reference_image = open_image(path)
            for pre in PREPROCESSINGS:
                expected = build_eval_transform(pre)(reference_image).numpy()
                got = load_input(path, pre, fidelity="exact")
                assert got.dtype == np.float32 and got.shape == expected.shape, (path, pre)
                assert got.flags.c_contiguous
                assert np.array_equal(got, expected), (path, pre, np.abs(got - expected).max())
                checked += 1
    assert checked == len(modes) * len(SIZES) * len(PREPROCESSINGS)


def test_exif_orientation_and_every_source_kind(tmp_path: Path) -> None:
    pixels = _textured((300, 200), 7)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, exif=exif, quality=92)
    pre = Preprocessing(resize=(120, 80))
    expected = build_eval_transform(pre)(open_image(path)).numpy()
    assert open_image(path).size == (200, 300)
    for source in (path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), Image.open(path)):
        assert np.array_equal(load_input(source, pre, name="rotated.jpg"), expected)


def test_fast_mode_drafts_large_jpegs_only(tmp_path: Path) -> None:
    pre = Preprocessing()
    large, small = tmp_path / "large.jpg", tmp_path / "small.jpg"
    Image.fromarray(_textured((2000, 1500), 1)).save(large, quality=90)
    Image.fromarray(_textured((800, 600), 2)).save(small, quality=90)
    assert DEFAULT_FIDELITY == "exact"
    assert pre.fidelity_draft_size("fast") == (448, 448) and pre.fidelity_draft_size("exact") is None
    # Under twice the input (448 px) there is no DCT scale to use: fast is exact.
    assert np.array_equal(load_input(small, pre, fidelity="fast"), load_input(small, pre))
    # A 2000x1500 JPEG decodes at 1000x750 (scale 1/2) in fast mode: close to exact, not equal.
    fast, exact = load_input(large, pre, fidelity="fast"), load_input(large, pre)
    drafted = Image.open(large)
    drafted.draft("RGB", (448, 448))
    assert drafted.size == (1000, 750)
    assert fast.shape == exact.shape and not np.array_equal(fast, exact)
    assert abs(float(fast.mean() - exact.mean())) < 0.02
    with pytest.raises(ValueError, match="fidelity"):
        load_input(small, pre, fidelity="sloppy")


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"upload\.jpg: not an image"):
        load_input(b"hello", Preprocessing(), name="upload.jpg")


def test_preprocessing_drops_the_dead_extra_field() -> None:
    pre = Preprocessing.from_dict({"resize": [224, 224], "interpolation": "nearest", "extra": {"old": 1}})
    assert pre == Preprocessing() and "extra" not in pre.to_dict()
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def test_the_scoring_path_does_not_import_torch(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(_textured((64, 48), 3)).save(path)
    script = (
        "import sys\n"
        "from beholder.preprocessing import Preprocessing, load_input\n"
        f"x = load_input({str(path)!r}, Preprocessing())\n"
        "assert x.shape == (3, 224, 224), x.shape\n"
        "heavy = [m for m in ('torch', 'torchvision', 'onnx', 'scipy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


@pytest.mark.slow
def test_exact_mode_reproduces_idealo_keras_means(idealo_weights: Path, sample_images: Path) -> None:
    import torch

    from beholder.models import create_model
    from conftest import IDEALO_KERAS_MEANS

    model = create_model(progress=False)
    names = sorted(IDEALO_KERAS_MEANS)
    batch = torch.from_numpy(np.stack([load_input(sample_images / n, model.preprocessing) for n in names]))
    with torch.no_grad():
        means = torch.softmax(model(batch), dim=-1).numpy() @ np.arange(1, 11)
    for name, mean in zip(names, means):
        assert abs(mean - IDEALO_KERAS_MEANS[name]) < 0.01, (name, mean)


def test_a_shorter_side_resize_of_an_extreme_aspect_ratio_is_refused(tmp_path: Path, monkeypatch) -> None:
    from beholder import preprocessing

    # 1x2000 decodes to 2,000 pixels; a shorter-side resize to 16 would make it 16x32,000.
    monkeypatch.setattr(preprocessing, "MAX_RESIZED_PIXELS", 100_000)
    strip = tmp_path / "strip.png"
    Image.new("L", (1, 2000), 128).save(strip)
    pre = Preprocessing(resize=16, interpolation="bilinear", crop=8)
    with pytest.raises(ImageLoadError) as caught:
        load_input(strip, pre)
    assert caught.value.path == str(strip)
    assert "aspect ratio too extreme (1x2000)" in caught.value.problem
    assert "16x32000 = 512,000 pixels > limit 100,000" in caught.value.problem
    # A fixed (height, width) resize never grows with the aspect ratio: the same strip scores, and a
    # decode limit below the model's own input size refuses nothing more.
    assert load_input(strip, Preprocessing(resize=(16, 16))).shape == (3, 16, 16)
    square = tmp_path / "square.png"
    Image.new("L", (20, 20), 128).save(square)
    assert load_input(square, Preprocessing(resize=200, crop=150), max_pixels=1_000).shape == (3, 150, 150)

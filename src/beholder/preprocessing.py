"""Preprocessing declared by each model: the model-input loader, and torchvision transforms for training.

Scores depend strongly on preprocessing: idealo's NIMA weights were trained on nearest-neighbour
resized inputs and score about 0.5 lower on bilinear ones. So a model carries a
:class:`Preprocessing` and every consumer (scorer, training, evaluation, ONNX export) builds its
pipeline from it instead of hard-coding one.

:func:`load_input` is the scoring path: PIL and numpy only (no torch), and in ``exact`` fidelity it
returns the very tensor ``build_eval_transform(pre)(open_image(source))`` gives. torch and
torchvision are imported inside the transform builders, which only training and evaluation use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from beholder.errors import ImageLoadError
from beholder.imageio import DEFAULT_MAX_PIXELS, DecodeBudget, ImageSource, describe, open_image

if TYPE_CHECKING:
    from torchvision.transforms import v2 as T

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

#: ``exact``: decode at full resolution, so scores match the model's reference implementation.
#: ``fast``: let libjpeg decode JPEGs at a reduced (DCT) scale no smaller than twice the model input,
#: then resize as declared; several times faster on large photos, and scores drift (docs/speed.md).
FIDELITIES = ("exact", "fast")
#: Most pixels a shorter-side resize may give before its centre crop: a 1:488 panorama at 256.
#: (A fixed (height, width) resize never grows with the aspect ratio.)
MAX_RESIZED_PIXELS = 32_000_000
DEFAULT_FIDELITY = "exact"


@dataclass
class Preprocessing:
    """How an RGB image becomes the model's input tensor.

    Attributes:
        resize: (height, width) to resize to, or a single int for the shorter side (timm style).
        interpolation: 'nearest', 'bilinear' or 'bicubic'.
        crop: side of the square centre crop at evaluation (random crop in training); None for none.
        mean, std: per-channel normalisation applied to values in [0, 1].
            Keras' MobileNet ``x/127.5 - 1`` is mean 0.5, std 0.5.
    """

    resize: Any = (224, 224)
    interpolation: str = "nearest"
    crop: int | None = None
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {list(INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if isinstance(self.resize, list):
            self.resize = tuple(self.resize)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the tensor the model receives."""
        if self.crop:
            return (self.crop, self.crop)
        if isinstance(self.resize, int):
            raise ValueError("a shorter-side resize needs a crop to give a fixed input size")
        return tuple(self.resize)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["resize"] = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        # Older checkpoints and ONNX files carry an unused 'extra' field.
        return cls(**{key: value for key, value in data.items() if key != "extra"})

    def draft_size(self) -> tuple[int, int] | None:
        """The (w, h) a JPEG may be decoded at (PIL draft mode) without changing the result much.

        libjpeg's DCT scaling is a box filter; it is only harmless when the model then resizes
        with an antialiasing filter from at least twice the target size. Nearest-neighbour
        resizing samples single pixels, so its models must see the full-resolution decode.
        Training data loading uses this; scoring uses :meth:`fidelity_draft_size`.
        """
        return None if self.interpolation == "nearest" else self._twice_input()

    def fidelity_draft_size(self, fidelity: str = DEFAULT_FIDELITY) -> tuple[int, int] | None:
        """The (w, h) :func:`load_input` lets a JPEG decode at in ``fidelity``; None for full size.

        ``exact`` never drafts (any draft changes pixels); ``fast`` drafts to at least twice the
        model's input on each side, whatever the interpolation.
        """
        check_fidelity(fidelity)
        return None if fidelity == "exact" else self._twice_input()

    def _twice_input(self) -> tuple[int, int]:
        if isinstance(self.resize, int):
            return (2 * self.resize, 2 * self.resize)
        height, width = self.resize
        return (2 * width, 2 * height)


def check_fidelity(fidelity: str) -> str:
    if fidelity not in FIDELITIES:
        raise ValueError(f"fidelity must be one of {list(FIDELITIES)}, got {fidelity!r}")
    return fidelity


def load_input(
    source: ImageSource,
    pre: Preprocessing,
    *,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    fidelity: str = DEFAULT_FIDELITY,
    budget: DecodeBudget | None = None,
) -> np.ndarray:
    """Decode ``source`` and preprocess it as ``pre`` declares: a (3, H, W) float32 array.

    EXIF orientation, mode conversion (alpha on white, 16-bit rescaled), resize with the declared
    filter, centre crop and normalisation, all in PIL and numpy. Decoding reserves its memory from
    ``budget`` (default: the process-wide :data:`beholder.imageio.DEFAULT_DECODE_BUDGET`).

    A shorter-side resize (``pre.resize`` an int) of an extreme aspect ratio can give far more
    pixels than the decode itself (1x60000 -> 256x15,360,000): such an image is refused when the
    resized image would have more than :data:`MAX_RESIZED_PIXELS`.

    Raises:
        ImageLoadError: naming the input and the problem.
    """
    image = open_image(
        source,
        name=name,
        max_pixels=max_pixels,
        draft_size=pre.fidelity_draft_size(fidelity),
        budget=budget,
        keep_grey=True,
    )
    width, height = resized_size(*image.size, pre)
    if isinstance(pre.resize, int) and width * height > MAX_RESIZED_PIXELS:
        raise ImageLoadError(
            describe(source, name),
            f"aspect ratio too extreme ({image.size[0]}x{image.size[1]}): resizing its shorter side to "
            f"{pre.resize} gives {width}x{height} = {width * height:,} pixels > limit {MAX_RESIZED_PIXELS:,}",
        )
    return to_model_input(image, pre)


def resized_size(width: int, height: int, pre: Preprocessing) -> tuple[int, int]:
    """(w, h) after ``pre.resize``, as torchvision computes it (int: the shorter side)."""
    if not isinstance(pre.resize, int):
        target_height, target_width = pre.resize
        return (target_width, target_height)
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(pre.resize * long / short)
    return (pre.resize, new_long) if width <= height else (new_long, pre.resize)


def to_model_input(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """An 'RGB' or 'L' PIL image -> the (3, H, W) float32 model input (resize, crop, normalise)."""
    resized = image.resize(resized_size(*image.size, pre), resample=_PIL_FILTERS[pre.interpolation])
    pixels = np.asarray(resized)
    if pixels.ndim == 2:  # greyscale kept as 'L': the same values in every channel
        pixels = np.broadcast_to(pixels[..., None], (*pixels.shape, 3))
    if pre.crop:
        pixels = _center_crop(pixels, pre.crop)
    # The same float32 operations, in the same order, as torchvision's ToDtype(scale=True) and
    # Normalize, so the result is bit-identical to build_eval_transform's.
    scaled = pixels.transpose(2, 0, 1).astype(np.float32, order="C") * np.float32(1.0 / 255)
    mean = np.asarray(pre.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(3, 1, 1)
    scaled -= mean
    scaled /= std
    return scaled


def _center_crop(pixels: np.ndarray, side: int) -> np.ndarray:
    """torchvision's CenterCrop on an (H, W, C) array: zero-pad when smaller, round() the offsets."""
    height, width = pixels.shape[:2]
    if side > height or side > width:
        pad_y, pad_x = max(side - height, 0), max(side - width, 0)
        pixels = np.pad(pixels, ((pad_y // 2, (pad_y + 1) // 2), (pad_x // 2, (pad_x + 1) // 2), (0, 0)))
        height, width = pixels.shape[:2]
    top, left = round((height - side) / 2.0), round((width - side) / 2.0)
    return pixels[top : top + side, left : left + side]


def _resize(pre: Preprocessing) -> T.Resize:
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import v2 as T

    # Applied to the PIL image, so it is PIL's own filter: exactly what Keras' load_img does for
    # 'nearest' (torch's tensor 'nearest' picks different source pixels), and antialiased otherwise.
    return T.Resize(pre.resize, interpolation=InterpolationMode(pre.interpolation))


def _to_normalized_tensor(pre: Preprocessing) -> list:
    import torch
    from torchvision.transforms import v2 as T

    return [
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(pre.mean), std=list(pre.std)),
    ]


def build_eval_transform(pre: Preprocessing) -> T.Compose:
    """Deterministic PIL RGB -> (3, H, W) float tensor: resize, optional centre crop, normalise."""
    from torchvision.transforms import v2 as T

    steps = [_resize(pre)]
    if pre.crop:
        steps.append(T.CenterCrop(pre.crop))
    return T.Compose(steps + _to_normalized_tensor(pre))


def build_train_transform(pre: Preprocessing, hflip: bool = True) -> T.Compose:
    """Training augmentation (NIMA paper, Sec. 3.2): resize, random crop, horizontal flip, normalise."""
    from torchvision.transforms import v2 as T

    steps = [_resize(pre)]
    if pre.crop:
        steps.append(T.RandomCrop(pre.crop))
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + _to_normalized_tensor(pre))

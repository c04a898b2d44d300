"""Preprocessing declared by each model, and the torchvision transforms built from it.

Scores depend strongly on preprocessing: idealo's NIMA weights were trained on nearest-neighbour
resized inputs and score about 0.5 lower on bilinear ones. So a model carries a
:class:`Preprocessing` and every consumer (scorer, training, evaluation, ONNX export) builds its
pipeline from it instead of hard-coding one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

_INTERPOLATIONS = {
    "nearest": InterpolationMode.NEAREST,
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
}


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
    crop: Optional[int] = None
    mean: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: Tuple[float, float, float] = (0.5, 0.5, 0.5)
    # Filled in by consumers that need it; kept for self-description in checkpoints and ONNX metadata.
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {sorted(_INTERPOLATIONS)}, got {self.interpolation!r}"
            )
        if isinstance(self.resize, list):
            self.resize = tuple(self.resize)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)

    @property
    def input_size(self) -> Tuple[int, int]:
        """(height, width) of the tensor the model receives."""
        if self.crop:
            return (self.crop, self.crop)
        if isinstance(self.resize, int):
            raise ValueError("a shorter-side resize needs a crop to give a fixed input size")
        return tuple(self.resize)

    def to_dict(self) -> Dict[str, Any]:
        data = asdict(self)
        data["resize"] = list(self.resize) if isinstance(self.resize, tuple) else self.resize
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Preprocessing":
        return cls(**data)

    def draft_size(self) -> Optional[Tuple[int, int]]:
        """The (w, h) a JPEG may be decoded at (PIL draft mode) without changing the result much.

        libjpeg's DCT scaling is a box filter; it is only harmless when the model then resizes
        with an antialiasing filter from at least twice the target size. Nearest-neighbour
        resizing samples single pixels, so its models must see the full-resolution decode.
        """
        if self.interpolation == "nearest":
            return None
        if isinstance(self.resize, int):
            return (2 * self.resize, 2 * self.resize)
        height, width = self.resize
        return (2 * width, 2 * height)


def _resize(pre: Preprocessing) -> T.Resize:
    # Applied to the PIL image, so it is PIL's own filter: exactly what Keras' load_img does for
    # 'nearest' (torch's tensor 'nearest' picks different source pixels), and antialiased otherwise.
    return T.Resize(pre.resize, interpolation=_INTERPOLATIONS[pre.interpolation])


def _to_normalized_tensor(pre: Preprocessing) -> list:
    return [
        T.PILToTensor(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean=list(pre.mean), std=list(pre.std)),
    ]


def build_eval_transform(pre: Preprocessing) -> T.Compose:
    """Deterministic PIL RGB -> (3, H, W) float tensor: resize, optional centre crop, normalise."""
    steps = [_resize(pre)]
    if pre.crop:
        steps.append(T.CenterCrop(pre.crop))
    return T.Compose(steps + _to_normalized_tensor(pre))


def build_train_transform(pre: Preprocessing, hflip: bool = True) -> T.Compose:
    """Training augmentation (NIMA paper, Sec. 3.2): resize, random crop, horizontal flip, normalise."""
    steps = [_resize(pre)]
    if pre.crop:
        steps.append(T.RandomCrop(pre.crop))
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + _to_normalized_tensor(pre))

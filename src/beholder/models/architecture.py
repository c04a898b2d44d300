"""What a NIMA model is made of, as plain data: no torch, so the scoring fast path can read it.

A registry entry, a checkpoint and an exported ONNX file all carry an :class:`Architecture`;
:mod:`beholder.models.nima` builds the modules from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KERAS_MOBILENET = "keras_mobilenet_v1"
TIMM_PREFIX = "timm/"


@dataclass
class Architecture:
    """Everything needed to rebuild a NIMA model's modules (not its weights).

    Attributes:
        backbone: ``"keras_mobilenet_v1"`` or ``"timm/<timm model name>"``.
        alpha: width multiplier of the Keras MobileNet (ignored for timm backbones).
        dropout: dropout probability before the 10-way layer (the paper uses 0.75).
        num_classes: rating bins (10 for AVA's 1..10 scores).
    """

    backbone: str = KERAS_MOBILENET
    alpha: float = 1.0
    dropout: float = 0.75
    num_classes: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        return cls(**data)

"""The NIMA model: any image backbone + Dropout + a 10-way linear layer (Talebi & Milanfar, 2018).

``forward`` returns logits of shape (B, 10); the softmax lives in the loss and in the scorer.
The head reads the backbone's ``num_features``, so it is never hard-wired to one backbone.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from beholder.errors import ConfigError
from beholder.models.architecture import KERAS_MOBILENET, TIMM_PREFIX, Architecture
from beholder.models.mobilenet_v1 import (
    KerasMobileNetV1,
    load_keras_layer,
    load_keras_mobilenet_weights,
    read_keras_h5,
)
from beholder.preprocessing import Preprocessing

log = logging.getLogger(__name__)

#: What the Keras MobileNet sees when trained by Beholder: the seed's 256x256 resize and 224 crop.
KERAS_TRAINING_PREPROCESSING = Preprocessing(resize=(256, 256), interpolation="bilinear", crop=224)


class NIMA(nn.Module):
    """Backbone -> pooled features (B, C) -> Dropout -> Linear(C, 10) -> logits (B, 10)."""

    def __init__(
        self, backbone: nn.Module, num_features: int, architecture: Architecture, preprocessing: Preprocessing
    ):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Dropout(p=architecture.dropout),
            nn.Linear(num_features, architecture.num_classes),
        )
        self.num_features = num_features
        self.architecture = architecture
        self.preprocessing = preprocessing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # (B, C) -> (B, 10)


def timm_preprocessing(model: nn.Module) -> Preprocessing:
    """The eval preprocessing timm declares for a model (its pretrained config)."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    interpolation = config.get("interpolation", "bicubic")
    if interpolation not in ("nearest", "bilinear", "bicubic"):
        interpolation = "bicubic"
    return Preprocessing(
        resize=math.floor(size / crop_pct),
        interpolation=interpolation,
        crop=size,
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
    )


def build_nima(
    architecture: Architecture,
    *,
    preprocessing: Preprocessing | None = None,
    backbone_weights: str | Path | None = None,
    timm_pretrained: bool = False,
) -> NIMA:
    """Build a NIMA model. The head is always freshly initialised.

    Args:
        architecture: what to build.
        preprocessing: overrides the backbone's default preprocessing.
        backbone_weights: a Keras ``.h5`` file for the Keras MobileNet, or a timm-loadable file
            (``.safetensors``/``.pth``) for a timm backbone.
        timm_pretrained: let timm fetch its own pretrained weights (needs network or its hub cache).
    """
    if architecture.backbone == KERAS_MOBILENET:
        backbone: nn.Module = KerasMobileNetV1(alpha=architecture.alpha)
        if backbone_weights is not None:
            load_keras_mobilenet_weights(backbone, read_keras_h5(backbone_weights), str(backbone_weights))
        num_features = backbone.num_features
        default_pre = KERAS_TRAINING_PREPROCESSING
    elif architecture.backbone.startswith(TIMM_PREFIX):
        import timm

        name = architecture.backbone[len(TIMM_PREFIX) :]
        kwargs: dict[str, Any] = {"num_classes": 0}
        if backbone_weights is not None:
            kwargs["pretrained_cfg_overlay"] = {"file": str(backbone_weights)}
        try:
            backbone = timm.create_model(name, pretrained=bool(backbone_weights) or timm_pretrained, **kwargs)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ConfigError(f"unknown timm model {name!r} (see timm.list_models())") from exc
            raise
        # With num_classes=0 timm returns pooled features of `head_hidden_size` (models with a
        # pre-logits layer, e.g. MobileNetV3) or else `num_features`.
        num_features = getattr(backbone, "head_hidden_size", None) or backbone.num_features
        default_pre = timm_preprocessing(backbone)
    else:
        raise ConfigError(
            f"unknown backbone {architecture.backbone!r}: use {KERAS_MOBILENET!r} or '{TIMM_PREFIX}<timm model name>'"
        )
    return NIMA(backbone, num_features, architecture, preprocessing or default_pre)


def load_keras_nima_weights(model: NIMA, path: str | Path) -> None:
    """Load a Keras NIMA weights file (MobileNet base + Dense(10), e.g. idealo's) into ``model``."""
    if not isinstance(model.backbone, KerasMobileNetV1):
        raise ConfigError(f"{path}: Keras NIMA weights need the Keras MobileNet backbone")
    layers = read_keras_h5(path)
    rest = load_keras_mobilenet_weights(model.backbone, layers, str(path))
    linear = model.head[1]
    dense = [
        name for name in rest if layers[name].get("kernel") is not None and layers[name]["kernel"].ndim == 2
    ]
    if len(dense) != 1:
        raise ConfigError(f"{path}: expected exactly one Dense layer after the MobileNet base, found {dense}")
    load_keras_layer(linear, layers[dense[0]], f"{path}:{dense[0]}")
    log.debug("loaded Keras NIMA weights from %s (head layer %s)", path, dense[0])

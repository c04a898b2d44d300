"""NIMA models: the Keras-compatible MobileNet v1, timm backbones, the registry, the factory and checkpoints.

Names are re-exported lazily (PEP 562): ``from beholder.models import Architecture`` or reading the
registry must not import torch, because the scoring fast path (ONNX Runtime) runs without it.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module that defines it; imported on first access.
_LAZY = {
    "Architecture": "beholder.models.architecture",
    "KERAS_MOBILENET": "beholder.models.architecture",
    "NIMA": "beholder.models.nima",
    "build_nima": "beholder.models.nima",
    "load_keras_nima_weights": "beholder.models.nima",
    "create_model": "beholder.models.factory",
    "create_training_model": "beholder.models.factory",
    "load_checkpoint": "beholder.models.checkpoint",
    "save_checkpoint": "beholder.models.checkpoint",
    "unwrap": "beholder.models.checkpoint",
    "fuse_conv_bn": "beholder.models.fusion",
    "BACKBONE_WEIGHTS": "beholder.models.registry",
    "DEFAULT_MODEL": "beholder.models.registry",
    "MODELS": "beholder.models.registry",
    "ModelSpec": "beholder.models.registry",
    "get_backbone_weights": "beholder.models.registry",
    "get_model_spec": "beholder.models.registry",
    "list_models": "beholder.models.registry",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

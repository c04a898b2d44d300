"""NIMA models: the Keras-compatible MobileNet v1, timm backbones, the registry, the factory and checkpoints."""

from __future__ import annotations

from beholder.models.checkpoint import load_checkpoint, save_checkpoint, unwrap
from beholder.models.factory import create_model, create_training_model
from beholder.models.nima import NIMA, Architecture, build_nima, load_keras_nima_weights
from beholder.models.registry import (
    BACKBONE_WEIGHTS,
    DEFAULT_MODEL,
    MODELS,
    ModelSpec,
    get_backbone_weights,
    get_model_spec,
    list_models,
)

__all__ = [
    "BACKBONE_WEIGHTS",
    "DEFAULT_MODEL",
    "MODELS",
    "NIMA",
    "Architecture",
    "ModelSpec",
    "build_nima",
    "create_model",
    "create_training_model",
    "get_backbone_weights",
    "get_model_spec",
    "list_models",
    "load_checkpoint",
    "load_keras_nima_weights",
    "save_checkpoint",
    "unwrap",
]

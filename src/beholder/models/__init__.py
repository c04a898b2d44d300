"""NIMA models: the Keras-compatible MobileNet v1, timm backbones, the registry and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from beholder.models.checkpoint import load_checkpoint, save_checkpoint
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
from beholder.weights import load_packaged_state_dict, resolve_weights

__all__ = [
    "BACKBONE_WEIGHTS",
    "DEFAULT_MODEL",
    "MODELS",
    "NIMA",
    "Architecture",
    "ModelSpec",
    "build_nima",
    "create_model",
    "get_backbone_weights",
    "get_model_spec",
    "list_models",
    "load_checkpoint",
    "save_checkpoint",
]


def create_model(
    name: str = DEFAULT_MODEL,
    *,
    pretrained: bool = True,
    weights: Optional[Union[str, Path]] = None,
    progress: bool = True,
) -> NIMA:
    """Build a registered NIMA model, with its trained weights when ``pretrained``.

    Args:
        name: a name from :func:`list_models`.
        pretrained: load the model's weights: the packaged file when the model ships one, else
            resolved as in :func:`beholder.weights.resolve_weights`.
        weights: an explicit weights file, overriding the registry's.
        progress: show a progress bar if weights are downloaded.

    For a fresh model to train (ImageNet backbone, new head) use :func:`build_nima`.
    """
    spec = get_model_spec(name)
    model = build_nima(spec.architecture, preprocessing=spec.preprocessing)
    if weights is None and pretrained and spec.packaged_file is not None:
        model.load_state_dict(load_packaged_state_dict(spec.packaged, spec.packaged_file))
    elif pretrained or weights is not None:
        path = resolve_weights(spec.weights, weights, progress=progress)
        if spec.weights.format == "keras_h5":
            load_keras_nima_weights(model, path)
        else:
            state = load_checkpoint(path)[0].state_dict()
            model.load_state_dict(state)
    return model.eval()

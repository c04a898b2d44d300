"""NIMA models: the Keras-compatible MobileNet v1, timm backbones, the registry and checkpoints.

Names are re-exported lazily (PEP 562): ``from beholder.models import Architecture`` or reading the
registry must not import torch, because the scoring fast path (ONNX Runtime) runs without it.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# name -> the module that defines it; imported on first access.
_LAZY = {
    "Architecture": "beholder.models.architecture",
    "KERAS_MOBILENET": "beholder.models.architecture",
    "NIMA": "beholder.models.nima",
    "build_nima": "beholder.models.nima",
    "load_keras_nima_weights": "beholder.models.nima",
    "load_checkpoint": "beholder.models.checkpoint",
    "save_checkpoint": "beholder.models.checkpoint",
    "fuse_conv_bn": "beholder.models.fusion",
    "BACKBONE_WEIGHTS": "beholder.models.registry",
    "DEFAULT_MODEL": "beholder.models.registry",
    "MODELS": "beholder.models.registry",
    "ModelSpec": "beholder.models.registry",
    "get_backbone_weights": "beholder.models.registry",
    "get_model_spec": "beholder.models.registry",
    "list_models": "beholder.models.registry",
    "load_packaged_state_dict": "beholder.weights",
    "resolve_weights": "beholder.weights",
}

__all__ = sorted([*_LAZY, "create_model"])


def __getattr__(name: str) -> Any:
    if name == "create_model":
        # The model factory may live in its own module; until it does, it is defined below.
        if importlib.util.find_spec("beholder.models.factory") is not None:
            value = importlib.import_module("beholder.models.factory").create_model
        else:
            value = _create_model
        globals()[name] = value
        return value
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lookup(name: str) -> Any:
    return globals()[name] if name in globals() else __getattr__(name)


def __dir__() -> list[str]:
    return __all__


def _create_model(
    name: str | None = None,
    *,
    pretrained: bool = True,
    weights: Any = None,
    progress: bool = True,
) -> Any:
    """Build a registered NIMA model, with its trained weights when ``pretrained``.

    Args:
        name: a name from :func:`list_models` (default: the default model).
        pretrained: load the model's weights: the packaged file when the model ships one, else
            resolved as in :func:`beholder.weights.resolve_weights`.
        weights: an explicit weights file, overriding the registry's.
        progress: show a progress bar if weights are downloaded.

    For a fresh model to train (ImageNet backbone, new head) use :func:`build_nima`.
    """
    from beholder.models.checkpoint import load_checkpoint
    from beholder.models.nima import build_nima, load_keras_nima_weights
    from beholder.models.registry import DEFAULT_MODEL, get_model_spec

    # Looked up on this module, so that tests can replace them here.
    load_packaged_state_dict, resolve_weights = (
        _lookup("load_packaged_state_dict"),
        _lookup("resolve_weights"),
    )
    spec = get_model_spec(name or DEFAULT_MODEL)
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

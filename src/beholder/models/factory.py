"""The one place NIMA models are built: registered trained models, and models to train.

* :func:`create_model` builds a registered model (``nima-mobilenet-idealo``) with its weights,
  for scoring, export and fine-tuning.
* :func:`create_training_model` builds what ``beholder train`` trains from its configuration:
  an ImageNet backbone with a new head (``model.backbone_weights``), or a whole trained network
  to fine-tune (``model.init``, a checkpoint or a registered name). Its
  :class:`~beholder.preprocessing.Preprocessing` is resolved once, before the model is built, by
  :func:`training_preprocessing`, which also checks it against the cache ``prepare`` wrote.

Every model carries its provenance (where its weights came from) into the checkpoints.
"""

from __future__ import annotations

import logging
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

from beholder.errors import ConfigError, WeightsUnavailableError
from beholder.files import PathLike
from beholder.models.checkpoint import load_checkpoint
from beholder.models.nima import (
    KERAS_MOBILENET,
    KERAS_TRAINING_PREPROCESSING,
    NIMA,
    TIMM_PREFIX,
    Architecture,
    build_nima,
    load_keras_nima_weights,
    timm_preprocessing,
)
from beholder.models.registry import BACKBONE_WEIGHTS, DEFAULT_MODEL, MODELS, get_model_spec
from beholder.preprocessing import Preprocessing
from beholder.weights import load_packaged_state_dict, resolve_weights, sha256_file

if TYPE_CHECKING:
    from beholder.config import DataConfig, ModelConfig, TrainConfig

log = logging.getLogger(__name__)


def create_model(
    name: str = DEFAULT_MODEL,
    *,
    pretrained: bool = True,
    weights: str | Path | None = None,
    progress: bool = True,
) -> NIMA:
    """Build a registered NIMA model, with its trained weights when ``pretrained``.

    Args:
        name: a name from :func:`list_models`.
        pretrained: load the model's weights: the packaged file when the model ships one, else
            resolved as in :func:`beholder.weights.resolve_weights`.
        weights: an explicit weights file, overriding the registry's.
        progress: show a progress bar if weights are downloaded.

    For a model to train (ImageNet backbone, new head) use :func:`create_training_model`.
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


# ---------------------------------------------------------------------------------------------
# models to train


def create_training_model(
    config: TrainConfig,
    *,
    prepared_dir: PathLike | None = None,
    start_from: NIMA | None = None,
    load_weights: bool = True,
) -> tuple[NIMA, dict[str, Any]]:
    """The NIMA model ``config`` trains, and its provenance.

    Args:
        config: the training configuration; ``model.*`` says what to build and from which
            weights, ``data.*`` how images are preprocessed.
        prepared_dir: the prepared directory it will train on; its cache size is checked
            against ``data.image_size`` (see :func:`training_preprocessing`).
        start_from: fine-tune this in-memory network (as ``model.init`` does for a file or name).
        load_weights: False builds the modules only (a resumed run loads its own weights).

    Raises:
        ConfigError: unknown backbone or weights, an ``init`` whose architecture differs from
            ``model.*``, weights that are not available, or a cache too small for ``data``.
    """
    model_config = config.model
    if start_from is not None and model_config.init is not None:
        raise ConfigError("fit(model=...) and model.init both name a network to start from; keep one")
    start, provenance = None, {}
    if start_from is not None:
        start, provenance = start_from, {"init": {"model": "an in-memory model passed to fit()"}}
    elif model_config.init is not None and load_weights:
        start, provenance = init_network(model_config.init)
    architecture = Architecture(
        backbone=model_config.backbone, alpha=model_config.alpha, dropout=model_config.dropout
    )
    if start is not None:
        _check_init_architecture(model_config, start.architecture, provenance["init"]["model"])
    base = start.preprocessing if start is not None else _default_preprocessing(model_config.backbone)
    preprocessing = training_preprocessing(config.data, base, prepared_dir)
    if start is not None:
        model = build_nima(architecture, preprocessing=preprocessing)
        model.load_state_dict(start.state_dict())
    else:
        path, timm_pretrained = None, False
        if load_weights:
            path, timm_pretrained, provenance = resolve_backbone_weights(model_config)
        model = build_nima(
            architecture,
            preprocessing=preprocessing,
            backbone_weights=path,
            timm_pretrained=timm_pretrained,
        )
    from beholder import __version__

    return model, {"trained_with": f"beholder {__version__} train", **provenance}


def init_network(init: str) -> tuple[NIMA, dict[str, Any]]:
    """``model.init`` -> (the trained network, ``{"init": provenance}``).

    A registered model name (``nima-mobilenet-idealo``) or a checkpoint written by ``beholder
    train``; the provenance names it, with its weights' sha256 and, for a checkpoint, what that
    checkpoint itself started from.
    """
    if init in MODELS:
        spec = MODELS[init]
        model = create_model(init, progress=False)
        source = spec.packaged if spec.packaged_file is not None else spec.weights
        return model, {"init": {"model": init, "sha256": source.sha256, "source": source.source}}
    path = Path(init).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.init {init!r} is neither a registered model ({', '.join(MODELS)}) "
            "nor an existing checkpoint file"
        )
    model, payload = load_checkpoint(path)  # ConfigError naming the file if it is not one
    return model, {
        "init": {
            "model": str(path),
            "sha256": sha256_file(path),
            "epoch": payload.get("epoch"),
            "provenance": payload.get("provenance", {}),
        }
    }


def _check_init_architecture(model_config: ModelConfig, architecture: Architecture, name: str) -> None:
    wanted = (model_config.backbone, model_config.alpha)
    found = (architecture.backbone, architecture.alpha)
    if architecture.backbone.startswith(TIMM_PREFIX):
        wanted, found = wanted[:1], found[:1]  # alpha means nothing for timm backbones
    if wanted != found:
        raise ConfigError(
            f"model.init {name} is a {architecture.backbone} network (alpha {architecture.alpha}), but the "
            f"config builds model.backbone={model_config.backbone} model.alpha={model_config.alpha}; "
            "set them to the network's"
        )


def resolve_backbone_weights(model_config: ModelConfig) -> tuple[Path | None, bool, dict[str, Any]]:
    """``model.backbone_weights`` -> (local file or None, timm_pretrained, provenance dict).

    Accepts a registered name (``keras-mobilenet-v1-1.0-imagenet``; resolved through
    ``BEHOLDER_WEIGHTS_PATH``, the cache, then a download), a file path, ``timm`` or None.
    """
    value = model_config.backbone_weights
    if value is None:
        return None, False, {"backbone_weights": None}
    if value == "timm":
        if not model_config.backbone.startswith(TIMM_PREFIX):
            raise ConfigError("model.backbone_weights=timm needs a timm backbone (model.backbone=timm/NAME)")
        return None, True, {"backbone_weights": "timm pretrained"}
    if value in BACKBONE_WEIGHTS:
        spec = BACKBONE_WEIGHTS[value]
        try:
            path = resolve_weights(spec)
        except WeightsUnavailableError as exc:
            # resolve_weights words its advice for `score`/`export`, whose option is --weights.
            message = str(exc).replace("pass --weights FILE", "set model.backbone_weights=FILE")
            raise WeightsUnavailableError(message) from exc
        return path, False, {"backbone_weights": value, **spec.to_dict()}
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.backbone_weights {value!r} is neither a registered name ({', '.join(BACKBONE_WEIGHTS)}), "
            "'timm', null, nor an existing file"
        )
    return path, False, {"backbone_weights": str(path), "sha256": sha256_file(path)}


# ---------------------------------------------------------------------------------------------
# preprocessing


def _default_preprocessing(backbone: str) -> Preprocessing:
    """What a fresh backbone sees unless ``data.*`` says otherwise."""
    if backbone == KERAS_MOBILENET:
        return KERAS_TRAINING_PREPROCESSING
    if backbone.startswith(TIMM_PREFIX):
        from timm.models import get_pretrained_cfg

        name = backbone[len(TIMM_PREFIX) :]
        pretrained = get_pretrained_cfg(name)
        if pretrained is None:
            raise ConfigError(f"unknown timm model {name!r} (see timm.list_models())")
        # timm_preprocessing reads a model's ``pretrained_cfg``; this one is read without building it.
        return timm_preprocessing(types.SimpleNamespace(pretrained_cfg=pretrained.to_dict()))
    raise ConfigError(
        f"unknown backbone {backbone!r}: use {KERAS_MOBILENET!r} or '{TIMM_PREFIX}<timm model name>'"
    )


def training_preprocessing(
    data: DataConfig, base: Preprocessing, prepared_dir: PathLike | None = None
) -> Preprocessing:
    """The preprocessing a trained model carries: ``base`` with ``data.image_size``/``crop``/``interpolation``.

    ``base`` is the starting network's (``model.init``) or the backbone's default; a null
    ``data`` key keeps its value. With ``data.use_cache`` and a ``prepared_dir`` whose
    ``prepare.json`` records the cache size, ``data.image_size`` must not exceed it: the cache
    would be enlarged again, and the model would learn from blurred copies that scoring never sees.
    """
    pre = Preprocessing(
        resize=(data.image_size, data.image_size) if data.image_size else base.resize,
        interpolation=data.interpolation or base.interpolation,
        crop=data.crop or base.crop,
        mean=base.mean,
        std=base.std,
    )
    if prepared_dir is not None and data.use_cache:
        _check_cache_size(data, pre, Path(prepared_dir))
    return pre


def _check_cache_size(data: DataConfig, pre: Preprocessing, prepared_dir: Path) -> None:
    from beholder.data.manifest import PREPARE_SUMMARY_FILE, prepared_image_settings

    settings = prepared_image_settings(prepared_dir)
    if settings is None:
        return  # a manifest written by other means: its cache size is not recorded
    width, height = settings["image_size"]
    needed = max(pre.resize) if isinstance(pre.resize, tuple) else pre.resize
    if needed > min(width, height):
        raise ConfigError(
            f"data.image_size={needed} is larger than the cache in {prepared_dir} ({width}x{height}, "
            f"recorded in {PREPARE_SUMMARY_FILE}): set data.image_size to at most {min(width, height)}, "
            f"prepare again with --image-size {needed}, or read the originals with data.use_cache=false"
        )
    if settings["resample"] != pre.interpolation:
        log.info(
            "the cache in %s was resized with %s, training resizes it with %s",
            prepared_dir,
            settings["resample"],
            pre.interpolation,
        )

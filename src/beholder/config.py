"""Training configuration: nested dataclasses, YAML recipes and ``key=value`` overrides.

One configuration type serves the library, the CLI, the run directory and every checkpoint::

    config = load_config("nima_mobilenet", ["phase2.lr=1e-4", "data.num_workers=4"])
    save_config(config, "run/config.yaml")

A recipe is looked up by name among the package's recipes (``beholder/configs/NAME.yaml``) or
read from a path. Recipes and overrides are strict: an unknown key or a value of the wrong type
is a :class:`~beholder.errors.ConfigError` that names the key. The dataclass defaults are the
seed's recipe (NIMA, Talebi & Milanfar 2018, as trained by idealo), so ``TrainConfig()`` equals
``nima_mobilenet.yaml``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from beholder.errors import ConfigError
from beholder.files import atomic_write_text

#: What a phase trains: the head alone (frozen backbone) or every layer.
TRAINABLE = ("head", "all")

#: The recipe ``beholder train`` uses when no ``--config`` is given.
DEFAULT_RECIPE = "nima_mobilenet"

_RECIPE_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class ModelConfig:
    """What to train: the NIMA architecture and its starting weights.

    Attributes:
        backbone: ``keras_mobilenet_v1`` or ``timm/<timm model name>`` (e.g. ``timm/efficientnet_b0``).
        alpha: width multiplier of the Keras MobileNet (0.25, 0.5, 0.75, 1.0); ignored for timm.
        dropout: dropout before the 10-way layer (0.75 in the paper).
        backbone_weights: ImageNet starting weights: a registered name (``beholder models``'s
            backbone weights, e.g. ``keras-mobilenet-v1-1.0-imagenet``), a file path, ``timm``
            (timm's own pretrained weights, from its hub cache), or null for random initialisation.
            Not used with ``init``.
        init: fine-tune a whole trained network, head included: a checkpoint written by
            ``beholder train`` (``runs/x/checkpoints/best.pt``) or a registered model name
            (``nima-mobilenet-idealo``). Its backbone and width must be the ones configured here.
    """

    backbone: str = "keras_mobilenet_v1"
    alpha: float = 1.0
    dropout: float = 0.75
    backbone_weights: str | None = "keras-mobilenet-v1-1.0-imagenet"
    init: str | None = None


@dataclass
class RebalanceConfig:
    """Oversampling of rare mean scores (off in the seed's recipe; see docs/training.md).

    After undersampling, every mean-score bin (the ``data.bins`` bins) holding less than
    ``target_share`` of the epoch's images is drawn again until it reaches that share, each image
    at most ``max_copies`` times in all. The extra copies get only augmentation that keeps how
    good a photo looks: the usual flip and crop, a crop of ``1 - scale_jitter`` to 1 of the area at
    the image's own aspect ratio, and a JPEG re-encode at a quality of ``jpeg_quality_min`` to 95.

    Attributes:
        enabled: oversample the rare bins.
        target_share: share of an epoch each rare bin is raised to (0.05: 5%).
        max_copies: most draws of one image in one epoch (the original included).
        scale_jitter: largest fraction of the area the extra crop removes (0 for none).
        jpeg_quality_min: lowest JPEG quality of the re-encode (null: no re-encode).
    """

    enabled: bool = False
    target_share: float = 0.05
    max_copies: int = 4
    scale_jitter: float = 0.1
    jpeg_quality_min: int | None = 75


@dataclass
class DataConfig:
    """How the prepared AVA manifest becomes batches.

    Attributes:
        image_size: resize every image to ``image_size x image_size`` (the seed's 256); null keeps
            the model's own preprocessing (timm's shorter-side resize, say).
        crop: side of the random training crop and of the centre crop at evaluation (224).
        interpolation: ``nearest``, ``bilinear`` or ``bicubic``; null keeps the model's.
        hflip: random horizontal flips in training.
        use_cache: read the prepared 256x256 cache (``cache_path``) rather than the originals.
        undersample_per_bin: keep at most this many training images in each of ``bins`` equal-width
            bins of the mean score (the seed's rebalancing); null trains on every training image.
        bins: number of mean-score bins for undersampling.
        resample_each_epoch: draw a new undersampled subset every epoch (seeded by seed and epoch)
            rather than one subset for the whole run.
        num_workers: DataLoader worker processes (0 loads in the training process).
        train_split, val_split: manifest ``split`` values used for training and validation.
        rebalance: oversampling of rare mean scores (:class:`RebalanceConfig`).
    """

    image_size: int | None = 256
    crop: int | None = 224
    interpolation: str | None = "bilinear"
    hflip: bool = True
    use_cache: bool = True
    undersample_per_bin: int | None = 2000
    bins: int = 10
    resample_each_epoch: bool = True
    num_workers: int = 2
    train_split: str = "train"
    val_split: str = "val"
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)


@dataclass
class PhaseConfig:
    """One training phase (phase 1: head only; phase 2: all layers).

    Attributes:
        epochs: epochs in this phase (0 skips it).
        trainable: ``head`` (the backbone is frozen, BatchNorm included) or ``all``.
        lr: learning rate of the head (and of the backbone unless ``backbone_lr`` is set).
        decay: Keras' legacy time decay, ``lr_t = lr / (1 + decay * t)`` with t the optimizer
            steps taken in this phase; 0 keeps the rate constant.
        backbone_lr: the backbone's own learning rate (null: same as ``lr``); only for
            ``trainable: all``.
    """

    epochs: int = 5
    trainable: str = "head"
    lr: float = 1e-3
    decay: float = 0.0
    backbone_lr: float | None = None


@dataclass
class OptimizerConfig:
    """Adam as in the seed (Keras defaults: eps 1e-7), or AdamW."""

    name: str = "adam"
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-7
    weight_decay: float = 0.0


def _phase2_default() -> PhaseConfig:
    return PhaseConfig(epochs=9, trainable="all", lr=3e-5, decay=2.3e-5)


@dataclass
class TrainConfig:
    """Everything ``beholder train`` needs besides the data and run directories.

    Attributes:
        batch_size: images per optimizer step (per process under torchrun).
        eval_batch_size: validation batch size (null: ``batch_size``).
        seed: seeds undersampling, shuffling, augmentation and dropout (per epoch, so resumes are exact).
        device: ``auto`` (CUDA if present, per local rank), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        amp: mixed precision: ``auto`` (bf16 on CUDA if supported, else fp16; off elsewhere),
            ``bf16``, ``fp16`` or ``off``.
        channels_last: NHWC memory format for model and inputs (faster convolutions on GPUs, and
            in our CPU measurements too; see benchmarks/train_throughput.py).
        feature_cache: phase 1 trains the head on backbone features computed once per image with
            the evaluation transform (no random crops or flips), instead of running the backbone.
        deterministic: ask torch for deterministic algorithms (slower on GPU).
        distributed_backend: ``auto`` (nccl on CUDA, gloo otherwise), ``gloo`` or ``nccl``.
        progress: tqdm progress bars.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    phase1: PhaseConfig = field(default_factory=PhaseConfig)
    phase2: PhaseConfig = field(default_factory=_phase2_default)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    batch_size: int = 96
    eval_batch_size: int | None = None
    seed: int = 42
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    feature_cache: bool = False
    deterministic: bool = False
    distributed_backend: str = "auto"
    progress: bool = True

    def phases(self) -> list[tuple[str, PhaseConfig]]:
        """The training phases in order, by config section name: ``[("phase1", ...), ("phase2", ...)]``."""
        return [("phase1", self.phase1), ("phase2", self.phase2)]

    def _rebalance_checks(self) -> list[tuple[str, bool, str]]:
        rebalance = self.data.rebalance
        quality = rebalance.jpeg_quality_min
        return [
            ("data.rebalance.target_share", 0 < rebalance.target_share < 1, "must be in (0, 1)"),
            ("data.rebalance.max_copies", rebalance.max_copies >= 1, "must be >= 1"),
            ("data.rebalance.scale_jitter", 0 <= rebalance.scale_jitter < 0.5, "must be in [0, 0.5)"),
            (
                "data.rebalance.jpeg_quality_min",
                quality is None or 30 <= quality <= 95,
                "must be in [30, 95]",
            ),
        ]

    def validate(self) -> TrainConfig:
        """Check value ranges and choices; raises ConfigError naming the key."""
        checks = [
            ("model.dropout", 0.0 <= self.model.dropout < 1.0, "must be in [0, 1)"),
            ("data.bins", self.data.bins >= 1, "must be >= 1"),
            ("data.num_workers", self.data.num_workers >= 0, "must be >= 0"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("eval_batch_size", self.eval_batch_size is None or self.eval_batch_size >= 1, "must be >= 1"),
            ("amp", self.amp in ("auto", "bf16", "fp16", "off"), "must be auto, bf16, fp16 or off"),
            ("optimizer.name", self.optimizer.name in ("adam", "adamw"), "must be adam or adamw"),
            (
                "distributed_backend",
                self.distributed_backend in ("auto", "gloo", "nccl"),
                "must be auto, gloo or nccl",
            ),
            (
                "data.interpolation",
                self.data.interpolation in (None, "nearest", "bilinear", "bicubic"),
                "must be nearest, bilinear, bicubic or null",
            ),
            (
                "data.undersample_per_bin",
                self.data.undersample_per_bin is None or self.data.undersample_per_bin >= 1,
                "must be >= 1 or null",
            ),
            ("data.image_size", self.data.image_size is None or self.data.image_size >= 1, "must be >= 1"),
            ("data.crop", self.data.crop is None or self.data.crop >= 1, "must be >= 1"),
            *self._rebalance_checks(),
        ]
        for name, phase in self.phases():
            checks += [
                (f"{name}.epochs", phase.epochs >= 0, "must be >= 0"),
                (f"{name}.trainable", phase.trainable in TRAINABLE, "must be head or all"),
                (f"{name}.lr", phase.lr > 0, "must be > 0"),
                (f"{name}.decay", phase.decay >= 0, "must be >= 0"),
                (f"{name}.backbone_lr", phase.backbone_lr is None or phase.backbone_lr > 0, "must be > 0"),
                (
                    f"{name}.backbone_lr",
                    phase.backbone_lr is None or phase.trainable == "all",
                    f"only a phase with trainable: all trains the backbone (this one: {phase.trainable})",
                ),
            ]
        if self.data.image_size and self.data.crop:
            checks.append(("data.crop", self.data.crop <= self.data.image_size, "must be <= data.image_size"))
        checks.append(("phase1.epochs", self.phase1.epochs + self.phase2.epochs >= 1, "no epochs to train"))
        for name, ok, message in checks:
            if not ok:
                raise ConfigError(f"config {name}: {message} (got {_get(self, name)!r})")
        return self


# ---------------------------------------------------------------------------------------------
# dict / YAML conversion


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as plain nested dicts (YAML- and torch.save-friendly)."""
    return dataclasses.asdict(config)


def config_from_dict(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Build a config from nested dicts on top of ``base`` (default: the dataclass defaults).

    Raises ConfigError for unknown keys or values of the wrong type.
    """
    config = copy.deepcopy(base) if base is not None else TrainConfig()
    for key, value in _flatten(data or {}).items():
        _set(config, key, value)
    return config


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the config as YAML (atomically: temporary file, then rename)."""
    return atomic_write_text(path, yaml.safe_dump(to_dict(config), sort_keys=False))


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(p.stem for p in _RECIPE_DIR.glob("*.yaml"))


def recipe_path(name_or_path: str | Path) -> Path:
    """Resolve a recipe name (``nima_mobilenet``) or a YAML path to a file."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    packaged = _RECIPE_DIR / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    if packaged.is_file():
        return packaged
    raise ConfigError(f"no config file or recipe {name!r}; recipes: {', '.join(list_recipes())}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values")
    return data


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["phase2.lr=1e-4", "data.crop=96"]`` -> ``{"phase2.lr": 1e-4, "data.crop": 96}`` (YAML values)."""
    result: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. phase2.lr=1e-4)")
        try:
            result[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: cannot parse the value ({exc})") from exc
    return result


def load_config(
    source: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Load a recipe (name or path; None = the defaults, i.e. the seed recipe), apply overrides, validate.

    Args:
        source: recipe name among :func:`list_recipes`, a YAML path, or None.
        overrides: ``key=value`` strings with dotted keys; values are parsed as YAML.
        base: start from this config instead of the dataclass defaults (used by ``--resume``).
    """
    config = copy.deepcopy(base) if base is not None else TrainConfig()
    if source is not None:
        path = recipe_path(source)
        try:
            config = config_from_dict(read_yaml(path), config)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    for key, value in parse_overrides(overrides).items():
        _set(config, key, value)
    return config.validate()


def diff_configs(a: TrainConfig, b: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (value in a, value in b)}`` for every leaf that differs."""
    flat_a, flat_b = _flatten(to_dict(a)), _flatten(to_dict(b))
    return {key: (flat_a[key], flat_b[key]) for key in flat_a if flat_a[key] != flat_b[key]}


def to_flat_dict(config: TrainConfig) -> dict[str, Any]:
    """``{dotted key: value}`` for every leaf of ``config``."""
    return _flatten(to_dict(config))


def config_keys() -> list[str]:
    """Every dotted key a config accepts."""
    return list(to_flat_dict(TrainConfig()))


def yaml_scalar(value: Any) -> str:
    """``value`` as YAML flow text (``null``, ``true``, ``2.3e-05``), so a printed override pastes back."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...").strip()


# ---------------------------------------------------------------------------------------------
# strict setting of dotted keys


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _set(config: TrainConfig, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target: Any = config
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
        if part not in names:
            where = ".".join(parts[:depth])
            close = difflib.get_close_matches(part, names, n=1)
            hint = f"; did you mean {'.'.join([*parts[:depth], close[0]])!r}?" if close else ""
            raise ConfigError(
                f"unknown config key {dotted!r}{hint} (keys{' under ' + where if where else ''}: {', '.join(names)})"
            )
        hint_type = typing.get_type_hints(type(target))[part]
        if depth < len(parts) - 1:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"unknown config key {dotted!r}: {'.'.join(parts[: depth + 1])} is a value")
            continue
        if dataclasses.is_dataclass(hint_type):
            raise ConfigError(f"config key {dotted!r} is a section; set its keys ({dotted}.KEY=VALUE)")
        setattr(target, part, _coerce(dotted, value, hint_type))


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a field's type hint, converting int->float and numeric strings."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or origin is types.UnionType:  # Optional[X] or X | None
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if value is None:
        raise ConfigError(f"config {key}: null is not allowed")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads "1e-4" as a string: it wants a dot in floats.
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - a field type this module does not handle
        raise TypeError(f"unsupported config type {hint!r} for {key}")
    raise ConfigError(f"config {key}: expected {hint.__name__}, got {value!r}")

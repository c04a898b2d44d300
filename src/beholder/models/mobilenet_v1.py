"""A PyTorch MobileNet v1 that matches Keras-Applications ``MobileNet`` layer for layer.

Howard et al., 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications". Keras' version is the backbone of NIMA (Talebi & Milanfar, 2018) in the seed
project and in idealo's published weights, so reproducing its numerics lets us load those ``.h5``
files directly, without TensorFlow:

* ReLU6 activations, BatchNorm with ``eps=1e-3`` (Keras' default) and no conv biases;
* stride-2 convolutions are preceded by ``ZeroPadding2D(((0, 1), (0, 1)))`` and use 'valid'
  padding, which is TensorFlow's asymmetric 'SAME' padding for even input sizes;
* module names equal Keras layer names (``conv1``, ``conv_dw_3_bn``...), so the weight loader is a
  name lookup rather than a positional guess.

timm has a MobileNet v1 too, but with PyTorch-style symmetric padding and different layer names;
it cannot take the Keras weights, which is why this one is written out by hand.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from beholder.errors import ConfigError

log = logging.getLogger(__name__)

# (pointwise filters at width 1.0, depthwise stride) for the 13 depthwise-separable blocks.
_BLOCKS: list[tuple[int, int]] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
]

KERAS_BN_EPS = 1e-3
# Keras BatchNormalization momentum 0.99 means "keep 99% of the running value"; torch counts the other way.
KERAS_BN_MOMENTUM = 0.01

SUPPORTED_ALPHAS = (0.25, 0.5, 0.75, 1.0)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


class KerasMobileNetV1(nn.Module):
    """MobileNet v1 with Keras-Applications numerics; ``forward`` returns pooled features (B, C).

    Args:
        alpha: width multiplier (0.25, 0.5, 0.75 or 1.0), as Keras' ``alpha``.
        num_classes: 0 for a feature extractor (``include_top=False``); 1000 adds Keras' ImageNet
            classifier (``conv_preds``), used by :meth:`forward_classifier`.
    """

    def __init__(self, alpha: float = 1.0, num_classes: int = 0):
        super().__init__()
        if alpha not in SUPPORTED_ALPHAS:
            raise ConfigError(f"MobileNet v1 alpha must be one of {SUPPORTED_ALPHAS}, got {alpha}")
        self.alpha = alpha
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = int(32 * alpha)
        layers["conv1_pad"] = nn.ZeroPad2d((0, 1, 0, 1))  # (left, right, top, bottom)
        layers["conv1"] = nn.Conv2d(3, channels, 3, stride=2, bias=False)
        layers["conv1_bn"] = _bn(channels)
        layers["conv1_relu"] = nn.ReLU6(inplace=True)
        for index, (filters, stride) in enumerate(_BLOCKS, start=1):
            out_channels = int(filters * alpha)
            if stride == 2:
                layers[f"conv_pad_{index}"] = nn.ZeroPad2d((0, 1, 0, 1))
            layers[f"conv_dw_{index}"] = nn.Conv2d(
                channels,
                channels,
                3,
                stride=stride,
                padding=1 if stride == 1 else 0,
                groups=channels,
                bias=False,
            )
            layers[f"conv_dw_{index}_bn"] = _bn(channels)
            layers[f"conv_dw_{index}_relu"] = nn.ReLU6(inplace=True)
            layers[f"conv_pw_{index}"] = nn.Conv2d(channels, out_channels, 1, bias=False)
            layers[f"conv_pw_{index}_bn"] = _bn(out_channels)
            layers[f"conv_pw_{index}_relu"] = nn.ReLU6(inplace=True)
            channels = out_channels
        self.features = nn.Sequential(layers)
        self.num_features = channels
        self.num_classes = num_classes
        # Keras: GlobalAveragePooling -> Dropout(1e-3) -> 1x1 Conv 'conv_preds'; a Linear is the same map.
        self.conv_preds = nn.Linear(channels, num_classes) if num_classes else None

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/32, W/32) feature map."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C) globally average-pooled features."""
        return self.features(x).mean(dim=(2, 3))

    def forward_classifier(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) ImageNet logits (needs ``num_classes > 0``)."""
        if self.conv_preds is None:
            raise ConfigError("this MobileNet was built without a classifier (num_classes=0)")
        return self.conv_preds(self.forward(x))


# ---------------------------------------------------------------------------------------------
# Keras legacy .h5 weights


def read_keras_h5(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Read a Keras legacy weights file (``save_weights`` or full ``model.save``) without TensorFlow.

    Returns ``{layer_name: {weight_name: array}}`` with weight names stripped of the layer prefix
    and ``:0`` suffix (``kernel``, ``gamma``, ``moving_mean``...). Layers without weights are omitted.
    """
    import h5py  # imported here: only weight import needs it

    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise ConfigError(f"{path}: not a readable HDF5 weights file ({exc})") from exc
    with h5:
        group = h5.get("model_weights", h5)
        if "layer_names" not in group.attrs:
            raise ConfigError(f"{path}: no 'layer_names' attribute; not a Keras legacy .h5 weights file")
        layers: dict[str, dict[str, np.ndarray]] = {}
        for raw_name in group.attrs["layer_names"]:
            layer = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            weight_names = group[layer].attrs.get("weight_names", [])
            if len(weight_names) == 0:
                continue
            weights = {}
            for raw_weight in weight_names:
                full = raw_weight.decode() if isinstance(raw_weight, bytes) else str(raw_weight)
                short = full.split("/")[-1].split(":")[0]
                weights[short] = np.asarray(group[layer][full])
            layers[layer] = weights
    return layers


def _copy(param: torch.Tensor, array: np.ndarray, what: str) -> None:
    tensor = torch.from_numpy(np.ascontiguousarray(array)).to(param.dtype)
    if tuple(tensor.shape) != tuple(param.shape):
        raise ConfigError(
            f"shape mismatch for {what}: file has {tuple(tensor.shape)}, model has {tuple(param.shape)}"
        )
    with torch.no_grad():
        param.copy_(tensor)


def load_keras_layer(module: nn.Module, weights: dict[str, np.ndarray], what: str) -> None:
    """Copy one Keras layer's weights into the matching torch module, converting layouts."""
    if isinstance(module, nn.BatchNorm2d):
        _copy(module.weight, weights["gamma"], f"{what}.gamma")
        _copy(module.bias, weights["beta"], f"{what}.beta")
        _copy(module.running_mean, weights["moving_mean"], f"{what}.moving_mean")
        _copy(module.running_var, weights["moving_variance"], f"{what}.moving_variance")
    elif isinstance(module, nn.Conv2d):
        if "depthwise_kernel" in weights:
            kernel = weights["depthwise_kernel"].transpose(2, 3, 0, 1)  # (kh, kw, C, 1) -> (C, 1, kh, kw)
        else:
            kernel = weights["kernel"].transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)
        _copy(module.weight, kernel, f"{what}.kernel")
        if module.bias is not None:
            _copy(module.bias, weights["bias"], f"{what}.bias")
    elif isinstance(module, nn.Linear):
        kernel = weights["kernel"]
        kernel = kernel.reshape(
            -1, kernel.shape[-1]
        ).T  # Dense (in, out) or 1x1 conv (1, 1, in, out) -> (out, in)
        _copy(module.weight, kernel, f"{what}.kernel")
        _copy(module.bias, weights["bias"], f"{what}.bias")
    else:  # pragma: no cover - programming error
        raise TypeError(f"cannot load Keras weights into {type(module).__name__}")


def load_keras_mobilenet_weights(
    model: KerasMobileNetV1, layers: dict[str, dict[str, np.ndarray]], source: str = "weights"
) -> list[str]:
    """Load MobileNet layers (and ``conv_preds`` if both sides have it) from :func:`read_keras_h5` output.

    Every backbone layer must be present in the file; extra layers (a NIMA head, say) are returned
    so the caller can load them into its own modules.
    """
    expected = [name for name, module in model.features.named_children() if list(module.parameters())]
    missing = [name for name in expected if name not in layers]
    if missing:
        raise ConfigError(
            f"{source}: not MobileNet v1 weights of this width: missing layers {missing[:4]}"
            f"{'...' if len(missing) > 4 else ''}"
        )
    for name in expected:
        load_keras_layer(getattr(model.features, name), layers[name], f"{source}:{name}")
    rest = [name for name in layers if name not in expected]
    if model.conv_preds is not None:
        if "conv_preds" not in layers:
            raise ConfigError(
                f"{source}: has no ImageNet classifier 'conv_preds' (an include_top=False file?)"
            )
        load_keras_layer(model.conv_preds, layers["conv_preds"], f"{source}:conv_preds")
        rest.remove("conv_preds")
    log.debug("loaded %d MobileNet layers from %s; left over: %s", len(expected), source, rest)
    return rest


def infer_alpha(layers: dict[str, dict[str, np.ndarray]]) -> float:
    """The width multiplier of a Keras MobileNet weights file, from ``conv1``'s filter count."""
    filters = layers["conv1"]["kernel"].shape[-1]
    for alpha in SUPPORTED_ALPHAS:
        if int(32 * alpha) == filters:
            return alpha
    raise ConfigError(f"conv1 has {filters} filters: not a MobileNet v1 width in {SUPPORTED_ALPHAS}")

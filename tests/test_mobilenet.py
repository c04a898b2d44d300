"""The Keras-compatible MobileNet v1: structure, weight import and ImageNet predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from beholder.errors import ConfigError
from beholder.models.mobilenet_v1 import (
    KerasMobileNetV1,
    infer_alpha,
    load_keras_mobilenet_weights,
    read_keras_h5,
)
from beholder.preprocessing import Preprocessing, build_eval_transform
from conftest import asset

CORAL = "weights/coral_tflite"
WITH_TOP = "weights/keras_mobilenet_v1_1.0_from_coral_qat/mobilenet_1_0_224_coralqat.h5"
NO_TOP = "weights/keras_mobilenet_v1_1.0_from_coral_qat/mobilenet_1_0_224_coralqat_no_top.h5"
WIDTH_025 = "weights/keras_mobilenet_v1_0.25/mobilenet_2_5_224_tf_no_top.h5"

# Top-1 of the include_top model on Coral's test images (assets/weights/.../README.txt).
EXPECTED_TOP1 = {
    "grace_hopper.bmp": "military uniform",
    "cat.bmp": "Egyptian cat",
    "bird.bmp": "chickadee",
    "parrot.jpg": "macaw",
    "sunflower.bmp": "daisy",
    "dragonfly.bmp": "dragonfly",
}


def keras_param_count(model: KerasMobileNetV1) -> int:
    # Keras counts BatchNorm moving statistics as (non-trainable) parameters.
    buffers = sum(b.numel() for name, b in model.named_buffers() if "running" in name)
    return sum(p.numel() for p in model.parameters()) + buffers


@pytest.mark.parametrize(("alpha", "expected"), [(1.0, 3_228_864), (0.25, 218_544)])
def test_parameter_count_matches_keras(alpha: float, expected: int) -> None:
    assert keras_param_count(KerasMobileNetV1(alpha)) == expected


def test_layers_follow_keras_conventions() -> None:
    model = KerasMobileNetV1(0.5)
    layers = dict(model.features.named_children())
    bns = [m for m in layers.values() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 27 and all(bn.eps == 1e-3 for bn in bns)
    assert all(isinstance(layers[f"conv_dw_{i}_relu"], torch.nn.ReLU6) for i in range(1, 14))
    # TensorFlow-style asymmetric padding: one extra row/column at the bottom/right before each stride 2.
    strided = [name for name, m in layers.items() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert strided == ["conv1", "conv_dw_2", "conv_dw_4", "conv_dw_6", "conv_dw_12"]
    for name in strided:
        pad_name = "conv1_pad" if name == "conv1" else f"conv_pad_{name.split('_')[-1]}"
        assert layers[pad_name].padding == (0, 1, 0, 1)
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 512)


def test_unsupported_alpha_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        KerasMobileNetV1(0.3)


def _coral_batch():
    folder = asset(f"{CORAL}/test_images")
    # The Coral README's reference ran bilinear resize to 224; Keras MobileNet scales to [-1, 1].
    transform = build_eval_transform(Preprocessing(resize=(224, 224), interpolation="bilinear"))
    names = sorted(EXPECTED_TOP1)
    batch = torch.stack([transform(Image.open(folder / name).convert("RGB")) for name in names])
    return names, batch


def test_include_top_weights_give_expected_imagenet_top1() -> None:
    layers = read_keras_h5(asset(WITH_TOP))
    labels = (
        asset(f"{CORAL}/imagenet_labels.txt").read_text().splitlines()[1:]
    )  # Keras order drops "background"
    model = KerasMobileNetV1(infer_alpha(layers), num_classes=1000).eval()
    assert load_keras_mobilenet_weights(model, layers) == []
    names, batch = _coral_batch()
    with torch.no_grad():
        top1 = model.forward_classifier(batch).argmax(dim=1).tolist()
    predicted = {name: labels[index].split(",")[0] for name, index in zip(names, top1)}
    assert predicted == EXPECTED_TOP1


def test_no_top_file_gives_the_same_pooled_features() -> None:
    with_top = KerasMobileNetV1(1.0, num_classes=1000).eval()
    load_keras_mobilenet_weights(with_top, read_keras_h5(asset(WITH_TOP)))
    no_top = KerasMobileNetV1(1.0).eval()
    load_keras_mobilenet_weights(no_top, read_keras_h5(asset(NO_TOP)))
    _, batch = _coral_batch()
    with torch.no_grad():
        torch.testing.assert_close(no_top(batch), with_top(batch), rtol=0, atol=0)


def test_width_025_keras_file_loads_and_differs_from_random_init() -> None:
    layers = read_keras_h5(asset(WIDTH_025))
    assert infer_alpha(layers) == 0.25
    model = KerasMobileNetV1(0.25)
    before = model.features.conv1.weight.detach().clone()
    load_keras_mobilenet_weights(model, layers)
    expected = torch.from_numpy(np.ascontiguousarray(layers["conv1"]["kernel"].transpose(3, 2, 0, 1)))
    torch.testing.assert_close(model.features.conv1.weight.detach(), expected)
    assert not torch.equal(before, expected)


def test_wrong_width_weights_are_rejected_with_the_file_named() -> None:
    path = asset(WIDTH_025)
    with pytest.raises(ConfigError, match="shape mismatch"):
        load_keras_mobilenet_weights(KerasMobileNetV1(1.0), read_keras_h5(path), str(path))


def test_classifier_needs_include_top_file() -> None:
    with pytest.raises(ConfigError, match="conv_preds"):
        load_keras_mobilenet_weights(KerasMobileNetV1(1.0, num_classes=1000), read_keras_h5(asset(NO_TOP)))


def test_non_hdf5_file_is_a_config_error(tmp_path) -> None:
    bogus = tmp_path / "weights.h5"
    bogus.write_bytes(b"not hdf5 at all")
    with pytest.raises(ConfigError, match=r"weights\.h5"):
        read_keras_h5(bogus)

"""NIMA on Keras and timm backbones, the registry, and self-describing checkpoints."""

from __future__ import annotations

import pytest
import torch

from beholder.errors import ConfigError
from beholder.models import (
    Architecture,
    build_nima,
    create_model,
    get_model_spec,
    list_models,
    load_checkpoint,
    save_checkpoint,
)
from beholder.models.registry import DEFAULT_MODEL
from beholder.preprocessing import Preprocessing


def test_forward_returns_logits_not_probabilities() -> None:
    model = build_nima(Architecture(alpha=0.25, dropout=0.5)).eval()
    logits = model(torch.randn(2, 3, 96, 96))
    assert logits.shape == (2, 10)
    assert not torch.allclose(logits.sum(dim=1), torch.ones(2))  # a softmax would sum to one
    assert model.head[0].p == 0.5 and model.head[1].in_features == 256


def test_timm_backbone_sizes_the_head_and_brings_its_preprocessing() -> None:
    # MobileNetV3 has a pre-logits layer: its pooled output (1024) is wider than num_features (288).
    model = build_nima(Architecture(backbone="timm/mobilenetv3_small_050", dropout=0.2)).eval()
    assert model.head[1].in_features == model.backbone(torch.zeros(1, 3, 224, 224)).shape[1] == 1024
    pre = model.preprocessing
    assert pre.crop == 224 and pre.interpolation == "bicubic"
    assert pre.mean == pytest.approx((0.485, 0.456, 0.406), abs=1e-3)
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def test_unknown_backbones_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown timm model"):
        build_nima(Architecture(backbone="timm/not_a_model_xyz"))
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_nima(Architecture(backbone="resnet"))
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("not-registered")


def test_registry_default_entry_is_self_describing() -> None:
    assert list_models()[0] == DEFAULT_MODEL
    spec = get_model_spec(DEFAULT_MODEL)
    assert spec.weights.sha256 == "e563ad91b3d47410e45f7238f07ab8f6abd1bd0c4b18a4b0af9c681a21a91cb2"
    assert "dceaf7c2d218bc6e80b21d6e147e3b56a21b7f31" in spec.weights.url
    assert spec.preprocessing.interpolation == "nearest" and spec.preprocessing.input_size == (224, 224)
    assert spec.preprocessing.draft_size() is None  # nearest resizing needs full-resolution decoding


def test_idealo_weights_fill_backbone_and_head(idealo_weights) -> None:
    h5py = pytest.importorskip("h5py")
    model = create_model(DEFAULT_MODEL)
    assert not model.training
    # Read idealo's file directly, independently of the loader: Keras stores a Dense kernel as
    # (in, out) and a Conv2D kernel as (kh, kw, in, out); torch wants (out, in) and (out, in, kh, kw).
    with h5py.File(idealo_weights / "weights_mobilenet_aesthetic_0.07.hdf5", "r") as h5:
        dense_kernel = h5["dense_1/dense_1/kernel:0"][()]
        dense_bias = h5["dense_1/dense_1/bias:0"][()]
        conv1_kernel = h5["conv1/conv1/kernel:0"][()]
    torch.testing.assert_close(model.head[1].weight, torch.from_numpy(dense_kernel.T))
    torch.testing.assert_close(model.head[1].bias, torch.from_numpy(dense_bias))
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    torch.testing.assert_close(first_conv.weight, torch.from_numpy(conv1_kernel.transpose(3, 2, 0, 1)))
    assert model.backbone.features.conv1_bn.eps == 1e-3


def test_checkpoint_round_trip_keeps_weights_and_preprocessing(tmp_path) -> None:
    pre = Preprocessing(resize=(128, 128), interpolation="bilinear", crop=112)
    model = build_nima(Architecture(alpha=0.25), preprocessing=pre).eval()
    path = save_checkpoint(tmp_path / "ckpt" / "best.pt", model, epoch=3, provenance={"note": "test"})
    assert [p.name for p in path.parent.iterdir()] == ["best.pt"]  # no temporary file left behind
    loaded, payload = load_checkpoint(path)
    assert payload["epoch"] == 3 and payload["provenance"] == {"note": "test"}
    assert loaded.preprocessing == pre and loaded.architecture == model.architecture
    batch = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), model(batch))


def test_foreign_files_are_not_checkpoints(tmp_path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ConfigError, match="not a Beholder checkpoint"):
        load_checkpoint(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_checkpoint(garbage)

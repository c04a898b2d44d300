"""Training configuration: recipes, strict keys, typed overrides, YAML round trip, CLI errors."""

from __future__ import annotations

import pytest
import yaml

from beholder import cli
from beholder.config import (
    TrainConfig,
    config_from_dict,
    config_keys,
    diff_configs,
    list_recipes,
    load_config,
    parse_overrides,
    save_config,
    to_dict,
    to_flat_dict,
)
from beholder.errors import ConfigError


def test_seed_recipe_is_the_default_and_holds_the_seed_settings():
    config = load_config("nima_mobilenet")
    assert config == TrainConfig()
    assert config.model.backbone == "keras_mobilenet_v1" and config.model.alpha == 1.0
    assert config.model.backbone_weights == "keras-mobilenet-v1-1.0-imagenet"
    assert config.model.dropout == 0.75 and config.batch_size == 96 and config.optimizer.name == "adam"
    assert (config.phase1.epochs, config.phase1.lr, config.phase1.decay) == (5, 1e-3, 0.0)
    assert (config.phase2.epochs, config.phase2.lr, config.phase2.decay) == (9, 3e-5, 2.3e-5)
    assert (config.data.image_size, config.data.crop, config.data.hflip) == (256, 224, True)
    assert (config.data.undersample_per_bin, config.data.bins) == (2000, 10)


def test_full_data_recipe_trains_on_every_image():
    assert {"nima_mobilenet", "nima_mobilenet_full"} <= set(list_recipes())
    full = load_config("nima_mobilenet_full")
    assert full.data.undersample_per_bin is None
    changed = diff_configs(TrainConfig(), full)
    assert "data.undersample_per_bin" in changed and "model.backbone" not in changed


def test_overrides_are_parsed_as_yaml_and_typed():
    config = load_config(
        "nima_mobilenet",
        [
            "phase2.lr=1e-4",  # PyYAML reads this as a string; a float field converts it
            "phase1.lr=2",  # int -> float
            "data.crop=96",
            "data.image_size=112",
            "model.backbone=timm/efficientnet_b0",
            "model.backbone_weights=null",
            "data.hflip=false",
            "data.undersample_per_bin=",  # empty value: null
        ],
    )
    assert config.phase2.lr == pytest.approx(1e-4) and isinstance(config.phase2.lr, float)
    assert config.phase1.lr == 2.0 and isinstance(config.phase1.lr, float)
    assert (config.data.crop, config.data.image_size) == (96, 112)
    assert config.model.backbone == "timm/efficientnet_b0" and config.model.backbone_weights is None
    assert config.data.hflip is False and config.data.undersample_per_bin is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("phase2.lrr=1e-4", "unknown config key 'phase2.lrr'; did you mean 'phase2.lr'?"),
        ("nonsense=1", "unknown config key 'nonsense'"),
        ("phase2=3", "is a section"),
        ("phase2.lr.x=3", "phase2.lr is a value"),
        ("phase1.epochs=1.5", "config phase1.epochs: expected int"),
        ("batch_size=many", "config batch_size: expected int"),
        ("channels_last=3", "config channels_last: expected bool"),
        ("seed=null", "config seed: null is not allowed"),
        ("phase2.lr", "expected key=value"),
        ("data.crop=300", "config data.crop: must be <= data.image_size"),
        ("amp=fp8", "config amp: must be auto, bf16, fp16 or off"),
        ("phase2.lr=-1", "config phase2.lr: must be > 0"),
    ],
)
def test_bad_overrides_are_config_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("nima_mobilenet", [override])
    assert message in str(info.value)


def test_recipe_by_path_with_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("phase1:\n  epochs: 2\nbatch_size: 8\n")
    config = load_config(path)
    assert (config.phase1.epochs, config.batch_size, config.phase2.epochs) == (2, 8, 9)
    path.write_text("data:\n  crop_size: 96\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml.*unknown config key 'data\.crop_size'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"recipes: .*nima_mobilenet"):
        load_config("no_such_recipe")


def test_saved_config_loads_back_equal(tmp_path):
    config = load_config("nima_mobilenet_full", ["phase2.lr=1e-4", "model.backbone=timm/resnet18", "seed=7"])
    path = save_config(config, tmp_path / "run" / "config.yaml")
    assert load_config(path) == config
    assert config_from_dict(yaml.safe_load(path.read_text())) == config
    assert set(config_keys()) >= {"model.backbone", "phase2.backbone_lr", "data.undersample_per_bin"}
    assert to_dict(config)["phase2"]["lr"] == pytest.approx(1e-4)


def test_parse_overrides_keeps_strings_and_lists():
    assert parse_overrides(["a=b", "c.d=3", "e=[1, 2]"]) == {"a": "b", "c.d": 3, "e": [1, 2]}


def test_cli_reports_a_bad_override_with_exit_code_2(tmp_path, capsys):
    assert cli.main(["train", "--out", str(tmp_path / "run")]) == 2
    assert "--data PREPARED_DIR and --out RUN_DIR are required" in capsys.readouterr().err
    code = cli.main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "phase2.lrr=1"])
    assert code == 2
    assert "unknown config key 'phase2.lrr'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cli_lists_every_key(capsys):
    assert cli.main(["train", "--list-keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "phase2.decay=2.3e-05" in lines and "model.dropout=0.75" in lines
    assert len(lines) == len(config_keys())


def test_listed_keys_are_yaml_and_paste_back_as_overrides(capsys):
    assert cli.main(["train", "--list-keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (
        "model.init=null" in lines and "data.hflip=true" in lines and "data.rebalance.enabled=false" in lines
    )
    assert not any(line.endswith(("=None", "=True", "=False")) for line in lines)
    assert load_config(None, lines) == TrainConfig()
    assert parse_overrides(lines) == {key: value for key, value in to_flat_dict(TrainConfig()).items()}


def test_phases_are_data_and_a_head_only_phase_refuses_a_backbone_rate():
    config = TrainConfig()
    assert [(name, phase.trainable) for name, phase in config.phases()] == [
        ("phase1", "head"),
        ("phase2", "all"),
    ]
    with pytest.raises(ConfigError, match=r"config phase1.backbone_lr: only a phase with trainable: all"):
        load_config(None, ["phase1.backbone_lr=1e-4"])
    assert load_config(None, ["phase1.trainable=all", "phase1.backbone_lr=1e-4"]).phase1.backbone_lr == 1e-4
    with pytest.raises(ConfigError, match=r"config phase2\.trainable: must be head or all"):
        load_config(None, ["phase2.trainable=backbone"])


def test_recipes_hold_only_what_differs_from_the_defaults():
    from beholder.config import read_yaml, recipe_path

    assert read_yaml(recipe_path("nima_mobilenet")) == {}
    for name in ("nima_mobilenet_full", "nima_mobilenet_rebalanced"):
        written = to_flat_dict_of(read_yaml(recipe_path(name)))
        changed = diff_configs(TrainConfig(), load_config(name))
        assert set(written) == set(changed), name  # every key written changes something
    rebalanced = load_config("nima_mobilenet_rebalanced")
    assert rebalanced.data.rebalance.enabled and not TrainConfig().data.rebalance.enabled


def to_flat_dict_of(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(to_flat_dict_of(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat

"""`beholder models`: every registered model and backbone, with provenance and where its weights are."""

from __future__ import annotations

import json

from beholder.cli import main
from beholder.models.registry import BACKBONE_WEIGHTS, DEFAULT_MODEL, MODELS


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_lists_every_model_and_backbone_with_provenance(capsys) -> None:
    assert main(["models", "--format", "json"]) == 0
    rows = strict_json(capsys.readouterr().out)
    assert [row["name"] for row in rows] == [*MODELS, *BACKBONE_WEIGHTS]
    assert rows[0]["name"] == DEFAULT_MODEL and rows[0]["kind"] == "nima"
    for row in rows[: len(MODELS)]:
        spec = MODELS[row["name"]]
        assert row["weights"]["sha256"] == spec.weights.sha256
        assert row["preprocessing"] == spec.preprocessing.to_dict()
        assert row["architecture"] == spec.architecture.to_dict()
    default = rows[0]
    assert default["packaged"]["sha256"] == MODELS[DEFAULT_MODEL].packaged.sha256
    assert default["packaged"]["path"].endswith(MODELS[DEFAULT_MODEL].packaged.filename)
    assert {row["kind"] for row in rows[len(MODELS) :]} == {"backbone"}


def test_table_says_where_the_weights_are(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{DEFAULT_MODEL}  [nima]")
    assert "packaged: nima_mobilenet_idealo.safetensors (ships with beholder; scores offline)" in out
    assert MODELS[DEFAULT_MODEL].weights.sha256 in out
    for name, weights in BACKBONE_WEIGHTS.items():
        assert f"{name}  [backbone]" in out
        assert weights.url is None or weights.url in out
    assert "preprocessing: resize [224, 224] nearest, crop None" in out


def test_a_downloaded_file_is_reported_present(tmp_path, monkeypatch, capsys) -> None:
    name, weights = next(iter(BACKBONE_WEIGHTS.items()))
    monkeypatch.setattr(
        "beholder.weights.find_local_weights",
        lambda spec: tmp_path / spec.filename if spec is weights else None,
    )
    assert main(["models", "--format", "json"]) == 0
    row = next(r for r in strict_json(capsys.readouterr().out) if r["name"] == name)
    assert row["local_path"] == str(tmp_path / weights.filename)

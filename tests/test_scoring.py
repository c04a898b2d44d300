"""`beholder score` and the Scorer: Keras-reference scores, formats, ranking, bad inputs, exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bad_images import bad_files, odd_mode_files
from beholder import Scorer
from beholder.cli import main
from beholder.imageio import expand_inputs
from beholder.models import Architecture, build_nima
from conftest import IDEALO_KERAS_MEANS, make_photo


def score_json(args, capsys):
    code = main(["score", "--format", "json", *args])
    out = capsys.readouterr()
    return code, json.loads(out.out), out.err


def test_idealo_scores_match_keras_reference(idealo_weights, sample_images, capsys) -> None:
    code, results, _ = score_json([str(sample_images)], capsys)
    assert code == 0
    means = {Path(r["path"]).name: r["mean"] for r in results}
    assert means.keys() == IDEALO_KERAS_MEANS.keys()
    for name, expected in IDEALO_KERAS_MEANS.items():
        assert means[name] == pytest.approx(expected, abs=0.01), name
    for result in results:
        distribution = np.array(result["distribution"])
        assert distribution.shape == (10,) and distribution.sum() == pytest.approx(1.0, abs=1e-5)
        assert result["mean"] == pytest.approx(float(distribution @ np.arange(1, 11)), abs=1e-6)
        assert 0 < result["std"] < 3


def test_rank_orders_by_mean_and_formats_agree(idealo_weights, sample_images, capsys) -> None:
    code, ranked, _ = score_json(["--rank", str(sample_images)], capsys)
    assert code == 0
    means = [r["mean"] for r in ranked]
    assert means == sorted(means, reverse=True) and Path(ranked[0]["path"]).name == "800749.jpg"

    assert main(["score", "--format", "csv", "--rank", str(sample_images)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["path"] for row in rows] == [r["path"] for r in ranked]
    assert float(rows[0]["mean"]) == pytest.approx(ranked[0]["mean"], abs=1e-4)

    assert main(["score", "--format", "jsonl", str(sample_images / "42039.jpg")]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["mean"] == pytest.approx(IDEALO_KERAS_MEANS["42039.jpg"], abs=0.01)

    assert main(["score", str(sample_images / "42039.jpg")]) == 0
    table = capsys.readouterr().out
    assert "42039.jpg" in table and "5.15" in table


def test_bad_inputs_are_reported_per_file_and_the_rest_scored(
    idealo_weights, sample_images, tmp_path, capsys
) -> None:
    bad = bad_files(tmp_path / "bad")
    odd = odd_mode_files(tmp_path / "odd")
    good = [str(sample_images / "42039.jpg"), *odd]
    inputs = [good[0], *bad, *good[1:]]
    code, results, err = score_json(inputs, capsys)
    assert code == 1
    assert [r["path"] for r in results] == inputs  # input order, failures included
    by_path = {r["path"]: r for r in results}
    for path, words in bad.items():
        assert set(by_path[path]) == {"path", "error"}
        assert words in by_path[path]["error"]
        assert path in err  # stderr names every failed file
    for path in good:
        assert 1 <= by_path[path]["mean"] <= 10, path
    assert f"{len(bad)} of {len(inputs)} inputs failed" in err


def test_usage_errors_exit_2(tmp_path, capsys) -> None:
    assert main(["score", "--model", "no-such-model", "x.jpg"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["score", str(tmp_path / "empty")]) == 2
    assert "no images found" in capsys.readouterr().err
    assert main(["score", "--format", "yaml", "x.jpg"]) == 2
    assert main(["score", "--checkpoint", str(tmp_path / "missing.pt"), "x.jpg"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_expand_inputs_handles_files_directories_and_globs(tmp_path) -> None:
    for name in ("b.jpg", "a.png", "sub/c.JPEG", "sub/.hidden.jpg", "notes.txt"):
        make_photo(tmp_path / name, fmt="PNG" if name.endswith(("png", "txt")) else "JPEG")
    found = expand_inputs([str(tmp_path)])
    assert [Path(p).relative_to(tmp_path).as_posix() for p in found] == ["a.png", "b.jpg", "sub/c.JPEG"]
    assert expand_inputs([str(tmp_path / "*.jpg")]) == [str(tmp_path / "b.jpg")]
    assert expand_inputs([str(tmp_path / "notes.txt"), "nope.jpg"]) == [
        str(tmp_path / "notes.txt"),
        "nope.jpg",
    ]


def test_python_api_accepts_paths_bytes_and_pil_images(tmp_path) -> None:
    model = build_nima(Architecture(alpha=0.25)).eval()
    scorer = Scorer(model, batch_size=2, workers=2)
    path = make_photo(tmp_path / "x.jpg")
    results = scorer.score([str(path), path.read_bytes(), Image.open(path), b""], names=["p", "b", "i", "e"])
    assert [r.path for r in results] == ["p", "b", "i", "e"]
    assert results[3].error == "empty file (0 bytes)"
    # The same picture gives the same distribution whatever the input type.
    np.testing.assert_allclose(results[0].distribution, results[1].distribution, atol=1e-6)
    np.testing.assert_allclose(results[0].distribution, results[2].distribution, atol=1e-6)
    single = scorer.score(str(path))
    assert len(single) == 1 and single[0].mean == pytest.approx(results[0].mean, abs=1e-6)


def test_batching_and_threads_do_not_change_results(tmp_path) -> None:
    model = build_nima(Architecture(alpha=0.25)).eval()
    paths = [str(make_photo(tmp_path / f"{i}.jpg", seed=i)) for i in range(7)]
    one = Scorer(model, batch_size=1, workers=1).score(paths)
    many = Scorer(model, batch_size=4, workers=3).score(paths)
    for a, b in zip(one, many):
        assert a.path == b.path
        np.testing.assert_allclose(a.distribution, b.distribution, atol=1e-5)


def test_torch_runtime_matches_the_unfused_model(tmp_path) -> None:
    import torch

    model = build_nima(Architecture(alpha=0.25)).eval()
    with torch.no_grad():  # give BatchNorm non-trivial statistics so fusion has work to do
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    scorer = Scorer(model)
    batch = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = torch.softmax(model(batch), dim=1).numpy()
    np.testing.assert_allclose(scorer.predict(batch), expected, atol=1e-5)


# -- the scoring core: non-finite outputs, percentiles, one result type for every output ---------


class FixedEngine:
    """A runtime stub that gives image i the i-th of ``rows`` (cycling), e.g. NaN for some."""

    name = "fixed"

    def __init__(self, rows):
        from beholder.models.registry import get_model_spec

        spec = get_model_spec("nima-mobilenet-idealo")
        self.preprocessing, self.architecture = spec.preprocessing, spec.architecture
        self.rows, self.calls = np.asarray(rows, np.float32), 0

    def __call__(self, batch):
        picked = [self.rows[(self.calls + i) % len(self.rows)] for i in range(len(batch))]
        self.calls += len(batch)
        return np.stack(picked)


PEAKED = np.eye(10)[6] * 0.6 + 0.04  # mean 6.4: a distribution that sums to 1
NAN_ROW = np.full(10, np.nan)


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def fixed_cli(monkeypatch):
    """`beholder score` with a stub engine: returns the engine, so tests choose its outputs."""
    import beholder.cli.score as score_cli

    engine = FixedEngine([PEAKED])

    def scorer_from_args(args, **kwargs):
        kwargs.pop("fidelity", None)
        return Scorer(engine=engine, name="fixed", **kwargs)

    monkeypatch.setattr(score_cli, "scorer_from_args", scorer_from_args)
    return engine


def test_a_non_finite_output_is_a_per_item_error_in_strict_json(fixed_cli, tmp_path, capsys) -> None:
    fixed_cli.rows = np.stack([PEAKED, NAN_ROW, PEAKED]).astype(np.float32)
    paths = [str(make_photo(tmp_path / f"{i}.jpg", seed=i)) for i in range(3)]
    code = main(["score", "--format", "json", "--batch-size", "3", *paths])
    out = capsys.readouterr()
    assert code == 1
    results = strict_json(out.out)
    assert results[1] == {"path": paths[1], "error": "model output is not finite"}
    assert [r["mean"] for r in (results[0], results[2])] == pytest.approx([6.4, 6.4])
    assert f"{paths[1]}: model output is not finite" in out.err
    for fmt in ("jsonl", "csv", "table"):
        assert main(["score", "--format", fmt, "--batch-size", "3", *paths]) == 1
        text = capsys.readouterr().out
        assert "NaN" not in text and "nan" not in text
        if fmt == "jsonl":
            assert [strict_json(line).get("error") for line in text.splitlines()][
                1
            ] == "model output is not finite"


def test_percentile_is_in_every_output_format(fixed_cli, tmp_path, capsys) -> None:
    from beholder.percentiles import percentile

    path = str(make_photo(tmp_path / "a.jpg"))
    expected = percentile(6.4)
    assert 80 < expected < 100  # a 6.4 beats most AVA photos
    assert main(["score", "--format", "json", path]) == 0
    (result,) = strict_json(capsys.readouterr().out)
    assert result["percentile"] == pytest.approx(expected, abs=0.01)
    assert main(["score", "--format", "csv", path]) == 0
    (row,) = csv.DictReader(io.StringIO(capsys.readouterr().out))
    assert float(row["percentile"]) == pytest.approx(expected, abs=0.01)
    assert main(["score", "--format", "jsonl", path]) == 0
    assert strict_json(capsys.readouterr().out)["percentile"] == pytest.approx(expected, abs=0.01)
    assert main(["score", path]) == 0
    table = capsys.readouterr().out
    assert "AVA %ile" in table.splitlines()[0] and f"{expected:.1f}" in table.splitlines()[1]


def test_the_service_answers_json_for_non_finite_outputs(tmp_path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from beholder.percentiles import percentile
    from beholder.serve import create_app

    data = [make_photo(tmp_path / f"{i}.jpg", seed=i).read_bytes() for i in range(2)]
    engine = FixedEngine([PEAKED, NAN_ROW])
    with TestClient(create_app(Scorer(engine=engine, batch_size=2, workers=1))) as client:
        files = [("files", (f"{i}.jpg", blob, "image/jpeg")) for i, blob in enumerate(data)]
        response = client.post("/v1/score", files=files)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        good, bad = strict_json(response.text)
        assert good["percentile"] == pytest.approx(percentile(6.4), abs=0.01)
        assert bad == {"path": "1.jpg", "error": "model output is not finite"}
        engine.rows = np.stack([NAN_ROW]).astype(np.float32)
        response = client.post("/v1/rank", files=files)
        assert response.status_code == 422
        body = strict_json(response.text)
        assert body["error"] == "model_output_not_finite"
        assert [f["error"] for f in body["files"]] == ["model output is not finite"] * 2


def test_rank_puts_failures_last_in_input_order() -> None:
    from beholder.inference import ScoreResult, rank

    results = [
        ScoreResult("a", error="x"),
        ScoreResult("b", mean=5.0),
        ScoreResult("c", error="y"),
        ScoreResult("d", mean=6.0),
    ]
    assert [r.path for r in rank(results)] == ["d", "b", "a", "c"]

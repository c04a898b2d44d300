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

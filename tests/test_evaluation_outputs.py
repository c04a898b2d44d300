"""Evaluation outputs and checks: tail metrics, example distributions, provenance, rejected labels,
strict JSON, absent devices and unwritable output directories.

Most tests drive :func:`beholder.evaluation.evaluate` with a stand-in scorer that returns chosen
distributions through the Scorer's public API (``score(paths)`` -> results with ``mean``, ``std``,
``distribution``, ``error``), so the expected figures are known exactly and are recomputed here
with numpy, independently of :mod:`beholder.metrics`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from beholder.cli import main

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from beholder import evaluation as ev  # noqa: E402
from beholder.errors import ConfigError  # noqa: E402

SCORES = np.arange(1, 11, dtype=np.float64)
VOTES = [f"votes_{i}" for i in range(1, 11)]


def _strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path.name} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


class StandInScorer:
    """Returns a fixed distribution per file name, as Scorer.score does (one result per input)."""

    name = "stand-in"

    def __init__(self, distributions: dict[str, np.ndarray]):
        self.distributions = distributions
        self.preprocessing = SimpleNamespace(
            to_dict=lambda: {"resize": [224, 224], "interpolation": "bilinear", "crop": None}
        )

    def score(self, paths, progress=False):
        results = []
        for path in paths:
            p = np.asarray(self.distributions[Path(path).name], dtype=np.float64)
            mean = float(p @ SCORES)
            std = float(np.sqrt(p @ (SCORES - mean) ** 2))
            results.append(SimpleNamespace(mean=mean, std=std, distribution=p.tolist(), error=None))
        return results


def _photos(directory: Path, names: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8), (120, 90, 60)).save(directory / name)


def _votes_around(rng: np.random.Generator, centre: float) -> np.ndarray:
    """Vote counts whose mean is near ``centre`` (1..10)."""
    weights = np.exp(-0.5 * ((SCORES - centre) / 0.9) ** 2)
    return rng.multinomial(200, weights / weights.sum()).astype(np.float64)


@pytest.fixture
def rated_set(tmp_path):
    """60 photos rated with votes whose means cover both tails; a stand-in scorer that shrinks them."""
    rng = np.random.default_rng(14)
    centres = np.concatenate(
        [rng.uniform(1.8, 3.4, 10), rng.uniform(3.6, 7.0, 40), rng.uniform(7.4, 9.0, 10)]
    )
    names = [f"img{i:02d}.png" for i in range(len(centres))]
    _photos(tmp_path / "photos", names)
    votes = np.stack([_votes_around(rng, c) for c in centres])  # (60, 10)
    with open(tmp_path / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", *VOTES])
        for name, row in zip(names, votes):
            writer.writerow([name, *(int(v) for v in row)])
    # The stand-in "model" regresses to the middle, as AVA-trained models do.
    predicted = {
        name: (lambda w: w / w.sum())(np.exp(-0.5 * ((SCORES - (5.4 + 0.4 * (c - 5.4))) / 1.4) ** 2))
        for name, c in zip(names, centres)
    }
    return tmp_path, names, votes, StandInScorer(predicted)


def test_tail_metrics_match_numpy_computed_independently(rated_set):
    root, names, votes, scorer = rated_set
    labels = ev.load_user_labels(root / "photos", root / "labels.csv")
    metrics = ev.evaluate(scorer, labels, root / "eval", plots=False)

    order = np.argsort(names)  # outputs are sorted by image id (here the file name)
    true_p = (votes / votes.sum(axis=1, keepdims=True))[order]
    pred_p = np.stack([scorer.distributions[names[i]] for i in order])
    true_mean, pred_mean = true_p @ SCORES, pred_p @ SCORES
    per_image_emd = np.sqrt(np.mean((np.cumsum(true_p, 1) - np.cumsum(pred_p, 1)) ** 2, axis=1))
    ranges = {
        "lower": true_mean < 3.5,
        "middle": (true_mean >= 3.5) & (true_mean <= 7.2),
        "upper": true_mean > 7.2,
    }
    assert metrics["tail_thresholds"] == [3.5, 7.2]
    assert sum(metrics["tails"][name]["n"] for name in ranges) == metrics["n"] == 60
    for name, mask in ranges.items():
        tail = metrics["tails"][name]
        assert tail["n"] == int(mask.sum()) and tail["n"] >= 5, name
        assert tail["emd"] == pytest.approx(per_image_emd[mask].mean(), abs=2e-6), name
        assert tail["mae_mean"] == pytest.approx(
            np.abs(pred_mean[mask] - true_mean[mask]).mean(), abs=2e-6
        ), name
        expected_accuracy = np.mean((true_mean[mask] > 5) == (pred_mean[mask] > 5))
        assert tail["accuracy"] == pytest.approx(expected_accuracy, abs=1e-9), name
    # A model that regresses to the middle does worst in the tails, which the overall MAE hides.
    assert (
        metrics["tails"]["lower"]["mae_mean"] > metrics["mae_mean"] > metrics["tails"]["middle"]["mae_mean"]
    )

    # The report shows the tails next to the overall figures, as in metrics.json.
    report = (root / "eval" / "report.md").read_text()
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in report.splitlines()
        if line.startswith("| ")
    }
    assert rows["**all images**"] == [
        "1 to 10",
        "60",
        f"{metrics['emd']:.3f}",
        f"{metrics['mae_mean']:.3f}",
        f"{100 * metrics['accuracy']:.2f}%",
    ]
    lower = metrics["tails"]["lower"]
    assert rows["lower tail"] == [
        "< 3.5",
        str(lower["n"]),
        f"{lower['emd']:.3f}",
        f"{lower['mae_mean']:.3f}",
        f"{100 * lower['accuracy']:.2f}%",
    ]
    assert rows["upper tail"][0] == "> 7.2" and rows["middle"][0] == "3.5 to 7.2"


@pytest.mark.slow  # renders the five plots: several seconds on a loaded machine
def test_predictions_csv_has_true_distributions_and_examples_plot(rated_set):
    root, names, votes, scorer = rated_set
    metrics = ev.evaluate(scorer, ev.load_user_labels(root / "photos", root / "labels.csv"), root / "eval")
    with open(root / "eval" / "predictions.csv", newline="") as handle:
        rows = {row["image_id"]: row for row in csv.DictReader(handle)}
    assert list(next(iter(rows.values())))[-20:] == [
        *(f"p{i}" for i in range(1, 11)),
        *(f"true_p{i}" for i in range(1, 11)),
    ]
    for name, row in zip(names, votes):
        written = [float(rows[name][f"true_p{i}"]) for i in range(1, 11)]
        np.testing.assert_allclose(written, row / row.sum(), atol=1e-6)
        predicted = [float(rows[name][f"p{i}"]) for i in range(1, 11)]
        np.testing.assert_allclose(predicted, scorer.distributions[name], atol=1e-6)
    # Example images: up to 4 per range, each in its range, and the plot is a PNG in the report.
    means = {name: float(rows[name]["true_mean"]) for name in rows}
    examples = metrics["examples"]
    assert [len(examples[r]) for r in ("lower", "middle", "upper")] == [4, 4, 4]
    assert all(means[i] < 3.5 for i in examples["lower"]) and all(means[i] > 7.2 for i in examples["upper"])
    assert all(3.5 <= means[i] <= 7.2 for i in examples["middle"])
    png = root / "eval" / ev.PLOT_FILES["examples"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.width > 800 and image.height > 500
    assert f'<img src="{png.name}"' in (root / "eval" / "report.html").read_text()


def test_tail_thresholds_are_configurable_and_checked(rated_set):
    root, _, _, scorer = rated_set
    labels = ev.load_user_labels(root / "photos", root / "labels.csv")
    metrics = ev.evaluate(scorer, labels, root / "eval", tail_thresholds=(4.5, 6.0), plots=False)
    true_mean = labels["true_mean"].to_numpy()
    assert metrics["tail_thresholds"] == [4.5, 6.0]
    assert metrics["tails"]["lower"]["n"] == int((true_mean < 4.5).sum())
    assert metrics["tails"]["upper"]["n"] == int((true_mean > 6.0).sum())
    for bad in [(7.2, 3.5), (0.5, 7.0), (3.5,)]:
        with pytest.raises(ConfigError, match="tail thresholds"):
            ev.evaluate(scorer, labels, root / "bad", tail_thresholds=bad)


def test_cli_rejects_reversed_tail_thresholds(tmp_path, capsys):
    _photos(tmp_path / "photos", ["a.png"])
    (tmp_path / "labels.csv").write_text("id,mean\na,5\n")
    args = ["--images", str(tmp_path / "photos"), "--labels", str(tmp_path / "labels.csv")]
    code = main(
        [
            "evaluate",
            "--checkpoint",
            "unused.pt",
            *args,
            "--out",
            str(tmp_path / "o"),
            "--tail-thresholds",
            "7",
            "4",
        ]
    )
    assert code == 2
    assert "tail thresholds" in capsys.readouterr().err


def test_empty_tail_is_null_with_a_note(tmp_path):
    _photos(tmp_path / "photos", ["a.png", "b.png", "c.png"])
    (tmp_path / "labels.csv").write_text("id,mean\na,5\nb,6\nc,4.5\n")  # no image in either tail
    flat = np.full(10, 0.1)
    scorer = StandInScorer({"a.png": flat, "b.png": flat, "c.png": flat})
    metrics = ev.evaluate(
        scorer, ev.load_user_labels(tmp_path / "photos", tmp_path / "labels.csv"), tmp_path / "e", plots=False
    )
    saved = _strict_json(tmp_path / "e" / "metrics.json")
    assert saved["tails"]["lower"] == {"n": 0, "emd": None, "mae_mean": None, "accuracy": None}
    assert saved["notes"]["tails.lower.mae_mean"] == "no images"
    assert saved["notes"]["emd"].startswith("the labels give mean scores only")
    # A constant prediction has no correlation: null with a note, never NaN.
    assert saved["lcc_mean"] is None and "all equal" in saved["notes"]["lcc_mean"]
    assert saved == json.loads(json.dumps(metrics))
    assert "Undefined metrics (null)" in (tmp_path / "e" / "report.md").read_text()


def test_non_finite_prediction_is_a_failure_not_a_null_metric(tmp_path):
    _photos(tmp_path / "photos", ["a.png", "b.png", "c.png"])
    (tmp_path / "labels.csv").write_text("id,mean\na,3\nb,6\nc,8\n")
    good = np.arange(1, 11) / 55.0
    scorer = StandInScorer({"a.png": good[::-1], "b.png": np.full(10, np.nan), "c.png": good})
    metrics = ev.evaluate(
        scorer, ev.load_user_labels(tmp_path / "photos", tmp_path / "labels.csv"), tmp_path / "e", plots=False
    )
    assert metrics["n"] == 2 and metrics["n_failed"] == 1
    assert metrics["mae_mean"] is not None and metrics["lcc_mean"] == pytest.approx(1.0)
    with open(tmp_path / "e" / "failures.csv", newline="") as handle:
        (failure,) = list(csv.DictReader(handle))
    assert failure["image_id"] == "b" and "not finite" in failure["error"]
    _strict_json(tmp_path / "e" / "metrics.json")


@pytest.mark.parametrize("bad_value", ["inf", "-inf", "nan_in_one_column"])
def test_labels_with_non_finite_votes_are_rejected_by_row(tmp_path, capsys, bad_value):
    _photos(tmp_path / "photos", ["a.png", "b.png", "c.png", "d.png"])
    good = ",".join(["3"] * 10)
    bad = "inf" if bad_value == "nan_in_one_column" else bad_value
    rows = [f"a,{good}", f"b,{bad},{','.join(['2'] * 9)}", f"c,{good}", f"d,-1,{','.join(['2'] * 9)}"]
    (tmp_path / "labels.csv").write_text("id," + ",".join(VOTES) + "\n" + "\n".join(rows) + "\n")
    args = ["--images", str(tmp_path / "photos"), "--labels", str(tmp_path / "labels.csv")]
    assert main(["evaluate", "--checkpoint", "unused.pt", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "2 row(s) rejected" in err
    assert "row 3 (image 'b'): a vote count is not a finite number" in err
    assert "row 5 (image 'd'): a vote count is negative" in err
    assert "'a'" not in err and "'c'" not in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_manifest_rows_with_infinite_votes_are_rejected():
    votes = np.full((3, 10), 4.0)
    votes[1, 6] = np.inf
    manifest = pd.DataFrame({"image_id": [11, 12, 13], "split": "test", "source_path": ["x", "y", "z"]})
    for i, column in enumerate(VOTES):
        manifest[column] = votes[:, i]
    with pytest.raises(
        ConfigError, match=r"1 row\(s\) rejected: image '12': a vote count is not a finite number \(inf\)"
    ):
        ev.labels_from_manifest(manifest, "test")


def test_user_labels_given_as_distributions(tmp_path):
    _photos(tmp_path / "photos", ["a.png"])
    p = np.arange(1, 11, dtype=float)
    header = ",".join(f"p{i}" for i in range(1, 11))
    (tmp_path / "labels.csv").write_text(
        f"path,{header}\na.png," + ",".join(f"{v / p.sum():.3f}" for v in p) + "\n"
    )
    labels = ev.load_user_labels(tmp_path / "photos", tmp_path / "labels.csv")
    written = labels[ev.TRUE_PROBABILITY_COLUMNS].to_numpy()[0]
    assert written.sum() == pytest.approx(1.0) and written == pytest.approx(p / p.sum(), abs=1e-3)
    assert labels["true_mean"][0] == pytest.approx(float(written @ SCORES))


def test_provenance_of_a_fine_tuned_checkpoint_is_in_the_report(tmp_path):
    metrics_in = {
        "model": "run/best.pt",
        "data": "labels.csv",
        "split": None,
        "n": 2,
        "n_failed": 0,
        "labels": "mean",
        "preprocessing": {"resize": [224, 224], "interpolation": "nearest", "crop": None},
        "beholder_version": "0",
        "provenance": {
            "init": {"model": "nima-mobilenet-idealo", "sha256": "ab12"},
            "trained_with": "beholder train",
        },
        "tail_thresholds": [3.5, 7.2],
        "tails": {
            name: {"n": 1, "emd": None, "mae_mean": 0.5, "accuracy": 1.0}
            for name in ("lower", "middle", "upper")
        },
        "confusion": {
            "true_low_pred_low": 1,
            "true_low_pred_high": 0,
            "true_high_pred_low": 0,
            "true_high_pred_high": 1,
        },
        "error_by_bin": [],
        "notes": {},
        **{key: 0.5 for key in ev.METRIC_KEYS if key != "n"},
    }
    page = ev.render_markdown(metrics_in, {})
    assert "fine-tuned from: `nima-mobilenet-idealo`" in page
    assert "| init.model | nima-mobilenet-idealo |" in page and "| trained_with | beholder train |" in page
    assert "fine-tuned from" not in ev.render_markdown({**metrics_in, "provenance": None}, {})
    assert "nima-mobilenet-idealo" in ev.render_html(metrics_in, {})


def test_cli_reads_provenance_from_the_checkpoint(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from beholder.cli import evaluate as cli_evaluate

    payload = {"format": "beholder-checkpoint", "provenance": {"trained_with": "t"}, "init": "runs/x/best.pt"}
    path = tmp_path / "c.pt"
    torch.save(payload, path)
    assert cli_evaluate.checkpoint_provenance(str(path)) == {"trained_with": "t", "init": "runs/x/best.pt"}
    torch.save({"format": "beholder-checkpoint"}, path)
    assert cli_evaluate.checkpoint_provenance(str(path)) is None


def test_device_without_cuda_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    from beholder.models import save_checkpoint
    from beholder.models.nima import Architecture, build_nima

    model = build_nima(Architecture(backbone="keras_mobilenet_v1", alpha=0.25, dropout=0.75))
    checkpoint = save_checkpoint(tmp_path / "m.pt", model.eval())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _photos(tmp_path / "photos", ["a.png"])
    (tmp_path / "labels.csv").write_text("id,mean\na,5\n")
    base = ["evaluate", "--checkpoint", str(checkpoint), "--images", str(tmp_path / "photos")]
    base += ["--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "o")]
    assert main([*base, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "CUDA" in err and "--device cpu" in err
    assert main([*base, "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "torch device" in err and "'gpu'" in err


def test_unwritable_output_directory_is_one_line_exit_2(tmp_path, capsys):
    _photos(tmp_path / "photos", ["a.png"])
    (tmp_path / "labels.csv").write_text("id,mean\na,5\n")
    (tmp_path / "file").write_text("not a directory")
    out = tmp_path / "file" / "eval"
    args = ["--images", str(tmp_path / "photos"), "--labels", str(tmp_path / "labels.csv"), "--out", str(out)]
    # The check comes before the model is loaded: the checkpoint need not exist.
    assert main(["evaluate", "--checkpoint", "unused.pt", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(out) in err and "output directory" in err

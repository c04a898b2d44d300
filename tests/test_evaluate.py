"""``beholder evaluate``: real AVA images with the idealo model, a freshly trained model, user labels.

Must-show checks: the idealo model's per-image means equal ``beholder score``'s (and Keras'); a
model trained by ``beholder train`` gets the full report whose numbers equal metrics.json; two
evaluations of one checkpoint are byte-identical.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from beholder.cli import main

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from beholder import evaluation as ev  # noqa: E402  (needs pandas)
from beholder.data.manifest import load_manifest  # noqa: E402
from beholder.evaluation.labels import id_key  # noqa: E402
from beholder.evaluation.report import METRIC_TITLES  # noqa: E402
from beholder.ratings import VOTE_COLUMNS  # noqa: E402
from conftest import ASSETS, asset  # noqa: E402

AVA_SAMPLE = ASSETS / "ava_sample"
IDEALO_WEIGHTS = ASSETS / "nima_idealo"
MOBILENET_025 = ASSETS / "weights" / "keras_mobilenet_v1_0.25"
TEST_LIST = AVA_SAMPLE / "official_lists" / "aesthetics_image_lists" / "generic_test.jpgl"

#: Means of the idealo model under Keras (idealo's own predictor) for the labelled sample images.
KERAS_MEANS = {"42039": 5.154, "42040": 4.232, "800749": 6.081}
OUTPUT_FILES = [
    "metrics.json",
    "predictions.csv",
    "report.md",
    "report.html",
    *ev.PLOT_FILES.values(),
]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_ava_txt(path: Path, rows: list[tuple[str, list[int]]]) -> None:
    # AVA.txt: index, image id, c1..c10, tag1, tag2, challenge (15 columns)
    lines = [
        " ".join(map(str, [i, image_id, *votes, 0, 0, 0])) for i, (image_id, votes) in enumerate(rows, 1)
    ]
    path.write_text("\n".join(lines) + "\n")


def _prepare(ava_txt: Path, images: Path, out: Path, test_list: Path) -> Path:
    code = main(
        [
            "ava",
            "prepare",
            "--ava-txt",
            str(ava_txt),
            "--images",
            str(images),
            "--out",
            str(out),
            "--test-list",
            str(test_list),
            "--min-side",
            "16",
            "--val-fraction",
            "0.25",
            "--no-progress",
        ]
    )
    assert code == 0
    return out


def _metrics_table(report_md: str) -> dict[str, str]:
    """key -> value text of the 'Metrics (exactly as in metrics.json)' table."""
    section = report_md.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in ev.METRIC_KEYS:
            rows[cells[0]] = cells[2]
    return rows


def _this_run_row(report_md: str) -> list[str]:
    line = next(line for line in report_md.splitlines() if line.startswith("| **this run"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


# -- must-show 2: the idealo model on real AVA images --------------------------------------------


@pytest.fixture(scope="module")
def real_prepared(tmp_path_factory) -> Path:
    """A prepared directory from the 3 labelled real AVA images, via `beholder ava prepare`."""
    asset("ava_sample/ava_sample_labels.csv")
    root = tmp_path_factory.mktemp("real")
    rows = [
        (r["image_id"], [int(r[f"c{i}"]) for i in range(1, 11)])
        for r in _read_csv(AVA_SAMPLE / "ava_sample_labels.csv")
        if r["c1"]
    ]
    assert [image_id for image_id, _ in rows] == ["42039", "42040", "800749"]
    _write_ava_txt(root / "AVA.txt", rows)
    return _prepare(root / "AVA.txt", AVA_SAMPLE / "images", root / "prepared", TEST_LIST)


@pytest.fixture(scope="module")
def idealo_scorer(tmp_path_factory):
    asset("nima_idealo/weights_mobilenet_aesthetic_0.07.hdf5")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BEHOLDER_WEIGHTS_PATH", str(IDEALO_WEIGHTS))
        mp.setenv("BEHOLDER_CACHE", str(tmp_path_factory.mktemp("cache")))  # never the user's cache
        from beholder.inference import Scorer

        yield Scorer.from_pretrained("nima-mobilenet-idealo", workers=2)


def test_idealo_on_real_ava_matches_score_command(real_prepared, tmp_path, monkeypatch, capsys):
    asset("nima_idealo/weights_mobilenet_aesthetic_0.07.hdf5")
    monkeypatch.setenv("BEHOLDER_WEIGHTS_PATH", str(IDEALO_WEIGHTS))
    out = tmp_path / "eval"
    args = ["--model", "nima-mobilenet-idealo", "--data", str(real_prepared), "--split", "all"]
    assert main(["evaluate", *args, "--out", str(out), "--no-progress"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "n=3" in summary[0] and "accuracy=100.00%" in summary[0]

    predictions = {row["image_id"]: row for row in _read_csv(out / "predictions.csv")}
    assert list(predictions) == ["42039", "42040", "800749"]  # sorted by id
    images = [str(AVA_SAMPLE / "images" / f"{image_id}.jpg") for image_id in predictions]
    assert main(["score", "--format", "json", *images]) == 0
    scored = json.loads(capsys.readouterr().out)
    for image_id, result in zip(predictions, scored):
        row = predictions[image_id]
        # predictions.csv holds 6 decimals: equal to the score command's value rounded alike
        assert float(row["pred_mean"]) == round(result["mean"], 6)
        assert float(row["pred_std"]) == round(result["std"], 6)
        assert [float(row[f"p{i}"]) for i in range(1, 11)] == [round(p, 6) for p in result["distribution"]]
        assert result["mean"] == pytest.approx(KERAS_MEANS[image_id], abs=1e-3)  # Keras reference

    # true means come from the vote counts of the manifest
    manifest = load_manifest(real_prepared).set_index("image_id")
    for image_id, row in predictions.items():
        votes = manifest.loc[int(image_id), VOTE_COLUMNS].to_numpy(dtype=float)
        assert float(row["true_mean"]) == pytest.approx(votes @ np.arange(1, 11) / votes.sum(), abs=1e-6)

    metrics = json.loads((out / "metrics.json").read_text())
    true = np.array([float(r["true_mean"]) for r in predictions.values()])
    pred = np.array([float(r["pred_mean"]) for r in predictions.values()])
    assert metrics["n"] == 3 and metrics["n_failed"] == 0 and metrics["labels"] == "distribution"
    assert metrics["accuracy"] == np.mean((true > 5) == (pred > 5)) == 1.0
    assert metrics["lcc_mean"] == pytest.approx(stats.pearsonr(true, pred)[0], abs=1e-5)
    assert metrics["srcc_mean"] == pytest.approx(stats.spearmanr(true, pred)[0], abs=1e-5)
    assert metrics["mae_mean"] == pytest.approx(np.mean(np.abs(true - pred)), abs=1e-5)
    assert metrics["emd"] is not None and 0 < metrics["emd"] < 0.1
    assert metrics["preprocessing"]["interpolation"] == "nearest" and metrics["preprocessing"]["crop"] is None
    for name in OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name


def test_official_test_split_of_real_sample(real_prepared, idealo_scorer, tmp_path):
    # Of the three labelled images only 42039 is on the official test list.
    assert "42039" in TEST_LIST.read_text().split()
    metrics = ev.evaluate(idealo_scorer, real_prepared, tmp_path, split="test", plots=False)
    assert metrics["n"] == 1 and metrics["split"] == "test"
    assert metrics["lcc_mean"] is None and metrics["srcc_mean"] is None  # undefined for n = 1: null
    rows = _read_csv(tmp_path / "predictions.csv")
    assert [r["image_id"] for r in rows] == ["42039"]
    assert abs(float(rows[0]["pred_mean"]) - KERAS_MEANS["42039"]) < 1e-3
    json.loads((tmp_path / "metrics.json").read_text())  # valid JSON despite NaN correlations
    assert "null" in (tmp_path / "report.md").read_text()


def test_user_labels_give_the_same_metrics_as_the_manifest(real_prepared, idealo_scorer, tmp_path):
    # ava_sample_labels.csv: image_id + file + c1..c10; three rows have no votes and are skipped.
    labels = ev.load_user_labels(AVA_SAMPLE / "images", AVA_SAMPLE / "ava_sample_labels.csv")
    assert list(labels["image_id"]) == ["42039", "42040", "800749"]
    from_user = ev.evaluate(idealo_scorer, labels, tmp_path / "user", plots=False)
    from_manifest = ev.evaluate(idealo_scorer, real_prepared, tmp_path / "manifest", split="all", plots=False)
    assert {k: from_user[k] for k in ev.METRIC_KEYS} == {k: from_manifest[k] for k in ev.METRIC_KEYS}
    assert (tmp_path / "user" / "predictions.csv").read_bytes() == (
        tmp_path / "manifest" / "predictions.csv"
    ).read_bytes()


# -- must-show 3 and 4: a model trained by `beholder train` --------------------------------------


def _generated_dataset(root: Path, n: int = 24, seed: int = 0) -> Path:
    """Random images with random vote counts, prepared by `beholder ava prepare` (every 3rd is test)."""
    rng = np.random.default_rng(seed)
    images = root / "images"
    images.mkdir(parents=True)
    rows, test_ids = [], []
    for i in range(n):
        image_id = str(1000 + i)
        # brightness loosely tied to the votes' peak so that there is something to learn
        peak = int(rng.integers(2, 9))
        level = 20 + 25 * peak
        pixels = np.clip(rng.normal(level, 30, size=(48, 64, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{image_id}.jpg", quality=90)
        votes = rng.integers(0, 8, size=10)
        votes[peak - 1 : peak + 2] += rng.integers(10, 30, size=3)
        rows.append((image_id, [int(v) for v in votes]))
        if i % 3 == 0:
            test_ids.append(image_id)
    _write_ava_txt(root / "AVA.txt", rows)
    (root / "test.jpgl").write_text("\n".join(test_ids) + "\n")
    return _prepare(root / "AVA.txt", images, root / "prepared", root / "test.jpgl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(prepared dir, checkpoint) of a tiny two-phase `beholder train` run on generated data."""
    asset("weights/keras_mobilenet_v1_0.25/mobilenet_2_5_224_tf_no_top.h5")
    root = tmp_path_factory.mktemp("trained")
    prepared = _generated_dataset(root)
    overrides = [
        "model.alpha=0.25",
        "model.backbone_weights=keras-mobilenet-v1-0.25-imagenet",
        "data.image_size=64",
        "data.crop=56",
        "data.num_workers=0",
        "data.undersample_per_bin=null",
        "phase1.epochs=1",
        "phase2.epochs=1",
        "batch_size=4",
        "device=cpu",
        "progress=false",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BEHOLDER_WEIGHTS_PATH", str(MOBILENET_025))
        mp.setenv("BEHOLDER_CACHE", str(root / "cache"))  # module scope runs before conftest's isolation
        code = main(["train", "--data", str(prepared), "--out", str(root / "run"), *overrides])
    assert code == 0
    checkpoint = root / "run" / "checkpoints" / "best.pt"
    assert checkpoint.is_file()
    return prepared, checkpoint


def test_trained_model_full_report_matches_metrics_json(trained, tmp_path, capsys):
    prepared, checkpoint = trained
    out = tmp_path / "eval"
    assert (
        main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(prepared), "--out", str(out)]) == 0
    )
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and summary[0].endswith("report.html")

    for name in OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name
    for name in ev.PLOT_FILES.values():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "failures.csv").exists()

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["split"] == "test" and metrics["labels"] == "distribution"
    assert all(metrics[key] is not None for key in ev.METRIC_KEYS)  # distributions vary: all defined
    # The checkpoint's declared preprocessing is used, with a centre crop (no random crop).
    assert metrics["preprocessing"]["resize"] == [64, 64] and metrics["preprocessing"]["crop"] == 56

    # Every number of the report equals metrics.json.
    report = (out / "report.md").read_text()
    table = _metrics_table(report)
    assert set(table) == set(ev.METRIC_KEYS)
    for key in ev.METRIC_KEYS:
        assert json.loads(table[key]) == metrics[key], key
    row = _this_run_row(report)
    assert row[2].endswith(f"n={metrics['n']}")
    assert row[3] == f"{100 * metrics['accuracy']:.2f}%"
    assert [float(v) for v in row[4:7]] == [
        round(metrics["lcc_mean"], 3),
        round(metrics["srcc_mean"], 3),
        round(metrics["emd"], 3),
    ]
    confusion = re.search(r"\| true ≤ 5 \| (\d+) \| (\d+) \|\n\| true > 5 \| (\d+) \| (\d+) \|", report)
    c = metrics["confusion"]
    assert [int(g) for g in confusion.groups()] == [
        c["true_low_pred_low"],
        c["true_low_pred_high"],
        c["true_high_pred_low"],
        c["true_high_pred_high"],
    ]
    assert sum(c.values()) == metrics["n"]
    assert metrics["accuracy"] == pytest.approx(
        (c["true_low_pred_low"] + c["true_high_pred_high"]) / metrics["n"]
    )
    assert sum(b["n"] for b in metrics["error_by_bin"]) == metrics["n"]
    # The published figures are in the comparison, each with its test set.
    for published in ev.PUBLISHED_RESULTS:
        assert f"| {published.method} | {published.source} | {published.test_set} |" in report
    assert "| NIMA (MobileNet) | Talebi & Milanfar 2018, Table I |" in report and "80.36%" in report

    # The HTML report shows the same values and embeds the plots beside it.
    page = (out / "report.html").read_text()
    for key in ev.METRIC_KEYS:
        value = "null" if metrics[key] is None else json.dumps(metrics[key])
        assert f"<td>{key}</td><td>{METRIC_TITLES[key]}</td><td>{value}</td>" in page
    for name in ev.PLOT_FILES.values():
        assert f'<img src="{name}"' in page

    # metrics.json agrees with an independent computation from predictions.csv and the manifest.
    predictions = pd.read_csv(out / "predictions.csv", dtype={"image_id": str})
    assert list(predictions["image_id"]) == sorted(predictions["image_id"], key=int)
    manifest = load_manifest(prepared)
    manifest = manifest.assign(image_id=manifest["image_id"].astype(str)).set_index("image_id")
    votes = manifest.loc[predictions["image_id"], VOTE_COLUMNS].to_numpy(dtype=float)
    true_p = votes / votes.sum(axis=1, keepdims=True)
    pred_p = predictions[[f"p{i}" for i in range(1, 11)]].to_numpy()
    scores = np.arange(1, 11)
    true_mean, pred_mean = true_p @ scores, predictions["pred_mean"].to_numpy()
    true_std = np.sqrt(true_p @ scores**2 - true_mean**2)
    expected = {
        "emd": np.mean(np.sqrt(np.mean((np.cumsum(true_p, 1) - np.cumsum(pred_p, 1)) ** 2, axis=1))),
        "accuracy": np.mean((true_mean > 5) == (pred_mean > 5)),
        "lcc_mean": stats.pearsonr(true_mean, pred_mean)[0],
        "srcc_mean": stats.spearmanr(true_mean, pred_mean)[0],
        "lcc_std": stats.pearsonr(true_std, predictions["pred_std"])[0],
        "srcc_std": stats.spearmanr(true_std, predictions["pred_std"])[0],
        "mae_mean": np.mean(np.abs(pred_mean - true_mean)),
        "rmse_mean": np.sqrt(np.mean((pred_mean - true_mean) ** 2)),
    }
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(float(value), abs=2e-5), key
    np.testing.assert_allclose(predictions["true_mean"], true_mean, atol=1e-6)


def test_two_evaluations_of_one_checkpoint_are_identical(trained, tmp_path):
    prepared, checkpoint = trained
    for name in ("first", "second"):
        args = ["--checkpoint", str(checkpoint), "--data", str(prepared), "--split", "all", "--no-progress"]
        assert main(["evaluate", *args, "--out", str(tmp_path / name), "--batch-size", "5"]) == 0
    for name in ["metrics.json", "predictions.csv", "report.md", "report.html"]:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    assert json.loads((tmp_path / "first" / "metrics.json").read_text())["n"] == 24


# -- failures, user labels, configuration errors -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A width-0.25 NIMA (ImageNet backbone, random head) at 64x64 input: fast, outputs differ per image."""
    import torch

    from beholder.models import Architecture, build_nima, save_checkpoint
    from beholder.preprocessing import Preprocessing

    asset("weights/keras_mobilenet_v1_0.25/mobilenet_2_5_224_tf_no_top.h5")
    torch.manual_seed(0)
    model = build_nima(
        Architecture(backbone="keras_mobilenet_v1", alpha=0.25, dropout=0.75),
        preprocessing=Preprocessing(resize=(64, 64), interpolation="bilinear", crop=None),
        backbone_weights=MOBILENET_025 / "mobilenet_2_5_224_tf_no_top.h5",
    )
    with torch.no_grad():
        model.head[1].weight.mul_(2.0)  # a stronger random head spreads the predicted means
    return save_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt", model.eval())


def _photos(directory: Path, names: list[str], seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        pixels = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(directory / name)


def test_undecodable_image_is_listed_and_excluded(tmp_path, tiny_checkpoint, capsys):
    prepared = _generated_dataset(tmp_path / "data", n=9)
    # The manifest is trusted, but a file damaged after ingest must not silently count.
    broken = tmp_path / "data" / "images" / "1003.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    out = tmp_path / "eval"
    args = ["--checkpoint", str(tiny_checkpoint), "--data", str(prepared), "--split", "all", "--no-progress"]
    assert main(["evaluate", *args, "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "failures.csv" in captured.err
    failures = _read_csv(out / "failures.csv")
    assert [f["image_id"] for f in failures] == ["1003"]
    assert "truncated" in failures[0]["error"] or "corrupt" in failures[0]["error"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["n_failed"] == 1
    assert "1003" not in {r["image_id"] for r in _read_csv(out / "predictions.csv")}


def test_missing_image_is_an_error_naming_it(tmp_path, tiny_checkpoint, capsys):
    prepared = _generated_dataset(tmp_path / "data", n=6)
    (tmp_path / "data" / "images" / "1002.jpg").unlink()
    args = ["--checkpoint", str(tiny_checkpoint), "--data", str(prepared), "--split", "all"]
    assert main(["evaluate", *args, "--out", str(tmp_path / "eval")]) == 2
    assert "1002.jpg" in capsys.readouterr().err
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_user_labels_with_mean_only(tmp_path, tiny_checkpoint, capsys):
    _photos(tmp_path / "photos" / "trip", ["b.jpg", "a.png"])
    _photos(tmp_path / "photos", ["10.jpg", "9.jpg"], seed=2)
    (tmp_path / "labels.csv").write_text("id,mean\nb,6.5\n10,3.0\ntrip/a.png,7.25\n9,4.5\n")
    out = tmp_path / "eval"
    args = ["--images", str(tmp_path / "photos"), "--labels", str(tmp_path / "labels.csv"), "--no-progress"]
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), *args, "--out", str(out)]) == 0
    assert "EMD=n/a" in capsys.readouterr().out
    rows = _read_csv(out / "predictions.csv")
    assert [r["image_id"] for r in rows] == ["9", "10", "b", "trip/a.png"]  # numbers first, as numbers
    assert [float(r["true_mean"]) for r in rows] == [4.5, 3.0, 6.5, 7.25]
    assert all(r["true_std"] == "" for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels"] == "mean" and metrics["n"] == 4
    assert metrics["emd"] is None and metrics["lcc_std"] is None and metrics["srcc_std"] is None
    true, pred = np.array([4.5, 3.0, 6.5, 7.25]), np.array([float(r["pred_mean"]) for r in rows])
    assert metrics["accuracy"] == np.mean((true > 5) == (pred > 5))
    assert metrics["srcc_mean"] == pytest.approx(stats.spearmanr(true, pred)[0], abs=1e-6)
    assert metrics["rmse_mean"] == pytest.approx(math.sqrt(np.mean((pred - true) ** 2)), abs=1e-5)
    assert "only mean scores" in (out / "report.md").read_text()


def test_id_order_is_total_and_never_crashes():
    # "²".isdigit() is True but int("²") raises; "9" and "09" used to tie (order left to the input).
    ids = ["b", "10", "\u00b2", "9", "09"]
    assert sorted(ids, key=id_key) == ["09", "9", "10", "b", "\u00b2"]
    assert sorted(reversed(ids), key=id_key) == sorted(ids, key=id_key)


def test_user_labels_with_vote_counts_and_paths(tmp_path):
    _photos(tmp_path / "photos", ["x.jpg", "y.jpg"])
    header = "path," + ",".join(f"votes_{i}" for i in range(1, 11))
    (tmp_path / "votes.csv").write_text(f"{header}\nx.jpg,0,0,0,0,1,1,0,0,0,0\ny.jpg,0,0,0,0,0,0,0,2,0,0\n")
    labels = ev.load_user_labels(tmp_path / "photos", tmp_path / "votes.csv")
    assert list(labels["image_id"]) == ["x.jpg", "y.jpg"]
    assert list(labels["true_mean"]) == [5.5, 8.0]
    assert labels["true_std"].tolist() == pytest.approx([0.5, 0.0])


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("id,mean\nnothere,5\n", "not found"),
        ("id,mean\nx,11\n", "outside 1..10"),
        ("id,score\nx,5\n", "vote counts"),
        ("name,mean\nx,5\n", "'id'"),
        ("id,c1,c2,c3,c4,c5,c6,c7,c8,c9,c10\nx,0,0,0,0,0,0,0,0,0,0\n", "no votes"),
        ("id,mean\nx,5\nx,6\n", "more than once"),
    ],
)
def test_bad_user_labels_are_configuration_errors(tmp_path, csv_text, message, capsys):
    _photos(tmp_path / "photos", ["x.jpg"])
    (tmp_path / "labels.csv").write_text(csv_text)
    args = ["--images", str(tmp_path / "photos"), "--labels", str(tmp_path / "labels.csv")]
    assert main(["evaluate", "--checkpoint", "unused.pt", *args, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_configuration_errors_exit_2(tmp_path, capsys):
    prepared = _generated_dataset(tmp_path / "data", n=3)
    base = ["evaluate", "--checkpoint", "unused.pt", "--out", str(tmp_path / "o")]
    assert main([*base, "--images", str(tmp_path)]) == 2  # --images without --labels
    assert "--labels" in capsys.readouterr().err
    assert main([*base, "--data", str(prepared), "--images", str(tmp_path)]) == 2  # mutually exclusive
    capsys.readouterr()
    assert main([*base, "--data", str(tmp_path / "nowhere")]) == 2
    assert "manifest" in capsys.readouterr().err
    assert main([*base, "--data", str(prepared), "--split", "val"]) == 2  # 3 images: none in val
    assert "no images" in capsys.readouterr().err
    assert main([*base, "--data", str(prepared)]) == 2  # the checkpoint does not exist
    assert "unused.pt" in capsys.readouterr().err


def test_published_results_are_labelled_with_their_test_sets():
    by_method = {r.method: r for r in ev.PUBLISHED_RESULTS}
    assert by_method["NIMA (MobileNet)"].accuracy == 80.36 and by_method["NIMA (MobileNet)"].emd == 0.081
    assert by_method["NIMA (Inception-v2)"].srcc_mean == 0.612
    assert "random" in by_method["NIMA (MobileNet), idealo"].test_set
    assert all(r.test_set for r in ev.PUBLISHED_RESULTS)
    assert len(ev.published_results_table()) == len(ev.PUBLISHED_RESULTS)


def test_fine_tuned_checkpoint_provenance_and_tails_through_the_cli(tmp_path, tiny_checkpoint, capsys):
    import torch

    from beholder.models import load_checkpoint, save_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    provenance = {"trained_with": "beholder train", "init": {"model": "nima-mobilenet-idealo"}}
    checkpoint = save_checkpoint(tmp_path / "tuned.pt", model, provenance=provenance)
    assert torch.load(checkpoint, weights_only=True)["provenance"] == provenance
    _photos(tmp_path / "photos", ["low.jpg", "mid.jpg", "high.jpg", "mid2.jpg"])
    (tmp_path / "labels.csv").write_text("id,mean\nlow,2.5\nmid,5\nhigh,8.5\nmid2,6\n")
    out = tmp_path / "eval"
    args = ["--images", str(tmp_path / "photos"), "--labels", str(tmp_path / "labels.csv"), "--no-progress"]
    code = main(
        ["evaluate", "--checkpoint", str(checkpoint), *args, "--out", str(out), "--tail-thresholds", "3", "8"]
    )
    assert code == 0
    capsys.readouterr()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["provenance"] == provenance
    assert metrics["tail_thresholds"] == [3.0, 8.0]
    assert [metrics["tails"][r]["n"] for r in ("lower", "middle", "upper")] == [1, 2, 1]
    assert metrics["examples"] == {"lower": ["low"], "middle": ["mid", "mid2"], "upper": ["high"]}
    assert metrics["tails"]["lower"]["emd"] is None  # mean-only labels: no distributions
    rows = _read_csv(out / "predictions.csv")
    assert all(row["true_p1"] == "" for row in rows)  # no true distribution to write
    report = (out / "report.md").read_text()
    assert (
        "fine-tuned from: `nima-mobilenet-idealo`" in report
        and "| init.model | nima-mobilenet-idealo |" in report
    )
    assert "| lower tail | < 3 | 1 |" in report
    assert (out / ev.PLOT_FILES["examples"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

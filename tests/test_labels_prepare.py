"""`beholder prepare --labels ratings.csv`: your own rated photos through the one prepare pipeline."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from beholder.data.labels import DEFAULT_STD, LABEL_ROW_REASONS, distribution_from_mean, prepare_labels
from beholder.data.manifest import MANIFEST_COLUMNS, load_manifest, prepared_image_settings
from beholder.data.prepare import IMAGE_REASONS
from beholder.errors import ConfigError
from data_helpers import ava_main, write_image

SCORES = np.arange(1, 11, dtype=np.float64)


def _independent_discretised_normal(mean: float, std: float) -> np.ndarray:
    """The documented construction, computed another way: the normal's centre found with plain
    Python bisection, bin masses from math.erf at the edges i +- 0.5, renormalised over 1..10."""

    def masses(centre):
        cdf = [0.5 * (1 + math.erf((edge - centre) / (std * math.sqrt(2)))) for edge in np.arange(0.5, 11.0)]
        p = np.diff(cdf)
        if p.sum() == 0:  # far off the scale: everything on the nearest end
            p = np.eye(10)[0 if centre < 5.5 else 9]
        return p / p.sum()

    low, high = -30.0, 40.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if masses(mid) @ SCORES < mean else (low, mid)
    return masses((low + high) / 2)


def test_distribution_from_mean_is_a_discretised_normal_with_that_mean():
    means = np.array([1.0, 2.2, 5.0, 5.5, 7.9, 9.6, 10.0])
    stds = np.array([1.4, 0.3, 1.4, 2.5, 0.8, 1.4, 1.4])
    p = distribution_from_mean(means, stds)
    assert p.shape == (7, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1:-1] @ SCORES, means[1:-1], atol=1e-9)  # the mean is kept exactly
    for row, mean, std in zip(p[1:-1], means[1:-1], stds[1:-1]):
        np.testing.assert_allclose(row, _independent_discretised_normal(mean, std), atol=1e-9)
    # At the ends of the scale the distribution piles onto the end bin.
    assert p[0, 0] > 0.999 and p[-1, -1] > 0.999
    np.testing.assert_allclose(distribution_from_mean(5.5), distribution_from_mean([5.5], [DEFAULT_STD]))


def _photos(root, names, seed=0):
    for n, name in enumerate(names):
        write_image(root / name, 80, 64, seed=seed + n)


def _mean_only_csv(tmp_path, n=12):
    """ratings.csv with paths in a subfolder and mean-only labels (some with std)."""
    names = [f"photos/shot_{i:02d}.jpg" for i in range(n)]
    _photos(tmp_path, names)
    rng = np.random.default_rng(3)
    rows = pd.DataFrame({"path": names, "mean": np.round(rng.uniform(2, 9, n), 3)})
    rows["std"] = ["" if i % 3 else f"{1 + i / 10:.2f}" for i in range(n)]  # empty: the default
    return rows


def test_mean_only_csv_with_subfolder_paths_keeps_the_users_names(tmp_path, capsys):
    rows = _mean_only_csv(tmp_path)
    rows.to_csv(tmp_path / "ratings.csv", index=False)
    out = tmp_path / "prepared"
    argv = ["prepare", "--labels", str(tmp_path / "ratings.csv"), "--out", str(out), "--image-size", "48"]
    assert ava_main([*argv, "--no-progress", "--min-side", "32"]) == 0
    assert "prepare: 12 images" in capsys.readouterr().out

    manifest = load_manifest(out, check_files=True)
    assert list(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    assert set(manifest["image_id"]) == set(rows["path"])  # no id column: the path is the name
    assert (manifest["label_path"] == manifest["image_id"]).all() and (manifest["label_kind"] == "mean").all()
    by_path = manifest.set_index("label_path")
    for _, row in rows.iterrows():
        got = by_path.loc[row["path"]]
        std = float(row["std"]) if row["std"] else DEFAULT_STD
        p = got[[f"votes_{i}" for i in range(1, 11)]].to_numpy(dtype=np.float64)
        np.testing.assert_allclose(p, _independent_discretised_normal(row["mean"], std), atol=1e-9)
        assert got["mean"] == pytest.approx(row["mean"], abs=1e-9)
        assert got["source_path"] == str((tmp_path / row["path"]).resolve())
    assert manifest["n_votes"].isna().all()  # no vote counts: unknown, not 0
    assert prepared_image_settings(out) == {
        "image_size": (48, 48),
        "resample": "bilinear",
        "jpeg_quality": 95,
    }


def test_reordered_rows_give_the_same_labels_for_the_same_files(tmp_path):
    """The symlink recipe this replaces gave a photo another photo's votes after a reorder."""
    rows = _mean_only_csv(tmp_path, n=30)
    rows["id"] = [f"hotel-{i}" for i in range(30)]
    rows.to_csv(tmp_path / "ratings.csv", index=False)
    options = {"image_size": 32, "min_side": 32, "progress": False}
    prepare_labels(tmp_path / "ratings.csv", tmp_path / "a", **options)
    columns = ["image_id", "split", *[f"votes_{i}" for i in range(1, 11)], "n_votes", "mean", "std"]
    columns += ["source_path", "cache_path", "width", "height"]
    before = pd.read_parquet(tmp_path / "a" / "manifest.parquet").set_index("label_path")[columns]

    # Shuffle the rows and insert a new photo in the middle, then prepare again: in place
    # (incremental) and into a fresh directory.
    _photos(tmp_path, ["photos/new.jpg"], seed=99)
    shuffled = rows.sample(frac=1.0, random_state=1)
    new_row = pd.DataFrame({"path": ["photos/new.jpg"], "mean": [6.0], "std": [""], "id": ["new"]})
    pd.concat([shuffled.iloc[:10], new_row, shuffled.iloc[10:]]).to_csv(tmp_path / "ratings.csv", index=False)
    summary = prepare_labels(tmp_path / "ratings.csv", tmp_path / "a", **options)
    assert summary["images"] == {"processed": 1, "reused": 30}
    prepare_labels(tmp_path / "ratings.csv", tmp_path / "b", **options)

    after_a = pd.read_parquet(tmp_path / "a" / "manifest.parquet").set_index("label_path")[columns]
    after_b = pd.read_parquet(tmp_path / "b" / "manifest.parquet").set_index("label_path")[columns]
    assert len(after_a) == len(after_b) == 31
    pd.testing.assert_frame_equal(after_a.loc[before.index], before)
    pd.testing.assert_frame_equal(
        after_b.loc[before.index].drop(columns=["source_path"]), before.drop(columns=["source_path"])
    )
    # Each file's labels are its own row's, whatever the order.
    np.testing.assert_allclose(
        after_b.loc[rows["path"], "mean"].to_numpy(), rows["mean"].to_numpy(), atol=1e-9
    )
    assert after_b.loc[rows["path"], "image_id"].tolist() == rows["id"].tolist()


def test_votes_and_probability_csvs_with_ids_and_splits(tmp_path):
    _photos(tmp_path / "imgs", ["a.jpg", "b.png", "c.jpg", "d.jpg"])
    votes = pd.DataFrame(
        {
            "id": ["A", "B", "C", "D"],
            "path": ["a.jpg", "b.png", "c.jpg", "d.jpg"],
            **{f"votes_{i}": [i, 0, 3, 1] for i in range(1, 11)},
            "split": ["train", "VAL", "test", ""],
        }
    )
    votes.to_csv(tmp_path / "votes.csv", index=False)
    out = tmp_path / "prepared"
    # --images: the CSV lives elsewhere than the photos.
    summary = prepare_labels(
        tmp_path / "votes.csv", out, images_dir=tmp_path / "imgs", image_size=32, min_side=32, progress=False
    )
    manifest = load_manifest(out).set_index("image_id")
    assert summary["manifest_rows"] == 3 and summary["rejected"]["zero_votes"] == 1  # B has no votes
    assert manifest.loc["A", "split"] == "train" and manifest.loc["C", "split"] == "test"
    assert manifest.loc["A", "n_votes"] == sum(range(1, 11))
    assert manifest.loc["A", "votes_7"] == 7 and manifest.loc["A", "mean"] == pytest.approx(
        sum(i * i for i in range(1, 11)) / 55
    )
    assert manifest.loc["D", "split"] in ("train", "val", "test")

    p = pd.DataFrame(
        {
            "path": ["imgs/a.jpg", "imgs/c.jpg"],
            **{f"p{i}": [0.2 if i < 6 else 0.0, 0.1] for i in range(1, 11)},
        }
    )
    p.to_csv(tmp_path / "p.csv", index=False)
    prepare_labels(tmp_path / "p.csv", tmp_path / "p", image_size=32, min_side=32, progress=False)
    manifest = load_manifest(tmp_path / "p").set_index("image_id")
    np.testing.assert_allclose(manifest.loc["imgs/a.jpg", "mean"], 3.0)
    np.testing.assert_allclose(manifest.loc["imgs/a.jpg", [f"votes_{i}" for i in range(1, 11)]].sum(), 1.0)


def test_bad_rows_are_rejected_by_row_with_reasons(tmp_path):
    _photos(tmp_path, [f"{i}.jpg" for i in range(10)])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    lines = [
        "path,mean,std,split",
        "0.jpg,5.5,,",  # good
        "1.jpg,inf,,",  # non_finite_value
        "2.jpg,nan,,",  # non_finite_value
        "3.jpg,ten,,",  # non_numeric_value
        "4.jpg,11,,",  # mean_out_of_range
        "5.jpg,5,-1,",  # bad_std
        "6.jpg,5,,holdout",  # bad_split
        ",5,,",  # missing_path
        "7.jpg,4,,",  # conflicting_duplicate (with the next row)
        "./7.jpg,6,,",  # conflicting_duplicate: the same file, other labels
        "8.jpg,4,,",  # the same file twice with the same labels: one kept
        "8.jpg,4,,",
        "missing.jpg,5,,",  # missing_file
        "broken.jpg,5,,",  # corrupt_image
        "9.jpg,1e300,,",  # non_finite_value: beyond any real value
    ]
    (tmp_path / "ratings.csv").write_text("\ufeff" + "\n".join(lines) + "\n")  # a BOM, as Excel writes
    summary = prepare_labels(
        tmp_path / "ratings.csv", tmp_path / "out", image_size=32, min_side=32, progress=False
    )
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv", keep_default_na=False)
    by_row = rejected[rejected["detail"].str.startswith("line ")]
    lines_of = by_row["detail"].str.extract(r"^line (\d+):")[0].astype(int)
    assert dict(zip(lines_of, by_row["reason"])) == {
        3: "non_finite_value",
        4: "non_finite_value",
        5: "non_numeric_value",
        6: "mean_out_of_range",
        7: "bad_std",
        8: "bad_split",
        9: "missing_path",
        10: "conflicting_duplicate",
        11: "conflicting_duplicate",
        13: "duplicate_id",
        16: "non_finite_value",
    }
    by_image = rejected[~rejected["detail"].str.startswith("line ")]
    assert dict(zip(by_image["image_id"], by_image["reason"])) == {
        "missing.jpg": "missing_file",
        "broken.jpg": "corrupt_image",
    }
    assert set(rejected["reason"]) <= set(LABEL_ROW_REASONS + IMAGE_REASONS)
    assert sorted(load_manifest(tmp_path / "out")["image_id"]) == ["0.jpg", "8.jpg"]
    assert summary["label_rows"] == 15 and summary["manifest_rows"] == 2


def test_usage_errors_exit_2(tmp_path, capsys):
    (tmp_path / "ratings.csv").write_text("file,mean\na.jpg,5\n")
    base = ["prepare", "--labels", str(tmp_path / "ratings.csv"), "--out", str(tmp_path / "out")]
    assert ava_main(base) == 2
    assert "needs a 'path' column" in capsys.readouterr().err
    (tmp_path / "ratings.csv").write_text("path,votes_1,votes_2\na.jpg,5,3\n")
    assert ava_main(base) == 2
    assert "lacks ['votes_3'" in capsys.readouterr().err
    (tmp_path / "ratings.csv").write_text("path,score\na.jpg,5\n")
    assert ava_main(base) == 2
    assert "needs votes_1..votes_10, p1..p10 or mean" in capsys.readouterr().err
    (tmp_path / "ratings.csv").write_text("path,mean\na.jpg,5\n")
    assert ava_main([*base, "--image-size", "100000"]) == 2
    assert "32..2048" in capsys.readouterr().err
    assert ava_main([*base, "--val-fraction", "0.6", "--test-fraction", "0.5"]) == 2
    assert ava_main(["prepare", "--labels", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "ratings CSV not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_drawn_splits_follow_the_fractions_and_the_seed(tmp_path):
    from beholder.data.labels import _hash_splits

    keys = [f"photos/{i}.jpg" for i in range(4000)]
    splits = pd.Series(_hash_splits(keys, 0, 0.1, 0.2))
    shares = splits.value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.2, abs=0.03) and shares["val"] == pytest.approx(0.1, abs=0.03)
    assert _hash_splits(keys[::-1], 0, 0.1, 0.2) == splits.tolist()[::-1]  # per file, not per position
    assert _hash_splits(keys, 1, 0.1, 0.2) != splits.tolist()


def test_summary_records_inputs_and_options(tmp_path):
    rows = _mean_only_csv(tmp_path, n=3)
    rows.to_csv(tmp_path / "ratings.csv", index=False)
    prepare_labels(
        tmp_path / "ratings.csv", tmp_path / "out", image_size=40, min_side=32, seed=5, progress=False
    )
    summary = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert summary["inputs"]["labels"] == str(tmp_path / "ratings.csv")
    assert summary["options"]["label_kind"] == "mean" and summary["options"]["seed"] == 5
    assert summary["options"]["image_size"] == [40, 40]
    with pytest.raises(ConfigError, match="default_std"):
        prepare_labels(tmp_path / "ratings.csv", tmp_path / "out", default_std=0)


@pytest.mark.slow
def test_300_mean_rated_photos_go_through_prepare_train_evaluate_and_score(tmp_path, monkeypatch, capsys):
    """Issue 14's path for a domain user: a CSV of mean ratings, photos in a subfolder."""
    import beholder.cli as cli
    from conftest import asset
    from train_helpers import TINY, brightness_to_mean, make_image

    weights = asset("weights/keras_mobilenet_v1_0.25/mobilenet_2_5_224_tf_no_top.h5")
    monkeypatch.setenv("BEHOLDER_WEIGHTS_PATH", str(weights.parent))
    rng = np.random.default_rng(0)
    rows = []
    (tmp_path / "shop" / "photos").mkdir(parents=True)
    for i in range(300):
        brightness = float(rng.uniform(0, 1))
        make_image(brightness, rng, 48).save(tmp_path / "shop" / "photos" / f"item_{i:03d}.jpg", quality=90)
        rows.append(
            {
                "sku": f"SKU-{i:03d}",
                "path": f"photos/item_{i:03d}.jpg",
                "mean": brightness_to_mean(brightness),
            }
        )
    pd.DataFrame(rows).rename(columns={"sku": "id"}).to_csv(tmp_path / "shop" / "ratings.csv", index=False)
    prepared, run = tmp_path / "prepared", tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # paths resolve against the CSV's folder, not the working directory

    best = str(run / "checkpoints" / "best.pt")
    on_cpu = ["--device", "cpu", "--no-progress"]
    photos = ["shop/photos/item_000.jpg", "shop/photos/item_001.jpg"]
    steps = [
        [
            "prepare",
            "--labels",
            "shop/ratings.csv",
            "--out",
            str(prepared),
            "--image-size",
            "40",
            "--min-side",
            "32",
        ],
        [
            "train",
            "--data",
            str(prepared),
            "--out",
            str(run),
            *TINY,
            "phase1.epochs=1",
            "phase2.epochs=1",
            "device=cpu",
        ],
        [
            "evaluate",
            "--checkpoint",
            best,
            "--data",
            str(prepared),
            "--out",
            str(run / "eval"),
            "--no-plots",
            *on_cpu,
        ],
        ["score", "--checkpoint", best, "--format", "csv", *on_cpu, *photos],
    ]
    for argv in steps:
        capsys.readouterr()
        assert cli.main(argv) == 0, argv[0]
    scored = capsys.readouterr().out
    assert "item_000.jpg" in scored and "item_001.jpg" in scored

    manifest = load_manifest(prepared)
    assert len(manifest) == 300 and manifest["image_id"].str.startswith("SKU-").all()
    predictions = pd.read_csv(run / "eval" / "predictions.csv")
    test_ids = set(manifest.loc[manifest["split"] == "test", "image_id"])
    assert set(predictions["image_id"]) == test_ids  # the shop's own ids in the evaluation output
    truth = manifest.set_index("image_id").loc[predictions["image_id"], "mean"].to_numpy()
    np.testing.assert_allclose(predictions["true_mean"].to_numpy(), truth, atol=1e-5)


def test_hostile_paths_and_lines_get_clear_reasons(tmp_path):
    import os

    _photos(tmp_path, ["ok.jpg"])
    (tmp_path / "folder.jpg").mkdir()
    os.symlink(tmp_path / "loop_b.jpg", tmp_path / "loop_a.jpg")
    os.symlink(tmp_path / "loop_a.jpg", tmp_path / "loop_b.jpg")
    os.mkfifo(tmp_path / "fifo.jpg")
    names = ["ok.jpg", "folder.jpg", "loop_a.jpg", "fifo.jpg", "/dev/zero", "gone.jpg"]
    (tmp_path / "ratings.csv").write_text("path,mean\n" + "".join(f"{name},5\n" for name in names))
    prepare_labels(tmp_path / "ratings.csv", tmp_path / "out", image_size=32, min_side=32, progress=False)
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv").set_index("image_id")
    assert rejected.loc["gone.jpg", "reason"] == "missing_file"
    for name in ("folder.jpg", "fifo.jpg", "/dev/zero"):
        assert rejected.loc[name, "reason"] == "unreadable_file"
        assert rejected.loc[name, "detail"] == "not a regular file"
    assert rejected.loc["loop_a.jpg", "reason"] == "unreadable_file"
    assert "symbolic links" in rejected.loc["loop_a.jpg", "detail"]  # ELOOP, not "file not found"

    with open(tmp_path / "ratings.csv", "wb") as handle:  # a "CSV" with no newline in 1 MB
        handle.write(b"path,mean\n" + b"x" * (1 << 20))
    with pytest.raises(ConfigError, match="line 2 is 1,048,576 bytes"):
        prepare_labels(tmp_path / "ratings.csv", tmp_path / "out2", progress=False)

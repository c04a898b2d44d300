"""`beholder ava prepare`: manifest from real label rows, the bad-image zoo, incremental reruns."""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import math
import os
import shutil
import threading

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import beholder.data.prepare as prepare_module
from beholder.data.ava import ROW_REASONS
from beholder.data.manifest import MANIFEST_COLUMNS, load_manifest
from beholder.data.prepare import IMAGE_REASONS, prepare
from beholder.errors import ConfigError
from conftest import asset
from data_helpers import GENERIC_TEST, REAL_LABELS_VAL, ava_line, ava_main, image_bytes, write_image

GOOD_VOTES = [1, 2, 5, 10, 20, 15, 8, 4, 2, 1]


@pytest.fixture
def count_decodes(monkeypatch):
    """Count full decodes done by prepare (its workers call prepare_module.open_image)."""
    calls = []
    original = prepare_module.open_image

    def counting(source, *args, **kwargs):
        calls.append(str(source))
        return original(source, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "open_image", counting)
    return calls


def test_manifest_from_real_rows_matches_independent_computation(tmp_path, capsys):
    lines = asset(REAL_LABELS_VAL).read_text().splitlines()[:1200]
    official_test = {int(x) for x in asset(GENERIC_TEST).read_text().split()}
    ava_txt = tmp_path / "AVA.txt"
    ava_txt.write_text("\n".join(lines) + "\n")
    all_ids = [int(line.split()[1]) for line in lines]
    test_ids = [i for i in all_ids if i in official_test][:25]
    other_ids = [i for i in all_ids if i not in official_test][:55]
    assert len(test_ids) == 25, "the first rows of val.txt hold enough official test ids"
    sizes = {}
    for k, image_id in enumerate(test_ids + other_ids):
        sizes[image_id] = (80 + 7 * (k % 9), 70 + 5 * (k % 7))
        write_image(tmp_path / "images" / f"{image_id}.jpg", *sizes[image_id], seed=k)

    out = tmp_path / "prepared"
    argv = ["ava", "prepare", "--ava-txt", str(ava_txt), "--images", str(tmp_path / "images")]
    argv += [
        "--out",
        str(out),
        "--test-list",
        str(asset(GENERIC_TEST)),
        "--val-fraction",
        "0.1",
        "--seed",
        "0",
    ]
    argv += ["--image-size", "32", "--workers", "2", "--no-progress"]
    assert ava_main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("prepare: 80 images") and "missing_file 1120" in printed

    # Independent expectations: splits from the documented rule over all label rows.
    rest = np.array(sorted(set(all_ids) - official_test))
    n_val = round(0.1 * len(rest))
    val_ids = set(rest[np.random.default_rng(0).permutation(len(rest))[:n_val]].tolist())
    expected_split = {
        i: "test" if i in official_test else "val" if i in val_ids else "train" for i in all_ids
    }
    rows = {int(line.split()[1]): [int(x) for x in line.split()] for line in lines}

    manifest = load_manifest(out)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert sorted(manifest["image_id"]) == sorted(sizes) and manifest["image_id"].is_unique
    for row in manifest.itertuples(index=False):
        fields = rows[row.image_id]
        votes = fields[2:12]
        n = sum(votes)
        mean = sum((i + 1) * v for i, v in enumerate(votes)) / n
        std = math.sqrt(sum(v * (i + 1 - mean) ** 2 for i, v in enumerate(votes)) / n)
        assert row.split == expected_split[row.image_id]
        assert [getattr(row, f"votes_{i}") for i in range(1, 11)] == votes
        assert row.n_votes == n
        assert row.mean == pytest.approx(mean, abs=1e-12) and row.std == pytest.approx(std, abs=1e-12)
        assert (row.tag1, row.tag2, row.challenge_id) == tuple(fields[12:15])
        assert (row.width, row.height) == sizes[row.image_id]
        assert row.aspect_ratio == pytest.approx(sizes[row.image_id][0] / sizes[row.image_id][1])
        assert row.file_bytes == os.path.getsize(tmp_path / "images" / f"{row.image_id}.jpg")
        assert row.mode == "RGB" and row.format == "JPEG"
        assert os.path.isabs(row.source_path) and os.path.samefile(
            row.source_path, tmp_path / "images" / f"{row.image_id}.jpg"
        )
        with Image.open(row.cache_path) as cached:
            assert cached.format == "JPEG" and cached.size == (32, 32)

    groups = {s: set(manifest.loc[manifest["split"] == s, "image_id"]) for s in ("train", "val", "test")}
    assert groups["test"] == set(test_ids)
    assert not (groups["train"] & groups["val"]) and not (groups["train"] | groups["val"]) & groups["test"]

    summary = json.loads((out / "prepare.json").read_text())
    assert summary["splits"] == {s: len(g) for s, g in groups.items()}
    assert summary["manifest_rows"] == 80 and summary["label_rows"] == 1200
    assert summary["rejected"]["missing_file"] == 1120 and summary["rejected_total"] == 1120
    assert summary["images"] == {"processed": 80, "reused": 0}
    assert summary["images_per_second"] > 0 and summary["seconds"] > 0
    rejected = pd.read_csv(out / "rejected.csv")
    assert list(rejected.columns) == ["image_id", "reason", "detail"]
    assert set(rejected["image_id"]) == set(all_ids) - set(sizes)


def _zoo(tmp_path):
    """AVA.txt with malformed rows, and an image directory with one file per failure mode."""
    images = tmp_path / "images"
    images.mkdir()
    good = {}
    write_image(images / "1.jpg", 120, 90, seed=1)
    good[1] = ("RGB", 120, 90)
    # 2: no file at all
    (images / "3.jpg").write_bytes(b"")
    (images / "4.jpg").write_bytes(image_bytes(120, 90, seed=4)[:900])  # truncated
    (images / "5.jpg").write_text("<!DOCTYPE html><html><body>Not found</body></html>")
    (images / "6.jpg").write_bytes(np.random.default_rng(6).bytes(3000))
    write_image(images / "7.jpg", 10, 10, seed=7)  # tiny
    write_image(images / "8.jpg", 100, 80, seed=8, mode="L")
    good[8] = ("L", 100, 80)
    write_image(images / "9.png", 90, 100, seed=9, fmt="PNG", mode="RGBA")
    good[9] = ("RGBA", 90, 100)
    sixteen = (np.arange(100 * 70, dtype=np.uint16).reshape(70, 100) * 9).astype(np.uint16)
    Image.fromarray(sixteen).save(images / "10.png")
    good[10] = (Image.open(images / "10.png").mode, 100, 70)
    write_image(images / "11.jpg", 100, 75, seed=11, mode="CMYK")
    good[11] = ("CMYK", 100, 75)
    write_image(images / "12.jpg", 200, 150, seed=12)  # more pixels than the limit below
    rotated = Image.open(io.BytesIO(image_bytes(120, 90, seed=13)))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    rotated.save(images / "13.jpg", exif=exif)
    good[13] = ("RGB", 90, 120)
    write_image(images / "14.jpg", 100, 100, seed=14)
    write_image(images / "14.png", 100, 100, seed=14, fmt="PNG")  # .jpg wins
    good[14] = ("RGB", 100, 100)
    (images / "15.png").write_bytes(image_bytes(120, 90, seed=15, fmt="PNG")[:400])
    (images / "16.jpg").mkdir()  # a directory is not an image file
    write_image(images / "17.jpg", 300, 40, seed=17)  # thin: shorter side below 64
    write_image(images / "999.jpg", 100, 100, seed=999)  # no label row
    (images / "18.x1y2.part").write_bytes(b"partial download")  # never counted as an image

    lines = [ava_line(i, i, GOOD_VOTES) for i in range(1, 19)]
    lines += [
        ava_line(19, 1, GOOD_VOTES),  # duplicate_id
        ava_line(20, 20, [0] * 10),  # zero_votes
        "21 21 1 2",  # bad_column_count
        ava_line(22, 22, GOOD_VOTES).replace(" 20 ", " 2e1 "),  # non_integer_field
    ]
    (tmp_path / "AVA.txt").write_text("\n".join(lines) + "\n")
    expected = {
        2: "missing_file",
        3: "corrupt_image",
        4: "corrupt_image",
        5: "corrupt_image",
        6: "corrupt_image",
        7: "too_small",
        12: "too_large",
        15: "corrupt_image",
        16: "missing_file",
        17: "too_small",
        18: "missing_file",
        1: "duplicate_id",
        20: "zero_votes",
        21: "bad_column_count",
        22: "non_integer_field",
    }
    return good, expected


def _run(tmp_path, **kwargs):
    options = {"image_size": 32, "max_pixels": 20_000, "workers": 2, "progress": False}
    options.update(kwargs)
    return prepare(tmp_path / "AVA.txt", tmp_path / "images", tmp_path / "prepared", **options)


def test_bad_rows_and_images_are_rejected_and_rerun_is_incremental(tmp_path, count_decodes):
    good, expected = _zoo(tmp_path)
    out = tmp_path / "prepared"
    summary = _run(tmp_path)

    rejected = pd.read_csv(out / "rejected.csv")
    got = {}
    for image_id, reason in zip(rejected["image_id"], rejected["reason"]):
        got.setdefault(int(image_id), set()).add(reason)
    assert got == {i: {r} for i, r in expected.items()}
    details = dict(zip(rejected["image_id"], rejected["detail"]))
    assert "truncated" in details[4] and "empty" in details[3] and "not an image" in details[5]
    assert "10x10" in details[7] and "too many pixels" in details[12]
    assert set(rejected["reason"]) <= set(ROW_REASONS + IMAGE_REASONS)

    manifest = load_manifest(out)
    assert sorted(manifest["image_id"]) == sorted(good)
    for row in manifest.itertuples(index=False):
        assert (row.mode, row.width, row.height) == good[row.image_id], row.image_id
        with Image.open(row.cache_path) as cached:
            assert cached.size == (32, 32) and cached.mode == "RGB"
    assert manifest.set_index("image_id").loc[14, "source_path"].endswith("14.jpg")
    assert summary["unlabelled_image_files"] == 1
    assert summary["rejected"]["corrupt_image"] == 5 and summary["rejected_total"] == len(expected)
    files = 15  # ids 1..18 with a readable file entry: all but 2, 16 (a directory) and 18 (a .part)
    assert summary["images"] == {"processed": files, "reused": 0}
    assert len(count_decodes) == files

    # Nothing changed: nothing is decoded again, and the outputs are the same.
    count_decodes.clear()
    first_manifest = pd.read_parquet(out / "manifest.parquet")
    again = _run(tmp_path)
    assert count_decodes == [] and again["images"] == {"processed": 0, "reused": files}
    pd.testing.assert_frame_equal(pd.read_parquet(out / "manifest.parquet"), first_manifest)
    pd.testing.assert_frame_equal(pd.read_csv(out / "rejected.csv"), rejected)

    # Changed, repaired or lost files are redone, and only those.
    write_image(tmp_path / "images" / "1.jpg", 150, 100, seed=100)  # changed
    write_image(tmp_path / "images" / "4.jpg", 120, 90, seed=4)  # repaired
    (out / "cache" / "32x32_q95_bilinear" / "8.jpg").unlink()  # cache lost
    count_decodes.clear()
    third = _run(tmp_path)
    assert sorted(os.path.basename(p) for p in count_decodes) == ["1.jpg", "4.jpg", "8.jpg"]
    assert third["images"] == {"processed": 3, "reused": files - 3}
    manifest = load_manifest(out, check_files=True).set_index("image_id")
    assert 4 in manifest.index and tuple(manifest.loc[1, ["width", "height"]]) == (150, 100)

    # A looser size limit only redoes the images that now pass (they need their cache file).
    count_decodes.clear()
    fourth = _run(tmp_path, min_side=8)
    assert sorted(os.path.basename(p) for p in count_decodes) == ["17.jpg", "7.jpg"]
    assert fourth["images"]["processed"] == 2
    assert 7 in set(load_manifest(out)["image_id"]) and 17 in set(load_manifest(out)["image_id"])


def test_prepare_paths_are_relative_and_the_directory_can_move(tmp_path):
    data = tmp_path / "data"
    for i in range(1, 6):
        write_image(data / "images" / f"{i}.jpg", 80, 80, seed=i)
    (data / "AVA.txt").write_text("\n".join(ava_line(i, i, GOOD_VOTES) for i in range(1, 6)) + "\n")
    prepare(data / "AVA.txt", data / "images", data / "prepared", image_size=32, progress=False)
    raw = pd.read_parquet(data / "prepared" / "manifest.parquet")
    assert raw["cache_path"].str.startswith("cache/32x32_q95_bilinear/").all()
    assert raw["source_path"].str.startswith("../images/").all()

    moved = tmp_path / "elsewhere"
    shutil.move(str(data), str(moved))
    manifest = load_manifest(moved / "prepared", check_files=True)
    assert all(os.path.isfile(p) and p.startswith(str(moved)) for p in manifest["source_path"])
    assert len(load_manifest(moved / "prepared" / "manifest.parquet", splits="train")) == 5
    assert load_manifest(moved / "prepared", splits=["val", "test"]).empty

    os.unlink(manifest["cache_path"][0])
    with pytest.raises(ConfigError, match="1 cache file"):
        load_manifest(moved / "prepared", check_files=True)
    with pytest.raises(ConfigError, match="unknown split"):
        load_manifest(moved / "prepared", splits="training")


def test_test_list_beside_ava_txt_is_found_and_splits_are_seeded(tmp_path):
    ids = list(range(1, 41))
    for i in ids:
        write_image(tmp_path / "images" / f"{i}.jpg", 72, 72, seed=i)
    (tmp_path / "AVA.txt").write_text("\n".join(ava_line(i, i, GOOD_VOTES) for i in ids) + "\n")
    lists = tmp_path / "aesthetics_image_lists"
    lists.mkdir()
    (lists / "generic_test.jpgl").write_text("3\n5\n7\n1000\n")
    summary = _run(tmp_path, val_fraction=0.25, seed=3)
    assert summary["inputs"]["test_list"].endswith("generic_test.jpgl")
    assert summary["test_list_ids_without_label"] == 1
    manifest = load_manifest(tmp_path / "prepared")
    assert set(manifest.loc[manifest["split"] == "test", "image_id"]) == {3, 5, 7}
    val = set(manifest.loc[manifest["split"] == "val", "image_id"])
    assert len(val) == round(0.25 * 37)
    again = _run(tmp_path, val_fraction=0.25, seed=3)
    assert set(load_manifest(tmp_path / "prepared").query("split == 'val'")["image_id"]) == val
    assert again["images"]["processed"] == 0  # a new split does not touch the images
    _run(tmp_path, val_fraction=0.25, seed=4)
    assert set(load_manifest(tmp_path / "prepared").query("split == 'val'")["image_id"]) != val


def test_fast_decode_cache_matches_full_decode(tmp_path):
    """JPEG draft decoding before an antialiasing resize gives (nearly) the same cache pixels."""
    write_image(tmp_path / "images" / "1.jpg", 800, 600, seed=1)
    (tmp_path / "AVA.txt").write_text(ava_line(1, 1, GOOD_VOTES) + "\n")
    caches = []
    for fast in (True, False):
        out = tmp_path / f"prepared_{fast}"
        prepare(
            tmp_path / "AVA.txt", tmp_path / "images", out, fast_decode=fast, image_size=128, progress=False
        )
        manifest = load_manifest(out)
        assert tuple(manifest.loc[0, ["width", "height"]]) == (800, 600)
        caches.append(np.asarray(Image.open(manifest.loc[0, "cache_path"]), dtype=np.float64))
    assert np.abs(caches[0] - caches[1]).mean() < 3.0


def test_cli_usage_errors_exit_2(tmp_path, capsys):
    (tmp_path / "AVA.txt").write_text(ava_line(1, 1, GOOD_VOTES) + "\n")
    base = ["ava", "prepare", "--ava-txt", str(tmp_path / "AVA.txt"), "--out", str(tmp_path / "out")]
    assert ava_main([*base, "--images", str(tmp_path / "no-such-dir")]) == 2
    assert "images directory not found" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    assert ava_main([*base, "--images", str(tmp_path / "images"), "--val-fraction", "1.5"]) == 2
    assert "val_fraction" in capsys.readouterr().err
    assert ava_main([*base, "--images", str(tmp_path / "images"), "--test-list", "nope.jpgl"]) == 2
    # No usable image at all is not a usage error, but not a success either.
    assert ava_main([*base, "--images", str(tmp_path / "images"), "--no-progress"]) == 1
    assert "0 images" in capsys.readouterr().out


def test_a_failure_midway_keeps_the_finished_images_for_the_rerun(tmp_path, monkeypatch, count_decodes):
    """A full disk (or Ctrl-C) halfway through: the rerun redoes only the images not finished."""
    images, out = tmp_path / "images", tmp_path / "prepared"
    lines = [ava_line(i, i, GOOD_VOTES) for i in range(1, 9)]
    (tmp_path / "AVA.txt").write_text("\n".join(lines) + "\n")
    for i in range(1, 9):
        write_image(images / f"{i}.jpg", seed=i)
    original = prepare_module._process_image
    done = []

    def failing(job):
        if len(done) == 5:
            raise OSError(28, "No space left on device")
        done.append(job.key)
        return original(job)

    monkeypatch.setattr(prepare_module, "_process_image", failing)
    with pytest.raises(OSError, match="No space left"):
        prepare(tmp_path / "AVA.txt", images, out, val_fraction=0.0, workers=1, progress=False)
    assert not (out / "manifest.parquet").exists()

    monkeypatch.setattr(prepare_module, "_process_image", original)
    count_decodes.clear()
    summary = prepare(tmp_path / "AVA.txt", images, out, val_fraction=0.0, workers=1, progress=False)
    # Every image finished before the failure is kept (one worker: the five before the failing one).
    assert summary["images"]["reused"] >= 5
    assert summary["images"]["processed"] + summary["images"]["reused"] == 8
    assert len(count_decodes) == summary["images"]["processed"]
    assert sorted(load_manifest(out)["image_id"]) == list(range(1, 9))


class _RunningFuture(cf.Future):
    """A job that is already running when its sibling fails: it cannot be cancelled, and it
    finishes (with ``value``) at the moment the caller tries to cancel it."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        self.set_running_or_notify_cancel()

    def cancel(self) -> bool:
        if not self.done():
            self.set_result(self.value)
        return False


class _ScriptedExecutor(cf.Executor):
    """Runs nothing: item "fail" fails at once, every other item is a _RunningFuture."""

    def __init__(self):
        self.submitted = []

    def submit(self, fn, item):
        self.submitted.append(item)
        if item == "fail":
            future = cf.Future()
            future.set_exception(OSError(28, "No space left on device"))
            return future
        return _RunningFuture(f"result of {item}")


def test_imap_bounded_keeps_the_results_of_jobs_running_when_one_fails():
    """Deterministic: the sibling finishes after the failure has been seen, and is still yielded."""
    executor = _ScriptedExecutor()
    results = []
    with pytest.raises(OSError, match="No space left"):
        for item, result in prepare_module.imap_bounded(executor, str, ["fail", "b", "queued"], 2):
            results.append((item, result))
    assert results == [("b", "result of b")]
    assert executor.submitted == ["fail", "b"]  # nothing new is submitted after a failure


def test_imap_bounded_with_threads_yields_every_finished_sibling():
    """Job 0 fails; jobs 1-3 are running and only finish once it has failed: all three are kept."""
    failed = threading.Event()
    running = [threading.Event() for _ in range(4)]

    def job(n):
        if n == 0:
            assert all(event.wait(60) for event in running[1:])  # 1-3 are running: not cancellable
            failed.set()
            raise OSError(28, "No space left on device")
        if n < 4:
            running[n].set()
        assert failed.wait(60)
        return n * 10

    results = {}
    with cf.ThreadPoolExecutor(4) as pool, pytest.raises(OSError):
        for item, value in prepare_module.imap_bounded(pool, job, range(8), 4):
            results[item] = value
    assert {1, 2, 3} <= set(results) and 0 not in results
    assert results == {n: n * 10 for n in results}


def test_a_rerun_removes_temporaries_a_killed_run_left(tmp_path):
    """kill -9 during a cache write leaves `.<name>.<random>.tmp`; nothing else can clean it up."""
    (tmp_path / "AVA.txt").write_text(ava_line(1, 1, GOOD_VOTES) + "\n")
    write_image(tmp_path / "images" / "1.jpg", seed=1)
    out = tmp_path / "prepared"
    prepare(tmp_path / "AVA.txt", tmp_path / "images", out, image_size=32, progress=False)
    cache_dir = out / "cache" / "32x32_q95_bilinear"
    stale = [cache_dir / ".1.jpg.0123456789ab.tmp", out / ".manifest.parquet.ba9876543210.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = cache_dir / "notes.tmp"  # not one of ours: not a hidden temporary
    keep.write_bytes(b"x")
    prepare(tmp_path / "AVA.txt", tmp_path / "images", out, image_size=32, progress=False)
    assert not any(path.exists() for path in stale)
    assert keep.exists()
    assert sorted(p.name for p in cache_dir.iterdir()) == ["1.jpg", "notes.tmp"]


def test_out_of_range_sizes_are_usage_errors_before_any_work(tmp_path, capsys):
    (tmp_path / "AVA.txt").write_text(ava_line(1, 1, GOOD_VOTES) + "\n")
    (tmp_path / "images").mkdir()
    base = ["ava", "prepare", "--ava-txt", str(tmp_path / "AVA.txt"), "--images", str(tmp_path / "images")]
    base += ["--out", str(tmp_path / "out"), "--no-progress"]
    for option, value, words in [
        ("--image-size", "100000", "image_size must be an integer in 32..2048, got 100000"),
        ("--image-size", "8", "32..2048"),
        ("--quality", "0", "jpeg_quality"),
        ("--min-side", "0", "min_side"),
        ("--workers", "100000", "workers"),
    ]:
        assert ava_main([*base, option, value]) == 2, option
        assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(ConfigError, match="image_size"):
        prepare(tmp_path / "AVA.txt", tmp_path / "images", tmp_path / "out", image_size=(256, 4096))


def test_an_unreadable_file_is_not_called_a_corrupt_image(tmp_path, monkeypatch):
    import builtins

    (tmp_path / "AVA.txt").write_text("\n".join(ava_line(i, i, GOOD_VOTES) for i in (1, 2)) + "\n")
    for i in (1, 2):
        write_image(tmp_path / "images" / f"{i}.jpg", seed=i)
    locked = str(tmp_path / "images" / "2.jpg")
    real_open = builtins.open

    def open_denied(file, *args, **kwargs):  # what chmod 000 does for anyone but root
        if str(file) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", open_denied)
    out = tmp_path / "prepared"
    summary = prepare(tmp_path / "AVA.txt", tmp_path / "images", out, image_size=32, progress=False)
    monkeypatch.setattr(builtins, "open", real_open)
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected["reason"].tolist() == ["unreadable_file"]
    assert "Permission denied" in rejected["detail"].iloc[0]
    assert "corrupt" not in rejected["detail"].iloc[0]
    assert summary["rejected"]["unreadable_file"] == 1 and summary["rejected"]["corrupt_image"] == 0
    assert load_manifest(out)["image_id"].tolist() == [1]


def test_a_state_file_from_before_text_keys_is_still_reused(tmp_path, count_decodes):
    """Upgrading must not cost a full re-decode of 255k images: the old integer-keyed state loads."""
    (tmp_path / "AVA.txt").write_text("\n".join(ava_line(i, i, GOOD_VOTES) for i in (1, 2, 3)) + "\n")
    for i in (1, 2, 3):
        write_image(tmp_path / "images" / f"{i}.jpg", seed=i)
    out = tmp_path / "prepared"
    prepare(tmp_path / "AVA.txt", tmp_path / "images", out, image_size=32, progress=False)
    state = pd.read_parquet(out / "prepare_state.parquet")
    old = state.rename(columns={"key": "image_id"}).astype({"image_id": "int64"})
    old.to_parquet(out / "prepare_state.parquet", index=False)
    count_decodes.clear()
    summary = prepare(tmp_path / "AVA.txt", tmp_path / "images", out, image_size=32, progress=False)
    assert summary["images"] == {"processed": 0, "reused": 3} and count_decodes == []


def test_prepared_image_settings_tell_the_cache_size_and_filter(tmp_path):
    from beholder.data.manifest import prepared_image_settings

    (tmp_path / "AVA.txt").write_text(ava_line(1, 1, GOOD_VOTES) + "\n")
    write_image(tmp_path / "images" / "1.jpg", seed=1)
    out = tmp_path / "prepared"
    prepare(
        tmp_path / "AVA.txt",
        tmp_path / "images",
        out,
        image_size=(64, 48),
        resample="lanczos",
        progress=False,
    )
    expected = {"image_size": (64, 48), "resample": "lanczos", "jpeg_quality": 95}
    assert prepared_image_settings(out) == expected
    assert prepared_image_settings(out / "manifest.parquet") == expected
    assert prepared_image_settings(tmp_path) is None  # no prepare.json: unknown, not an error
    (out / "prepare.json").write_text('{"options": {"resample": "bilinear"}}')
    with pytest.raises(ConfigError, match=r"prepare\.json"):
        prepared_image_settings(out)

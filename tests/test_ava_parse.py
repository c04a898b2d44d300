"""AVA.txt parsing, official lists, vote distributions and split assignment."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from beholder.data.ava import LABEL_COLUMNS, ROW_REASONS, assign_splits, parse_ava_txt, read_image_list
from beholder.data.manifest import load_manifest
from beholder.errors import ConfigError
from beholder.ratings import votes_to_distribution as distribution_from_votes
from conftest import asset
from data_helpers import GENERIC_TEST, REAL_LABELS_VAL, ava_line


def _reference(line: str) -> dict:
    """Independent parse of one good AVA.txt line with plain Python."""
    fields = [int(x) for x in line.split()]
    votes = fields[2:12]
    total = sum(votes)
    mean = sum((i + 1) * v for i, v in enumerate(votes)) / total
    var = sum(v * ((i + 1) - mean) ** 2 for i, v in enumerate(votes)) / total
    return {"image_id": fields[1], "votes": votes, "n": total, "mean": mean, "std": math.sqrt(var)}


def test_real_rows_parse_with_correct_statistics():
    lines = asset(REAL_LABELS_VAL).read_text().splitlines()
    labels, rejected = parse_ava_txt(asset(REAL_LABELS_VAL))
    assert rejected.empty
    assert list(labels.columns) == LABEL_COLUMNS
    assert len(labels) == len([line for line in lines if line.strip()])
    for position in (0, 1, 777, len(labels) - 1):
        expected = _reference(lines[position])
        row = labels.iloc[position]
        assert row["image_id"] == expected["image_id"]
        assert [row[f"votes_{i}"] for i in range(1, 11)] == expected["votes"]
        assert row["n_votes"] == expected["n"]
        assert row["mean"] == pytest.approx(expected["mean"], abs=1e-12)
        assert row["std"] == pytest.approx(expected["std"], abs=1e-12)
    assert labels["image_id"].dtype == np.int64 and labels["image_id"].is_unique
    # The published range of AVA: every mean lies within the 1..10 scale.
    assert labels["mean"].between(1, 10).all() and (labels["std"] >= 0).all()


def test_malformed_rows_are_rejected_with_reasons_and_never_crash(tmp_path):
    good = [5, 10, 20, 30, 40, 30, 20, 10, 5, 1]
    lines = [
        ava_line(1, 101, good),  # good
        "",  # blank: skipped silently
        "   ",
        "2 102 1 2 3",  # bad_column_count (too few)
        ava_line(3, 103, good) + " 99",  # bad_column_count (too many)
        ava_line(4, 104, good).replace(" 5 ", " 5.5 ", 1),  # non_integer_field (float)
        ava_line(5, 105, good).replace(" 10 ", " ten ", 1),  # non_integer_field (text)
        "6 x106 " + " ".join(["1"] * 13),  # non_integer_field in the id itself
        ava_line(7, 107, good).replace(" 20 ", " 2_0 ", 1),  # int() would accept this; AVA.txt does not
        ava_line(8, 108, good).replace(" 30 ", " ٣ ", 1),  # a non-ASCII digit
        ava_line(9, 109, [0] * 10),  # zero_votes
        ava_line(10, 110, [1, 2, 3, -4, 5, 6, 7, 8, 9, 10]),  # negative_value
        ava_line(11, 101, [1] * 10),  # duplicate_id of the first row
        "12\t111\t" + "\t".join(str(v) for v in good) + "\t0\t0\t7",  # tabs are whitespace: good
        "\x00\xff garbage line",  # bad_column_count
    ]
    path = tmp_path / "AVA.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    labels, rejected = parse_ava_txt(path)

    assert labels["image_id"].tolist() == [101, 111]
    assert labels.loc[0, "mean"] == pytest.approx(_reference(lines[0])["mean"])
    assert labels.loc[1, "challenge_id"] == 7
    pairs = [(None if pd.isna(i) else int(i), r) for i, r in zip(rejected["image_id"], rejected["reason"])]
    assert pairs == [  # file order
        (102, "bad_column_count"),
        (103, "bad_column_count"),
        (104, "non_integer_field"),
        (105, "non_integer_field"),
        (None, "non_integer_field"),  # "x106": the id itself is unreadable
        (107, "non_integer_field"),
        (108, "non_integer_field"),
        (109, "zero_votes"),
        (110, "negative_value"),
        (101, "duplicate_id"),
        (None, "bad_column_count"),  # the garbage line
    ]
    assert set(rejected["reason"]) <= set(ROW_REASONS)
    assert rejected["image_id"].isna().sum() == 2
    x106 = rejected[rejected["detail"].str.contains("x106")]
    assert x106["reason"].tolist() == ["non_integer_field"] and "column 2" in x106["detail"].iloc[0]
    duplicate = rejected[rejected["reason"] == "duplicate_id"]["detail"].iloc[0]
    assert "line 13" in duplicate and "line 1 " in duplicate


def test_out_of_range_integers_are_rejected_not_a_crash(tmp_path):
    good = [5, 10, 20, 30, 40, 30, 20, 10, 5, 1]
    huge = "99999999999999999999"  # beyond int64: used to raise OverflowError building the table
    lines = [
        ava_line(1, 1, good),
        ava_line(2, 2, good).replace(" 10 ", f" {huge} ", 1),
        ava_line(3, 3, good).replace(" 3 ", f" {huge} ", 1),  # the id itself
        f"4 {huge} 1 2",  # bad_column_count with an unreadable id
    ]
    path = tmp_path / "AVA.txt"
    path.write_text("\n".join(lines) + "\n")
    labels, rejected = parse_ava_txt(path)
    assert labels["image_id"].tolist() == [1]
    assert rejected["reason"].tolist() == ["non_integer_field", "non_integer_field", "bad_column_count"]
    assert rejected["image_id"].tolist()[0] == 2 and rejected["image_id"].isna().tolist() == [
        False,
        True,
        True,
    ]


def test_find_images_is_deterministic_for_equivalent_names(tmp_path):
    from beholder.data.ava import find_images

    for name in ("07.jpg", "7.jpg", "007.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert find_images(tmp_path)[7].name == "7.jpg"


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    labels, rejected = parse_ava_txt(empty)
    assert labels.empty and rejected.empty and list(labels.columns) == LABEL_COLUMNS
    with pytest.raises(ConfigError, match="not found"):
        parse_ava_txt(tmp_path / "nope.txt")


def test_distribution_from_votes():
    votes = np.array([[0, 0, 0, 0, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    probs = distribution_from_votes(votes)
    assert probs.shape == (2, 10) and probs.dtype == np.float64
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[0, 4:6], 0.5)
    assert distribution_from_votes([2] * 10) == pytest.approx([0.1] * 10)
    frame = pd.DataFrame(votes, columns=[f"votes_{i}" for i in range(1, 11)])
    np.testing.assert_allclose(distribution_from_votes(frame), probs)
    with pytest.raises(ValueError, match="shape"):
        distribution_from_votes([1, 2, 3])
    with pytest.raises(ValueError, match="no votes"):
        distribution_from_votes(np.zeros((3, 10)))
    with pytest.raises(ValueError, match="negative"):
        distribution_from_votes([-1] + [1] * 9)


def test_read_image_list(tmp_path):
    path = tmp_path / "list.jpgl"
    path.write_text("12\n 7 \n\n# a comment\n12\n")
    assert read_image_list(path) == {7, 12}
    path.write_text("12\n7.jpg\n")
    with pytest.raises(ConfigError, match=r"list\.jpgl:2"):
        read_image_list(path)
    with pytest.raises(ConfigError, match="not found"):
        read_image_list(tmp_path / "missing.jpgl")


def test_official_generic_test_list():
    ids = read_image_list(asset(GENERIC_TEST))
    assert len(ids) == 20000 and all(isinstance(i, int) for i in ids)


def test_splits_are_disjoint_seeded_and_stable():
    ids = list(range(1000, 3000))
    test_ids = set(range(1000, 1200)) | {99999}  # a listed id without a label changes nothing
    splits = assign_splits(ids, test_ids, val_fraction=0.1, seed=0)
    split_of = dict(zip(ids, splits))
    assert {i for i, s in split_of.items() if s == "test"} == set(range(1000, 1200))
    val = {i for i, s in split_of.items() if s == "val"}
    train = {i for i, s in split_of.items() if s == "train"}
    assert len(val) == round(0.1 * 1800) and len(train) == 1800 - len(val)
    assert not (val & train) and not (val & test_ids) and not (train & test_ids)

    # Independent re-computation of the documented rule.
    rest = np.array(sorted(set(ids) - test_ids))
    expected_val = set(
        rest[np.random.default_rng(0).permutation(len(rest))[: round(0.1 * len(rest))]].tolist()
    )
    assert val == expected_val

    # Same seed: same split whatever the order of the ids; another seed: another val set.
    shuffled = list(reversed(ids))
    assert dict(zip(shuffled, assign_splits(shuffled, test_ids, val_fraction=0.1, seed=0))) == split_of
    other = assign_splits(ids, test_ids, val_fraction=0.1, seed=1)
    assert {i for i, s in zip(ids, other) if s == "val"} != val
    assert (assign_splits(ids, test_ids, val_fraction=0.0) != "val").all()
    with pytest.raises(ConfigError):
        assign_splits(ids, test_ids, val_fraction=1.0)


def test_load_manifest_fails_loudly_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"manifest not found: .*manifest\.parquet"):
        load_manifest(tmp_path)
    pd.DataFrame({"image_id": [1]}).to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(ConfigError, match="lacks columns"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.parquet").write_text("not parquet")
    with pytest.raises(ConfigError, match="cannot read manifest"):
        load_manifest(tmp_path)


def test_a_byte_order_mark_does_not_cost_the_first_row(tmp_path):
    good = [5, 10, 20, 30, 40, 30, 20, 10, 5, 1]
    path = tmp_path / "AVA.txt"
    # What Notepad's "UTF-8 with BOM" writes, with Windows line ends.
    path.write_bytes(("\ufeff" + "\r\n".join(ava_line(i, i, good) for i in (1, 2)) + "\r\n").encode("utf-8"))
    labels, rejected = parse_ava_txt(path)
    assert labels["image_id"].tolist() == [1, 2]
    assert rejected.empty
    ids = tmp_path / "list.jpgl"
    ids.write_bytes("\ufeff12\n7\n".encode("utf-8"))
    assert read_image_list(ids) == {7, 12}


def test_an_overlong_line_is_a_rejected_row_read_in_bounded_memory(tmp_path):
    import tracemalloc

    good = [5, 10, 20, 30, 40, 30, 20, 10, 5, 1]
    path = tmp_path / "AVA.txt"
    with open(path, "wb") as handle:
        handle.write((ava_line(1, 1, good) + "\n").encode())
        chunk = b"7 " * (1 << 20)  # 2 MiB of fields on one line ...
        for _ in range(16):  # ... 32 MiB in all, no newline until the end
            handle.write(chunk)
        handle.write(b"\n" + (ava_line(3, 3, good) + "\n").encode())
        handle.write(b"9" * (200 * 1024))  # and a last line with no newline at all
    tracemalloc.start()
    try:
        labels, rejected = parse_ava_txt(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert labels["image_id"].tolist() == [1, 3]
    assert rejected["reason"].tolist() == ["line_too_long", "line_too_long"]
    assert "line 2: 33,554,433 bytes" in rejected["detail"].iloc[0]
    assert rejected["image_id"].isna().all()
    assert peak < 4 * 1024 * 1024, f"parsing held {peak:,} bytes at once"


def test_non_finite_and_huge_counts_are_rejected_by_row(tmp_path):
    good = [5, 10, 20, 30, 40, 30, 20, 10, 5, 1]
    lines = [ava_line(1, 1, good)]
    for image_id, token in enumerate(
        ["inf", "-inf", "nan", "NaN", "Infinity", "1e9", "2147483648", "9" * 400], 2
    ):
        lines.append(ava_line(image_id, image_id, good).replace(" 40 ", f" {token} ", 1))
    near_limit = [2**31 - 1] * 10  # the largest accepted counts: their sum must still be exact
    lines.append(ava_line(99, 99, near_limit))
    path = tmp_path / "AVA.txt"
    path.write_text("\n".join(lines) + "\n")
    labels, rejected = parse_ava_txt(path)
    assert labels["image_id"].tolist() == [1, 99]
    assert rejected["reason"].tolist() == ["non_integer_field"] * 8
    assert rejected["image_id"].tolist() == list(range(2, 10))
    row = labels.iloc[1]
    assert row["n_votes"] == 10 * (2**31 - 1) and row["mean"] == pytest.approx(5.5)
    assert np.isfinite(labels[["mean", "std"]].to_numpy()).all()

"""The report calls a test split "the official AVA test list" only when it is one."""

from __future__ import annotations

from beholder.evaluation.report import comparison_rows


def _metrics(**extra):
    figures = dict.fromkeys(("accuracy", "lcc_mean", "srcc_mean", "emd"))
    return {"model": "m", "data": "prepared", "split": "test", "n": 1, **figures, **extra}


def test_an_ava_test_split_is_named_the_official_list():
    assert "official AVA test list" in comparison_rows(_metrics(ava_test_list=True))[0][2]


def test_a_ratings_csv_test_split_is_not_called_the_ava_list():
    cell = comparison_rows(_metrics(ava_test_list=False))[0][2]
    assert "official AVA" not in cell and "own test split" in cell

"""The packaged AVA percentile table: monotone, centred, and faithful to AVA's quartiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from beholder.percentiles import ava_quartiles, percentile
from conftest import asset

REPO = Path(__file__).resolve().parents[1]


def test_percentile_is_monotone_and_bounded():
    means = np.linspace(1.0, 10.0, 2001)
    values = percentile(means)
    assert np.all(np.diff(values) >= 0)
    assert values[0] == 0.0 and values[-1] == 100.0
    assert percentile(4.0) < percentile(5.0) < percentile(6.0) < percentile(7.0)


def test_percentile_is_50_at_the_median_ava_mean():
    _, median, _ = ava_quartiles()
    assert percentile(median) == pytest.approx(50.0, abs=0.1)


def test_quartiles_match_the_published_full_ava_figures():
    """The AVA literature reports quartiles of 4.91 / 5.39 / 5.87 for the full set."""
    for ours, published in zip(ava_quartiles(), (4.91, 5.39, 5.87)):
        assert ours == pytest.approx(published, abs=0.03)


def test_table_is_reproducible_from_the_real_labels(tmp_path):
    """The script rebuilds the shipped table bit for bit from the AVA label rows, checking their sha256."""
    labels = asset("ava_sample/labels/ava_labels_merged.csv")
    out = tmp_path / "table.json"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "make_percentile_table.py"), str(labels), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    shipped = json.loads((REPO / "src" / "beholder" / "resources" / "ava_mean_percentiles.json").read_text())
    assert json.loads(out.read_text()) == shipped
    # An independent check of one level: the share of AVA means below the 30th-percentile value.
    import pandas as pd

    frame = pd.read_csv(labels)
    votes = frame[[f"c{i}" for i in range(1, 11)]].to_numpy(float)
    means = votes @ np.arange(1, 11) / votes.sum(axis=1)
    threshold = float(np.percentile(means, 30))
    assert percentile(threshold) == pytest.approx(100 * np.mean(means < threshold), abs=1.0)


def test_script_refuses_a_source_with_the_wrong_sha256(tmp_path):
    fake = tmp_path / "labels.csv"
    fake.write_text("image_id,c1\n1,2\n")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "make_percentile_table.py"),
            str(fake),
            "--out",
            str(tmp_path / "t"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "sha256" in result.stderr
    assert not (tmp_path / "t").exists()

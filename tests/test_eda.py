"""`beholder ava eda`: the report renders and summary.json matches independently computed statistics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from beholder.data.manifest import load_manifest
from beholder.data.prepare import prepare
from beholder.eda import describe_column as describe
from beholder.eda import eda, rating_ranges
from beholder.eda import summarize_manifest as summarize
from beholder.errors import ConfigError
from data_helpers import ava_line, ava_main, write_image

N_IMAGES = 40
VOID = {"meta", "img", "br", "hr", "link", "input"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A prepared directory of 40 generated images with varied votes, sizes and a few rejections."""
    root = tmp_path_factory.mktemp("eda")
    rng = np.random.default_rng(7)
    votes, sizes = {}, {}
    lines = []
    for image_id in range(1, N_IMAGES + 1):
        centre = rng.uniform(2.5, 8.5)
        weights = np.exp(-0.5 * ((np.arange(1, 11) - centre) / rng.uniform(0.8, 2.0)) ** 2)
        counts = rng.multinomial(int(rng.integers(60, 400)), weights / weights.sum())
        votes[image_id] = counts
        lines.append(ava_line(image_id, image_id, counts.tolist(), (image_id % 5, 0), 100 + image_id % 3))
        sizes[image_id] = (int(rng.integers(70, 200)), int(rng.integers(70, 200)))
        write_image(root / "images" / f"{image_id}.jpg", *sizes[image_id], seed=image_id)
    lines += [ava_line(99, 99, [0] * 10), "100 100 1 2"]  # two rejected rows
    (root / "AVA.txt").write_text("\n".join(lines) + "\n")
    (root / "test.jpgl").write_text("\n".join(str(i) for i in range(1, 9)) + "\n")
    prepare(
        root / "AVA.txt", root / "images", root / "prepared", test_list=root / "test.jpgl",
        val_fraction=0.2, image_size=32, progress=False,
    )  # fmt: skip
    return root, votes, sizes


class _Checker(HTMLParser):
    """Checks that elements nest properly; collects image sources, headings and tables."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.images: list[str] = []
        self.headings: list[str] = []
        self.tables = 0
        self._heading = False

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
            assert dict(attrs).get("alt"), "every plot has alt text"
        if tag == "table":
            self.tables += 1
        self._heading = tag in ("h1", "h2", "h3")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self._heading and data.strip():
            self.headings.append(data.strip())
            self._heading = False


def _expected_stats(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return {
        "count": len(values),
        "mean": values.mean(),
        "std": values.std(ddof=1),
        "min": values.min(),
        "q25": q25,
        "q50": q50,
        "q75": q75,
        "max": values.max(),
    }


def test_report_renders_and_summary_matches_independent_statistics(prepared, tmp_path, capsys):
    root, votes, sizes = prepared
    out = tmp_path / "report"
    argv = [
        "ava",
        "eda",
        "--data",
        str(root / "prepared"),
        "--out",
        str(out),
        "--top",
        "6",
        "--sample-rows",
        "5",
    ]
    assert ava_main(argv) == 0
    assert capsys.readouterr().out.startswith(f"eda: {N_IMAGES} images")

    html_text = (out / "report.html").read_text(encoding="utf-8")
    assert html_text.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(html_text)
    checker.close()
    assert checker.errors == [] and checker.stack == []
    for heading in (
        "Splits and cleaning",
        "Number of ratings and mean rating",
        "Central and outer rating ranges",
        "Standard deviation against mean",
        "Technical properties",
        "Sample rows",
        "Best-rated images",
        "Worst-rated images",
    ):
        assert heading in checker.headings
    assert checker.tables >= 8
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(checker.images) == sorted(summary["plots"].values()) and len(checker.images) == 9
    for name in checker.images:
        path = out / name
        assert path.parent == out and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as plot:
            pixels = np.asarray(plot.convert("L"), dtype=np.float64)
        assert min(plot.size) > 100 and pixels.std() > 5, f"{name} looks empty"

    # Independent statistics from the votes themselves, not from the manifest's columns.
    ids = sorted(votes)
    n_votes = np.array([votes[i].sum() for i in ids])
    means = np.array([(np.arange(1, 11) * votes[i]).sum() / votes[i].sum() for i in ids])
    assert summary["n_images"] == N_IMAGES
    for key, values in (
        ("n_votes", n_votes),
        ("mean_rating", means),
        ("width", [sizes[i][0] for i in ids]),
        ("height", [sizes[i][1] for i in ids]),
        ("aspect_ratio", [sizes[i][0] / sizes[i][1] for i in ids]),
        ("file_bytes", [os.path.getsize(root / "images" / f"{i}.jpg") for i in ids]),
    ):
        assert summary[key] == pytest.approx(_expected_stats(values), rel=1e-9), key
    assert summary["splits"]["test"] == 8 and sum(summary["splits"].values()) == N_IMAGES
    ranges = summary["rating_ranges"]
    assert ranges["central"]["count"] == int(((means >= 4) & (means <= 7)).sum())
    assert ranges["below"]["count"] == int((means < 4).sum()) and ranges["above"]["count"] == int(
        (means > 7).sum()
    )
    assert ranges["outer"]["share"] == pytest.approx(((means < 4) | (means > 7)).mean())
    assert ranges["above_5"]["share"] == pytest.approx((means > 5).mean())
    order = np.argsort(-means, kind="stable")
    assert [b["image_id"] for b in summary["best"]] == [ids[k] for k in order[:6]]
    assert [w["image_id"] for w in summary["worst"]] == [ids[k] for k in np.argsort(means, kind="stable")[:6]]
    assert summary["rejected"] == {"zero_votes": 1, "bad_column_count": 1}
    assert summary["modes"] == {"RGB": N_IMAGES}


def test_python_api_and_errors(prepared, tmp_path):
    root, _, _ = prepared
    manifest = load_manifest(root / "prepared")
    stats = summarize(manifest, central=(5.0, 6.0), top_k=3)
    assert stats["rating_ranges"]["central_range"] == [5.0, 6.0] and len(stats["best"]) == 3
    assert describe([3.0]) == {
        "count": 1,
        "mean": 3.0,
        "std": None,
        "min": 3.0,
        "q25": 3.0,
        "q50": 3.0,
        "q75": 3.0,
        "max": 3.0,
    }
    assert describe([])["count"] == 0
    assert rating_ranges(np.array([3.0, 4.0, 7.0, 7.5]))["outer"] == {"count": 2, "share": 0.5}
    with pytest.raises(ConfigError, match=r"manifest not found: .*manifest\.parquet"):
        eda(tmp_path / "nothing", tmp_path / "out")
    with pytest.raises(ConfigError, match="LOW < HIGH"):
        eda(root / "prepared", tmp_path / "out", central=(7.0, 4.0))
    assert ava_main(["ava", "eda", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2


def test_single_image_report(tmp_path, capsys):
    # One image: the std of the mean rating is undefined (None); the CLI line used to crash on it.
    write_image(tmp_path / "images" / "1.jpg", 80, 80, seed=1)
    (tmp_path / "AVA.txt").write_text(ava_line(1, 1, [1, 2, 5, 10, 20, 15, 8, 4, 2, 1]) + "\n")
    prepare(tmp_path / "AVA.txt", tmp_path / "images", tmp_path / "prepared", image_size=32, progress=False)
    out = tmp_path / "report"
    assert ava_main(["ava", "eda", "--data", str(tmp_path / "prepared"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("eda: 1 images")
    assert json.loads((out / "summary.json").read_text())["mean_rating"]["std"] is None


def test_eda_does_not_import_torch():
    code = "import sys, beholder.eda, beholder.data.prepare; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_report_of_a_ratings_csv_manifest_without_vote_counts(tmp_path, capsys):
    """Mean-only ratings have no vote counts and text ids: the report says so instead of crashing."""
    from beholder.data.labels import prepare_labels

    for i in range(5):
        write_image(tmp_path / "photos" / f"{i}.jpg", 80, 64, seed=i)
    (tmp_path / "ratings.csv").write_text(
        "path,mean\n" + "".join(f"photos/{i}.jpg,{3 + i}\n" for i in range(5))
    )
    prepare_labels(
        tmp_path / "ratings.csv", tmp_path / "prepared", image_size=32, min_side=32, progress=False
    )
    assert ava_main(["ava", "eda", "--data", str(tmp_path / "prepared"), "--out", str(tmp_path / "eda")]) == 0
    assert "no vote counts" in capsys.readouterr().out
    summary = json.loads((tmp_path / "eda" / "summary.json").read_text())
    assert summary["n_votes"]["count"] == 0
    assert summary["best"][0] == {"image_id": "photos/4.jpg", "mean": pytest.approx(7.0), "n_votes": None}
    assert (tmp_path / "eda" / "report.html").is_file()

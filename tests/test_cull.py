"""``beholder cull``: grouping, picks, stars, XMP sidecars (read back by exiftool) and the report."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from beholder.cli import main
from beholder.cull.grouping import CaptureTime, capture_time, group_frames, parse_exif_time
from beholder.cull.stars import STAR_CUTS, choose_picks, shoot_percentiles, stars_from_percentile
from beholder.cull.xmp import NAMESPACES, SidecarError, merge_sidecar, qname, sidecar_paths
from cull_helpers import adjusted_rand_index, make_shoot, render_scene, write_frame

EXIFTOOL = shutil.which("exiftool")
MODEL = ["--model", "nima-mobilenet-idealo", "--no-progress"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- capture times, grouping, picks and stars (no model) -----------------------------------------


def test_exif_time_adds_subseconds_and_falls_back_to_mtime(tmp_path):
    assert parse_exif_time("2024:06:01 14:00:00", "3") - parse_exif_time("2024:06:01 14:00:00") == (
        pytest.approx(0.3)
    )
    assert parse_exif_time("2024:06:01 14:00:01", "30") - parse_exif_time("2024:06:01 14:00:00", "70") == (
        pytest.approx(0.6)
    )
    assert parse_exif_time("0000:00:00 00:00:00") is None and parse_exif_time(None) is None

    scene = render_scene(1)
    stamped = tmp_path / "stamped.jpg"
    write_frame(scene, stamped, (0, 0), dt.datetime(2024, 6, 1, 14, 0, 0, 300_000), 90)
    time = capture_time(Image.open(stamped), str(stamped))
    assert time.source == "exif" and time.text() == "2024-06-01 14:00:00.300"

    plain = tmp_path / "plain.jpg"
    scene.save(plain)
    time = capture_time(Image.open(plain), str(plain))
    assert time.source == "mtime" and time.seconds == plain.stat().st_mtime


def test_frames_group_only_when_close_in_time_and_alike():
    bits = np.random.default_rng(0).random((3, 64)) > 0.5
    near = bits[0].copy()
    near[:5] = ~near[:5]  # 5 of 64 bits differ: similarity 0.92
    hashes = [bits[0], near, bits[1], bits[1], bits[2]]
    times = [CaptureTime(t, "exif") for t in (0.0, 0.3, 0.6, 9.0, 9.3)]
    groups = group_frames(range(5), times, hashes, group_seconds=2.0, similarity=0.8)
    # 0-1 alike and close; 2 is close but unlike; 3 is like 2 but 8.4 s later; 4 is unlike 3.
    assert groups == [[0, 1], [2], [3], [4]]
    assert group_frames(range(5), times, hashes, group_seconds=2.0, similarity=0.95)[0] == [0]


def test_picks_are_the_best_of_each_group_and_stars_use_the_whole_scale():
    means = [5.0, 6.0, 5.5, 4.0, 4.5, 7.0]
    groups = [[0, 1, 2], [3, 4], [5]]
    assert choose_picks(groups, means, keep=1) == {1, 4, 5}
    assert choose_picks(groups, means, keep=2) == {1, 2, 3, 4, 5}
    assert choose_picks([[0, 1]], [5.0, 5.0], keep=1) == {0}  # a tie goes to the earlier frame

    for n in (5, 7, 40, 1500):
        scores = np.random.default_rng(n).normal(5.4, 0.5, n)
        stars = [stars_from_percentile(p) for p in shoot_percentiles(scores)]
        assert sorted(set(stars)) == [1, 2, 3, 4, 5]
        order = np.argsort(scores)
        assert list(np.array(stars)[order]) == sorted(stars)  # monotone in the score
        assert abs(stars.count(5) - n / 5) <= 1  # fifths of the shoot
    assert [stars_from_percentile(p) for p in (0, 19.9, *STAR_CUTS, 100)] == [1, 1, 2, 3, 4, 5, 5]
    assert list(shoot_percentiles([5.0, 5.0])) == [50.0, 50.0]  # ties share their rank


def test_adjusted_rand_index_matches_published_values():
    # scikit-learn's documented examples of adjusted_rand_score.
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == 1.0
    assert adjusted_rand_index([0, 0, 1, 2], [0, 0, 1, 1]) == pytest.approx(0.5714, abs=1e-4)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


# -- XMP merge (no model) --------------------------------------------------------------------------

EXISTING = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
      xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
      crs:Exposure2012="+0.35">
   <xmp:Rating>2</xmp:Rating>
   <dc:subject><rdf:Bag><rdf:li>harbour</rdf:li><rdf:li>boats</rdf:li></rdf:Bag></dc:subject>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def test_merge_keeps_foreign_fields_and_replaces_only_beholder_ones(tmp_path):
    fields = {qname("xmp", "Rating"): "4", qname("beholder", "Mean"): "5.6000"}
    merged, changes = merge_sidecar(EXISTING.encode(), fields, tmp_path / "a.xmp")
    assert changes == {qname("xmp", "Rating"): ("2", "4"), qname("beholder", "Mean"): (None, "5.6000")}
    text = merged.decode("utf-8")
    assert "harbour" in text and "boats" in text and 'crs:Exposure2012="+0.35"' in text
    assert 'xmp:Rating="4"' in text and text.count("Rating") == 1
    assert f'xmlns:beholder="{NAMESPACES["beholder"]}"' in text
    again, changes = merge_sidecar(merged, fields, tmp_path / "a.xmp")
    assert changes == {} and again == merged  # idempotent: a rerun changes nothing


def test_hostile_or_broken_sidecars_are_refused(tmp_path):
    bomb = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]><x>&b;</x>'
    with pytest.raises(SidecarError, match="refused"):
        merge_sidecar(bomb.encode(), {qname("xmp", "Rating"): "3"}, tmp_path / "bomb.xmp")
    with pytest.raises(SidecarError, match="not valid XML"):
        merge_sidecar(b"<x:xmpmeta", {qname("xmp", "Rating"): "3"}, tmp_path / "cut.xmp")
    with pytest.raises(SidecarError, match="rdf:RDF"):
        merge_sidecar(b"<notes/>", {qname("xmp", "Rating"): "3"}, tmp_path / "notes.xmp")


def test_sidecars_that_are_too_deep_too_large_or_not_files_are_refused_unread(tmp_path):
    import os
    import threading

    from beholder.cull import xmp

    fields = {qname("xmp", "Rating"): "3"}
    packet = EXISTING.encode()
    deep = packet.replace(b"</rdf:Description>", b"<a>" * 50_000 + b"</a>" * 50_000 + b"</rdf:Description>")
    with pytest.raises(SidecarError, match="nested too deeply"):
        xmp.merge_sidecar(deep, fields, tmp_path / "deep.xmp")

    large = tmp_path / "large.xmp"
    large.write_bytes(packet + b" " * xmp.MAX_SIDECAR_BYTES)  # valid XML, only too large
    with pytest.raises(SidecarError, match="larger than"):
        xmp.plan_sidecar(tmp_path / "large.jpg", large, fields)

    # A FIFO: reading it blocks until a writer comes. The writer here would hand it a valid packet,
    # so a reader that opened it would merge that instead of refusing.
    fifo = tmp_path / "fifo.xmp"
    os.mkfifo(fifo)

    def writer() -> None:
        with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as handle:
            handle.write(packet)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        with pytest.raises(SidecarError, match="not a regular file"):
            xmp.plan_sidecar(tmp_path / "fifo.jpg", fifo, fields)
    finally:
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so the writer's open returns
        thread.join()
        os.close(reader)


def test_sidecar_names_replace_the_extension_unless_two_photos_would_share_one(tmp_path):
    photos = [tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "b.png"]
    names = sidecar_paths(photos, "replace")
    assert names[photos[0]] == tmp_path / "a.xmp"
    assert names[photos[1]] == tmp_path / "b.jpg.xmp" and names[photos[2]] == tmp_path / "b.png.xmp"
    assert sidecar_paths(photos, "append")[photos[0]] == tmp_path / "a.jpg.xmp"


# -- end to end with idealo's trained model --------------------------------------------------------


def run_cull(folder: Path, out: Path, *extra: str, capsys=None) -> tuple[int, dict]:
    code = main(["cull", str(folder), "--out", str(out), *MODEL, *extra])
    data = json.loads((out / "cull.json").read_text()) if (out / "cull.json").exists() else {}
    return code, data


@pytest.mark.slow
def test_cull_finds_bursts_and_singles_and_picks_the_best(idealo_weights, tmp_path):
    shoot = make_shoot(tmp_path / "shoot", bursts=10, frames=4, singles=10)
    (tmp_path / "shoot" / "broken.jpg").write_bytes(shoot.paths[0].read_bytes()[:300])
    code, data = run_cull(tmp_path / "shoot", tmp_path / "report")
    assert code == 1  # one photo could not be read; everything else is still done

    rated = [p for p in data["photos"] if p["error"] is None]
    assert len(rated) == 50
    names = [Path(p["path"]).name for p in rated]
    ari = adjusted_rand_index([shoot.truth[n] for n in names], [p["group"] for p in rated])
    assert ari >= 0.9
    sizes = sorted(len(g) for g in data["groups"])
    assert sizes == [1] * 10 + [4] * 10

    for group in {p["group"] for p in rated}:
        members = [p for p in rated if p["group"] == group]
        assert [p for p in members if p["pick"]] == [max(members, key=lambda p: p["mean"])]
    assert {p["stars"] for p in rated} == {1, 2, 3, 4, 5}

    # Shoot order is capture order (EXIF), not name order, and groups are numbered in it.
    times = [p["time"] for p in rated]
    assert times == sorted(times) and [p["group"] for p in rated] == sorted(p["group"] for p in rated)

    broken = [p for p in data["photos"] if p["error"] is not None]
    assert [Path(p["path"]).name for p in broken] == ["broken.jpg"]
    assert broken[0]["stars"] is None and broken[0]["group"] is None and not broken[0]["pick"]
    rows = (tmp_path / "report" / "cull.csv").read_text().splitlines()
    assert rows[0].startswith("path,group,pick,stars,mean,std,percentile") and len(rows) == 52
    assert any("broken.jpg" in row and "truncated" in row for row in rows)

    # One decode serves hashing and scoring: the means are those `beholder score` gives.
    from beholder.inference import Scorer

    scorer = Scorer.from_pretrained("nima-mobilenet-idealo")
    by_path = {r.path: r.mean for r in scorer.score([p["path"] for p in rated[:8]])}
    assert [p["mean"] for p in rated[:8]] == pytest.approx([by_path[p["path"]] for p in rated[:8]], abs=1e-5)


def exiftool_read(paths: list[Path]) -> dict[str, dict]:
    output = subprocess.run(
        [EXIFTOOL, "-json", "-G1", "-XMP:all", *map(str, paths)], capture_output=True, text=True, check=True
    ).stdout
    return {Path(item["SourceFile"]).name: item for item in json.loads(output)}


@pytest.mark.slow
@pytest.mark.skipif(EXIFTOOL is None, reason="exiftool not installed (Debian: libimage-exiftool-perl)")
def test_xmp_sidecars_are_read_back_by_exiftool(idealo_weights, tmp_path, capsys):
    shoot = make_shoot(tmp_path / "shoot", bursts=3, frames=4, singles=3, seed=1)
    keyworded = shoot.paths[1]
    existing = keyworded.with_suffix(".xmp")
    existing.write_text(EXISTING)
    before = {p.name: sha256(p) for p in shoot.paths}
    listing = sorted(p.name for p in (tmp_path / "shoot").iterdir())

    # A dry run writes nothing and says what it would do.
    code, _ = run_cull(tmp_path / "shoot", tmp_path / "dry", "--xmp", "--dry-run")
    assert code == 0 and not (tmp_path / "dry").exists()
    assert sorted(p.name for p in (tmp_path / "shoot").iterdir()) == listing
    printed = capsys.readouterr().out
    assert printed.count("would create") == len(shoot.paths) - 1 and printed.count("would update") == 1
    assert existing.read_text() == EXISTING

    code, data = run_cull(tmp_path / "shoot", tmp_path / "shoot" / "report", "--xmp")
    assert code == 0
    sidecars = [p.with_suffix(".xmp") for p in shoot.paths]
    tags = exiftool_read(sidecars)
    photos = {Path(p["path"]).with_suffix(".xmp").name: p for p in data["photos"]}
    for sidecar in sidecars:
        read, photo = tags[sidecar.name], photos[sidecar.name]
        assert read["XMP-xmp:Rating"] == photo["stars"] and 1 <= read["XMP-xmp:Rating"] <= 5
        assert read["XMP-xmp:Label"] == ("Green" if photo["pick"] else "Red")
        assert read["XMP-digiKam:PickLabel"] == (3 if photo["pick"] else 1)
        assert float(read["XMP-beholder:Mean"]) == pytest.approx(photo["mean"], abs=1e-4)
        assert int(read["XMP-beholder:Group"]) == photo["group"]
    assert tags[existing.name]["XMP-dc:Subject"] == ["harbour", "boats"]
    assert tags[existing.name]["XMP-crs:Exposure2012"] == "+0.35"
    assert {p.name: sha256(p) for p in shoot.paths} == before  # no original changed

    # A rerun with the same scores changes nothing and writes nothing; a report folder inside the
    # shoot is not culled itself (its thumbnails are skipped).
    stamps = {p.name: p.stat().st_mtime_ns for p in sidecars}
    capsys.readouterr()
    code, _ = run_cull(tmp_path / "shoot", tmp_path / "shoot" / "report", "--xmp")
    printed = capsys.readouterr().out
    assert code == 0 and "15 photos" in printed and "0 sidecars written" in printed
    assert len(list((tmp_path / "shoot" / "report" / "thumbs").glob("*.jpg"))) == 15
    assert {p.name: p.stat().st_mtime_ns for p in sidecars} == stamps

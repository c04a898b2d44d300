"""`beholder score --table`: resumable catalogue scoring, URLs, groups, formats, and the Ray engine.

A little over 500 lines: the catalogue's scenarios (kill and resume, URLs, groups, both engines)
share one image server, one table builder and one comparison, which belong beside them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from beholder.cli import main
from beholder.tables.parts import MANIFEST, parts_dir
from beholder.tables.scoring import SCORE_COLUMNS
from conftest import make_photo

pytest.importorskip("pyarrow")
SRC = str(Path(__file__).resolve().parents[1] / "src")
SIZE = (64, 48)  # tiny images keep thousands of rows fast on two cores
# One torch thread: on a loaded two-core machine, two threads per process run the tiny model 10x slower.
ENV = {
    **os.environ,
    "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
    "OMP_NUM_THREADS": "1",
}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A width-0.25 NIMA at 64x64 input with He-initialised weights: fast, and its means differ per image."""
    import torch

    from beholder.models import Architecture, build_nima, save_checkpoint
    from beholder.preprocessing import Preprocessing

    torch.manual_seed(0)
    model = build_nima(Architecture(alpha=0.25), preprocessing=Preprocessing(resize=(64, 64)))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        torch.nn.init.normal_(model.head[1].weight, std=0.5)
    return save_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.pt", model.eval())


class ImageServer:
    """A local HTTP server: ``/ok/N`` an image, ``/gone/N`` 404, ``/cut/N`` a body cut short."""

    def __init__(self, bodies: dict[str, bytes]):
        self.bodies = bodies
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                kind, _, name = self.path.strip("/").partition("/")
                body = owner.bodies.get(name)
                if kind == "gone" or body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # /cut/ promises the whole body and closes the connection halfway through it.
                self.wfile.write(body if kind == "ok" else body[: len(body) // 2])
                self.close_connection = True

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ImageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def photos(folder: Path, count: int, start: int = 0) -> list[Path]:
    return [make_photo(folder / f"{i}.jpg", size=SIZE, seed=i) for i in range(start, start + count)]


def score_cli(*args: str, check_rc=(0, 1)) -> tuple[int, dict]:
    """Run ``python -m beholder score`` as a process; (exit code, the JSON summary it prints)."""
    done = subprocess.run(
        [sys.executable, "-m", "beholder", "score", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=900,
    )
    assert done.returncode in check_rc, done.stderr
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}


def same_scores(a: pa.Table, b: pa.Table, atol: float) -> None:
    """Same columns and rows; scores within ``atol``. The percentile is checked through the mean it
    comes from (it is a steep function of it: 1e-7 in the mean can be 5e-5 in the percentile)."""
    from beholder.percentiles import percentile

    assert a.column_names == b.column_names
    for name in a.column_names:
        if name == "percentile":
            for table in (a, b):
                mean = table.column("mean").to_numpy(zero_copy_only=False)
                expected = np.where(np.isnan(mean), np.nan, percentile(np.nan_to_num(mean)))
                np.testing.assert_allclose(
                    table.column(name).to_numpy(zero_copy_only=False),
                    expected,
                    rtol=0,
                    atol=0.005 + 1e-9,  # the Scorer may round percentiles to 2 decimals
                    equal_nan=True,
                )
        elif name in SCORE_COLUMNS and name != "error":
            np.testing.assert_allclose(
                a.column(name).to_numpy(zero_copy_only=False),
                b.column(name).to_numpy(zero_copy_only=False),
                atol=atol,
                rtol=0,
                equal_nan=True,
                err_msg=name,
            )
        else:
            assert a.column(name).to_pylist() == b.column(name).to_pylist(), name


# -- Must show 1: kill -9, then --resume -----------------------------------------------------------


def catalogue(folder: Path, server_url: str) -> tuple[Path, dict[str, list[int]]]:
    """3,000 rows: valid images (relative and absolute paths), 50 missing, 50 corrupt, 20 URLs."""
    images = folder / "images"
    valid = photos(images, 2880)
    paths: list[str] = [
        str(p.relative_to(folder)) if i % 2 else str(p) for i, p in enumerate(valid)
    ]  # both kinds of local path
    kinds = {"missing": [], "corrupt": [], "url_ok": [], "url_404": [], "url_cut": []}
    rng = np.random.default_rng(7)
    for i in range(50):
        kinds["missing"].append(len(paths))
        paths.append(f"images/missing-{i}.jpg")
    for i in range(50):
        bad = images / f"corrupt-{i}.jpg"
        good = valid[i].read_bytes()
        bad.write_bytes(good[: len(good) // 3] if i % 2 else rng.bytes(500))  # truncated, or noise
        kinds["corrupt"].append(len(paths))
        paths.append(str(bad))
    for i in range(20):
        kind = "url_ok" if i < 12 else ("url_404" if i < 16 else "url_cut")
        route = {"url_ok": "ok", "url_404": "gone", "url_cut": "cut"}[kind]
        kinds[kind].append(len(paths))
        paths.append(f"{server_url}/{route}/{i}")
    order = rng.permutation(len(paths))  # bad rows spread over every part
    paths = [paths[i] for i in order]
    where = {int(old): new for new, old in enumerate(order)}
    kinds = {kind: sorted(where[i] for i in rows) for kind, rows in kinds.items()}
    table = pa.table({"sku": [f"sku-{i:05d}" for i in range(len(paths))], "path": paths})
    path = folder / "catalogue.parquet"
    pq.write_table(table, path, row_group_size=500)
    return path, kinds


@pytest.mark.slow
def test_killed_run_resumes_with_every_row_once_and_the_scores_of_a_straight_run(
    tmp_path, tiny_checkpoint
) -> None:
    url_bodies = {
        str(i): make_photo(tmp_path / "served" / f"{i}.jpg", size=SIZE, seed=10_000 + i).read_bytes()
        for i in range(20)
    }
    with ImageServer(url_bodies) as server:
        table_path, kinds = catalogue(tmp_path / "data", server.url)
        options = [
            "--table",
            str(table_path),
            "--checkpoint",
            str(tiny_checkpoint),
            "--id-column",
            "sku",
            "--part-rows",
            "100",
            "--batch-size",
            "16",
            "--url-retries",
            "1",
            "--no-progress",
        ]
        rc, straight_summary = score_cli(*options, "--out", str(tmp_path / "straight.parquet"))
        assert rc == 1 and straight_summary["rows"] == 3000 and straight_summary["scored"] == 3000

        out = tmp_path / "resumed.parquet"
        killed = subprocess.Popen(
            [sys.executable, "-m", "beholder", "-v", "score", *options, "--out", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        # Wait for the event itself: the log line written right after a part is committed.
        for line in killed.stderr:
            if "committed part" in line:
                killed.send_signal(signal.SIGKILL)
                break
        killed.wait(timeout=60)
        killed.stderr.close()
        assert killed.returncode == -signal.SIGKILL
        assert not out.exists()
        manifest = json.loads((parts_dir(out) / MANIFEST).read_text())
        done_rows = sum(part["rows"] for part in manifest["parts"])
        assert 0 < done_rows < 3000

        rc, summary = score_cli(*options, "--out", str(out), "--resume")
    assert rc == 1
    assert summary["resumed"] == done_rows and summary["scored"] == 3000 - done_rows
    assert not parts_dir(out).exists()

    source = pq.read_table(table_path)
    straight, resumed = pq.read_table(tmp_path / "straight.parquet"), pq.read_table(out)
    assert resumed.column_names == [*source.column_names, *SCORE_COLUMNS]
    # Every input row exactly once, in input order, with its own columns untouched.
    assert resumed.select(source.column_names).equals(source)
    assert len(set(resumed.column("sku").to_pylist())) == 3000
    same_scores(resumed, straight, atol=1e-6)

    errors = resumed.column("error").to_pylist()
    means = resumed.column("mean").to_numpy(zero_copy_only=False)
    bad = {row for rows in kinds.values() for row in rows} - set(kinds["url_ok"])
    assert {i for i, e in enumerate(errors) if e is not None} == bad
    assert summary["errors"] == len(bad) == 50 + 50 + 8
    assert all(errors[i] == "file not found" for i in kinds["missing"])
    assert all(errors[i].startswith("not_found") for i in kinds["url_404"])
    assert all(errors[i].startswith("incomplete_body") for i in kinds["url_cut"])
    assert np.isnan(means[sorted(bad)]).all() and not np.isnan(np.delete(means, sorted(bad))).any()
    # A fetched URL scores exactly as the same image read from disk.
    from beholder import Scorer

    scorer = Scorer.from_checkpoint(tiny_checkpoint, batch_size=16)
    served = [
        tmp_path / "served" / f"{resumed.column('path')[i].as_py().rsplit('/', 1)[1]}.jpg"
        for i in kinds["url_ok"]
    ]
    local = [r.mean for r in scorer.score([str(p) for p in served])]
    np.testing.assert_allclose(means[kinds["url_ok"]], local, atol=1e-6)


# -- refusals and formats --------------------------------------------------------------------------


def test_existing_out_or_parts_are_refused_without_resume(tmp_path, capsys) -> None:
    photos(tmp_path, 2)
    pq.write_table(pa.table({"path": ["0.jpg", "1.jpg"]}), tmp_path / "in.parquet")
    out = tmp_path / "out.csv"
    out.write_text("precious\n")
    assert main(["score", "--table", str(tmp_path / "in.parquet"), "--out", str(out)]) == 2
    assert "already exists; pass --resume" in capsys.readouterr().err
    assert out.read_text() == "precious\n"

    out.unlink()
    parts_dir(out).mkdir()
    assert main(["score", "--table", str(tmp_path / "in.parquet"), "--out", str(out)]) == 2
    assert ".out.csv.parts already exists" in capsys.readouterr().err
    assert not out.exists()


def test_usage_errors_name_the_problem(tmp_path, capsys) -> None:
    pq.write_table(pa.table({"paths": ["a.jpg"], "mean": [1.0]}), tmp_path / "in.parquet")
    table = str(tmp_path / "in.parquet")
    assert main(["score", "--table", table, "--out", str(tmp_path / "o.parquet")]) == 2
    assert "no column 'path' (--column); did you mean 'paths'?" in capsys.readouterr().err
    assert main(["score", "--table", table, "--column", "paths", "--out", str(tmp_path / "o.parquet")]) == 2
    assert "already has column(s) mean" in capsys.readouterr().err
    assert main(["score", "--table", table, "--out", str(tmp_path / "o.xlsx")]) == 2
    assert "unknown table format '.xlsx'" in capsys.readouterr().err
    assert main(["score", "--out", str(tmp_path / "o.parquet")]) == 2
    assert "give image PATHs, or --table IN --out OUT" in capsys.readouterr().err
    assert main(["score", "--table", table, "--out", str(tmp_path / "o.csv"), "--top", "1"]) == 2
    assert "--top needs --group-by" in capsys.readouterr().err


def test_csv_and_jsonl_round_trip_keep_every_column_and_resolve_paths_from_the_table(
    tmp_path, tiny_checkpoint, monkeypatch, capsys
) -> None:
    folder = tmp_path / "shop"
    photos(folder / "img", 4)
    names = ["img/0.jpg", "img/1.jpg", str(folder / "img/2.jpg"), "img/3.jpg", "file:///etc/passwd", ""]
    (folder / "in.csv").write_text(
        "path,code,note\n" + "".join(f'{n},00{i},"a, b {i}"\n' for i, n in enumerate(names))
    )
    with open(folder / "in.jsonl", "w") as handle:
        for i, name in enumerate(names):
            handle.write(json.dumps({"path": name, "code": i, "tags": ["x", str(i)]}) + "\n")
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the table's folder, not here
    model = ["--checkpoint", str(tiny_checkpoint), "--no-progress"]
    assert main(["score", "--table", "shop/in.csv", "--out", "out.csv", *model]) == 1
    assert main(["score", "--table", "shop/in.jsonl", "--out", "out.jsonl", *model]) == 1
    capsys.readouterr()

    csv_out = pa_csv.read_csv("out.csv", convert_options=pa_csv.ConvertOptions(strings_can_be_null=True))
    assert csv_out.column_names == ["path", "code", "note", *SCORE_COLUMNS]
    assert [str(v).zfill(3) for v in csv_out.column("code").to_pylist()] == [f"00{i}" for i in range(6)]
    # The CSV's own text comes back unchanged: read back as text, "001" is still "001".
    text = pa_csv.read_csv(
        "out.csv", convert_options=pa_csv.ConvertOptions(column_types={"code": pa.string()})
    )
    assert text.column("code").to_pylist() == [f"00{i}" for i in range(6)]
    assert text.column("note").to_pylist() == [f"a, b {i}" for i in range(6)]

    rows = [json.loads(line) for line in Path("out.jsonl").read_text().splitlines()]
    assert [r["code"] for r in rows] == list(range(6)) and rows[1]["tags"] == ["x", "1"]
    assert set(rows[0]) == {"path", "code", "tags", *SCORE_COLUMNS}
    for row, csv_mean in zip(rows, csv_out.column("mean").to_pylist()):
        assert (row["mean"] is None) == (csv_mean is None)
        if csv_mean is not None:
            assert row["mean"] == pytest.approx(csv_mean, abs=1e-9)
    assert [r["error"] is None for r in rows] == [True, True, True, True, False, False]
    assert "unsupported URL scheme 'file'" in rows[4]["error"]
    assert rows[5]["error"] == "no image path in this row"
    assert 0 <= rows[0]["percentile"] <= 100 and sum(rows[0][f"p{i}"] for i in range(1, 11)) == pytest.approx(
        1
    )


def test_fetcher_keeps_the_downloaders_rules(tmp_path) -> None:
    from beholder.data.download import Fetcher, FetchError

    body = make_photo(tmp_path / "a.jpg", size=SIZE).read_bytes()
    with ImageServer({"a": body}) as server:
        fetcher = Fetcher(retries=0, timeout=10)
        assert fetcher.fetch(f"{server.url}/ok/a") == body
        for url, reason in [
            (f"{server.url}/gone/a", "not_found"),
            (f"{server.url}/cut/a", "incomplete_body"),
            ("file:///etc/passwd", "unsafe_url"),
        ]:
            with pytest.raises(FetchError) as caught:
                fetcher.fetch(url)
            assert caught.value.reason == reason, url
        with pytest.raises(FetchError) as caught:
            Fetcher(retries=0, max_bytes=len(body) - 1).fetch(f"{server.url}/ok/a")
        assert caught.value.reason == "too_large"


def test_malformed_urls_are_row_errors_not_a_crash(tmp_path, tiny_checkpoint, capsys) -> None:
    photos(tmp_path, 1)
    names = [
        "0.jpg",
        "http://[::1/a.jpg",  # an unclosed IPv6 literal: urlsplit raises ValueError
        "http://" + "a" * 70 + ".example/a.jpg",  # a host label over 63 characters: idna raises
        "http://127.0.0.1:99999/a.jpg",  # a port out of range
        "http://user:secret@127.0.0.1:9/a.jpg",  # credentials: urllib would take them for the host
    ]
    pq.write_table(pa.table({"path": names}), tmp_path / "in.parquet")
    model = ["--checkpoint", str(tiny_checkpoint), "--no-progress", "--url-retries", "0"]
    out = tmp_path / "out.parquet"
    assert main(["score", "--table", str(tmp_path / "in.parquet"), "--out", str(out), *model]) == 1
    capsys.readouterr()
    errors = pq.read_table(out).column("error").to_pylist()
    assert errors[0] is None
    assert errors[1] == "malformed URL (Invalid IPv6 URL)"
    assert errors[2].startswith("unsafe_url: malformed URL (") and "label" in errors[2]
    assert errors[3] == "unsafe_url: malformed URL (Port out of range 0-65535)"
    assert errors[4] == "unsafe_url: refused a URL with credentials (user:password@host)"


def test_an_empty_table_gives_an_empty_out_with_every_column(tmp_path, tiny_checkpoint) -> None:
    from beholder import score_table

    pq.write_table(
        pa.table({"path": pa.array([], pa.string()), "g": pa.array([], pa.int64())}), tmp_path / "in.parquet"
    )
    summary = score_table(
        tmp_path / "in.parquet", tmp_path / "out.csv", checkpoint=str(tiny_checkpoint), group_by="g"
    )
    assert summary["rows"] == summary["scored"] == summary["errors"] == 0
    header = (tmp_path / "out.csv").read_text().splitlines()
    assert header == [",".join(f'"{c}"' for c in ["path", "g", *SCORE_COLUMNS, "rank_in_group"])]


def test_resume_refuses_the_parts_of_another_job_and_keeps_them(tmp_path, tiny_checkpoint) -> None:
    from beholder import Scorer, score_table
    from beholder.errors import ConfigError
    from beholder.tables.run import ScorerSpec

    photos(tmp_path / "img", 64)
    table = tmp_path / "in.parquet"
    pq.write_table(pa.table({"path": [f"img/{i}.jpg" for i in range(64)]}), table)
    options = {"checkpoint": str(tiny_checkpoint), "runtime": "torch", "part_rows": 32, "progress": False}
    out = tmp_path / "out.parquet"
    stopping = _StopsOnSecondCall(
        Scorer.from_checkpoint(tiny_checkpoint, batch_size=16),
        ScorerSpec(checkpoint=str(tiny_checkpoint)).describe(),
    )
    with pytest.raises(KeyboardInterrupt):
        score_table(table, out, **options, scorer=stopping)
    committed = (parts_dir(out) / "part-000000000000.parquet").read_bytes()

    with pytest.raises(ConfigError, match="part_rows: 32 then, 16 now"):
        score_table(table, out, **{**options, "part_rows": 16}, resume=True)
    pq.write_table(pa.table({"path": [f"img/{i}.jpg" for i in range(63)]}), table)  # IN changed
    with pytest.raises(ConfigError, match=r"cannot resume .* another job .*input_bytes"):
        score_table(table, out, **options, resume=True)
    assert (parts_dir(out) / "part-000000000000.parquet").read_bytes() == committed and not out.exists()


# -- Must show 4: groups -----------------------------------------------------------------------------


def test_top_1_per_group_keeps_each_groups_best_row(tmp_path, tiny_checkpoint, capsys) -> None:
    images = photos(tmp_path / "img", 500)
    paths = [str(p) for p in images]
    for group in range(0, 100, 10):  # a tie in every tenth group: the earlier row must win it
        paths[group * 5 + 3] = paths[group * 5 + 1]
    table = pa.table(
        {"listing": [f"L{i // 5:03d}" for i in range(500)], "path": paths, "n": list(range(500))}
    )
    pq.write_table(table, tmp_path / "in.parquet")
    common = [
        "--table",
        str(tmp_path / "in.parquet"),
        "--checkpoint",
        str(tiny_checkpoint),
        "--no-progress",
        "--group-by",
        "listing",
        "--part-rows",
        "64",
    ]
    assert main(["score", *common, "--out", str(tmp_path / "ranked.parquet")]) == 0
    assert main(["score", *common, "--top", "1", "--out", str(tmp_path / "top.parquet")]) == 0
    capsys.readouterr()

    ranked = pq.read_table(tmp_path / "ranked.parquet").to_pandas()
    assert len(ranked) == 500
    for _, group in ranked.groupby("listing"):
        # rank 1 is the best mean; ranks follow the means down; equal means go by input order.
        expected = group.sort_values(["mean", "n"], ascending=[False, True])["n"].tolist()
        assert group.sort_values("rank_in_group")["n"].tolist() == expected
        assert sorted(group["rank_in_group"]) == [1, 2, 3, 4, 5]
    tied = ranked[ranked["listing"] == "L000"].set_index("n")
    assert (
        tied.loc[1, "mean"] == tied.loc[3, "mean"]
        and tied.loc[1, "rank_in_group"] < tied.loc[3, "rank_in_group"]
    )

    top = pq.read_table(tmp_path / "top.parquet").to_pandas()
    assert len(top) == 100 and top["listing"].is_unique and (top["rank_in_group"] == 1).all()
    best = ranked.loc[ranked.groupby("listing")["mean"].idxmax()]  # idxmax: the first of equal maxima
    assert top["n"].tolist() == sorted(best["n"].tolist())


def test_rows_that_failed_rank_after_every_scored_row_of_their_group(tmp_path, tiny_checkpoint) -> None:
    from beholder import score_table

    photos(tmp_path, 2)
    table = pa.table(
        {"g": ["a", "a", "a", "b", None], "path": ["nope.jpg", "0.jpg", "1.jpg", "gone.jpg", "0.jpg"]}
    )
    pq.write_table(table, tmp_path / "in.parquet")
    summary = score_table(
        tmp_path / "in.parquet",
        tmp_path / "out.parquet",
        checkpoint=str(tiny_checkpoint),
        runtime="torch",
        group_by="g",
        progress=False,
    )
    assert summary["rows"] == 5 and summary["errors"] == 2 and summary["scored"] == 5
    out = pq.read_table(tmp_path / "out.parquet").to_pydict()
    assert out["rank_in_group"][0] == 3 and sorted(out["rank_in_group"][1:3]) == [1, 2]
    assert out["rank_in_group"][3:] == [1, 1]  # a group of one failed row, and the null group

    # --top 1 leaves group a's failed row out of OUT; the summary still counts both failures.
    top = score_table(
        tmp_path / "in.parquet",
        tmp_path / "top.parquet",
        checkpoint=str(tiny_checkpoint),
        runtime="torch",
        group_by="g",
        top=1,
        progress=False,
    )
    assert top["rows"] == 3 and top["errors"] == 2
    assert sorted(failure["path"] for failure in top["failures"]) == ["gone.jpg", "nope.jpg"]


# -- Must show 2: the Ray engine ---------------------------------------------------------------------


@pytest.mark.slow
def test_ray_engine_gives_the_rows_and_scores_of_the_local_engine(tmp_path, tiny_checkpoint) -> None:
    pytest.importorskip("ray")
    photos(tmp_path / "img", 190)
    paths = [f"img/{i}.jpg" for i in range(190)] + [f"img/missing-{i}.jpg" for i in range(10)]
    table = pa.table({"path": paths[::-1], "row": list(range(200))})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=30)
    options = [
        "--table",
        str(tmp_path / "in.parquet"),
        "--checkpoint",
        str(tiny_checkpoint),
        "--runtime",
        "torch",
        "--part-rows",
        "40",
        "--no-progress",
    ]
    _, local = score_cli(*options, "--out", str(tmp_path / "local.parquet"))
    _, on_ray = score_cli(
        *options, "--out", str(tmp_path / "ray.parquet"), "--engine", "ray", "--num-cpus", "2"
    )
    assert on_ray["engine"] == "ray" and on_ray["rows"] == local["rows"] == 200
    assert on_ray["errors"] == local["errors"] == 10
    same_scores(pq.read_table(tmp_path / "ray.parquet"), pq.read_table(tmp_path / "local.parquet"), atol=1e-5)


@pytest.mark.slow
def test_ray_engine_resumes_scoring_only_the_missing_parts(tmp_path, tiny_checkpoint) -> None:
    pytest.importorskip("ray")
    from beholder import Scorer, score_table
    from beholder.tables.run import ScorerSpec

    photos(tmp_path / "img", 120)
    pq.write_table(pa.table({"path": [f"img/{i}.jpg" for i in range(120)]}), tmp_path / "in.parquet")
    options = {"checkpoint": str(tiny_checkpoint), "runtime": "torch", "part_rows": 30, "progress": False}
    score_table(tmp_path / "in.parquet", tmp_path / "local.parquet", **options)
    # A run interrupted (Ctrl-C) while scoring its second part: part 0 is committed.
    out = tmp_path / "ray.parquet"
    real = Scorer.from_checkpoint(tiny_checkpoint, batch_size=16)
    stopping = _StopsOnSecondCall(real, ScorerSpec(checkpoint=str(tiny_checkpoint)).describe())
    with pytest.raises(KeyboardInterrupt):
        score_table(tmp_path / "in.parquet", out, **options, scorer=stopping)
    assert [p["index"] for p in json.loads((parts_dir(out) / MANIFEST).read_text())["parts"]] == [0]

    summary = score_table(tmp_path / "in.parquet", out, **options, resume=True, engine="ray", num_cpus=2)
    assert summary["resumed"] == 30 and summary["scored"] == 90
    same_scores(pq.read_table(out), pq.read_table(tmp_path / "local.parquet"), atol=1e-5)


class _StopsOnSecondCall:
    """A Scorer that scores one window of rows (one 30-row part), then stops as Ctrl-C would."""

    def __init__(self, scorer, name: str) -> None:
        self.scorer, self.name, self.batch_size, self.calls = scorer, name, scorer.batch_size, 0

    def iter_score(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt
        return self.scorer.iter_score(*args, **kwargs)

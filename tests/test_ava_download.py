"""`beholder ava download` against a local HTTP server that misbehaves in every way the issue lists."""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pandas as pd
import pytest
from PIL import Image

import beholder.data.download as dl
from beholder.data.download import FAILURE_REASONS, download, find_image_url
from beholder.errors import ConfigError
from data_helpers import ava_line, ava_main, ava_subprocess, image_bytes

VOTES = [1, 2, 5, 10, 20, 15, 8, 4, 2, 1]
FAST = {"timeout": 0.3, "retries": 2, "backoff": 0.01, "progress": False}


class FakeSource(ThreadingHTTPServer):
    """Serves /img/<anything_><id>.jpg and /page?IMAGE_ID=<id> with a behaviour per id."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.behaviour: dict[int, str] = {}
        self.page_behaviour: dict[int, str] = {}
        self.delay = 0.0
        self.requests: Counter[str] = Counter()
        self.active = 0
        self.max_active = 0
        # Requests received and not yet answered: the client is surely still inside its host slot
        # then, unlike just after the last byte, when the handler thread may not have returned yet.
        self.unanswered = 0
        self.max_unanswered = 0
        self.lock = threading.Lock()
        self.release = threading.Event()  # ends the "hang" behaviour

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:
        pass  # clients that time out or get killed break pipes; that is the point of these tests


class _Handler(BaseHTTPRequestHandler):
    server: FakeSource

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server = self.server
        with server.lock:
            server.requests[self.path] += 1
            count = server.requests[self.path]
            server.active += 1
            server.max_active = max(server.max_active, server.active)
            server.unanswered += 1
            server.max_unanswered = max(server.max_unanswered, server.unanswered)
        try:
            if server.delay:
                time.sleep(server.delay)
            with server.lock:
                server.unanswered -= 1
            parts = urlsplit(self.path)
            match = re.fullmatch(r"/img/(?:.*_)?(\d+)\.jpg", parts.path)
            if match:
                self._image(int(match.group(1)), count)
            elif parts.path == "/page":
                self._page(int(parse_qs(parts.query)["IMAGE_ID"][0]))
            else:
                self.send_error(404)
        finally:
            with server.lock:
                server.active -= 1

    def _send(self, body: bytes, content_type: str = "image/jpeg", length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def _image(self, image_id: int, count: int) -> None:
        body = image_bytes(96, 72, seed=image_id)
        how = self.server.behaviour.get(image_id, "ok")
        if how == "404":
            self.send_error(404)
        elif how == "500" or (how == "500_then_ok" and count <= 2):
            self.send_error(500)
        elif how == "429_then_ok" and count == 1:
            self.send_response(429)
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif how == "slow" or (how == "slow_then_ok" and count == 1):
            time.sleep(1.0)  # beyond the client's timeout
            self._send(body)
        elif how == "cut" or (how == "cut_then_ok" and count == 1):
            self._send(body[: len(body) // 2], length=len(body) + 500)  # then the connection closes
        elif how == "cut_no_length":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
        elif how == "bad_status_line":  # http.client quotes the line, CR LF included
            self.wfile.write(b"HTTP/9.9 abc\r\n\r\n")
            self.close_connection = True
        elif how == "escape_reason":  # a reason phrase that would clear a terminal
            self.send_response(403, "Forbidden \x1b[2J")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif how == "html":
            self._send(
                b"<!DOCTYPE html><html><body>Sorry, no image</body></html>", "text/html; charset=utf-8"
            )
        elif how == "html_as_jpeg":
            self._send(b"<html><body>Error page served as image/jpeg</body></html>")
        elif how == "no_content_type":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif how == "png":
            self._send(image_bytes(96, 72, seed=image_id, fmt="PNG"), "image/png")
        elif how.startswith("redirect:"):  # redirect:<absolute or relative URL>
            self.send_response(302)
            self.send_header("Location", how.split(":", 1)[1].replace("{id}", str(image_id)))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif how == "endless":  # no Content-Length, never ends: only a size cap stops it
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()
            self.wfile.write(body[:200])
            chunk = b"\0" * 65536
            try:
                while not self.server.release.is_set():
                    self.wfile.write(chunk)
            except OSError:
                pass
        elif how == "hang":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:100])
            self.wfile.flush()
            self.server.release.wait()  # until the test ends: only the client can give up
            self.wfile.write(body[100:])
        else:
            self._send(body)

    def _page(self, image_id: int) -> None:
        how = self.server.page_behaviour.get(image_id, "ok")
        if how == "404":
            self.send_error(404)
            return
        images = '<img src="/static/logo_1.png"><img src="/img/Copyrighted_123_other.jpg">'
        if how.startswith("src:"):  # the page's own <img> points wherever the test says
            images += f'<img src="{how[4:]}">'
        elif how.startswith("og:"):
            images = f'<meta property="og:image" content="{how[3:]}">'
        elif how == "ok":
            images += f'<IMG SRC="/img/Copyrighted_Image_Reuse_Prohibited_{image_id}.jpg" alt="photo">'
        page = f"<html><head><title>DPChallenge</title></head><body>{images}</body></html>"
        self._send(page.encode(), "text/html; charset=utf-8")


@pytest.fixture
def source():
    server = FakeSource()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


def _ava_txt(path: Path, ids) -> Path:
    path.write_text("\n".join(ava_line(i, i, VOTES) for i in ids) + "\n")
    return path


def _failures(out: Path) -> dict[int, str]:
    frame = pd.read_csv(out / "failures.csv")
    assert list(frame.columns) == ["image_id", "reason", "detail", "url"]
    return dict(zip(frame["image_id"], frame["reason"]))


def _complete(out: Path) -> dict[int, Path]:
    files = {}
    for path in out.iterdir():
        if path.suffix in (".jpg", ".png"):
            with Image.open(path) as image:
                image.load()  # raises if the file is incomplete
            files[int(path.stem)] = path
    return files


def test_every_fault_ends_as_a_file_or_a_reason_and_a_rerun_resumes(tmp_path, source):
    behaviours = {
        1: "ok",
        2: "404",
        3: "500_then_ok",
        4: "500",
        5: "slow",
        6: "slow_then_ok",
        7: "cut",
        8: "cut_then_ok",
        9: "html",
        10: "html_as_jpeg",
        11: "429_then_ok",
        12: "cut_no_length",
        13: "png",
        14: "no_content_type",
    }
    source.behaviour.update(behaviours)
    ava_txt = _ava_txt(tmp_path / "AVA.txt", behaviours)
    with open(ava_txt, "a") as handle:
        handle.write("99 99 1 2 3\n")  # malformed: never requested
    out = tmp_path / "images"
    template = source.base + "/img/{id}.jpg"
    summary = download(ava_txt, out, url_template=template, workers=4, **FAST)

    assert set(_complete(out)) == {1, 3, 6, 8, 11, 13, 14}
    assert (out / "13.png").is_file() and not list(out.glob("*.part"))
    expected_failures = {
        2: "not_found",
        4: "http_error",
        5: "timeout",
        7: "incomplete_body",
        9: "not_an_image",
        10: "not_an_image",
        12: "incomplete_body",
    }
    assert _failures(out) == expected_failures
    assert set(expected_failures.values()) <= set(FAILURE_REASONS)
    assert {k: summary[k] for k in ("requested", "ok", "skipped", "failed", "not_attempted")} == {
        "requested": 14,
        "ok": 7,
        "skipped": 0,
        "failed": 7,
        "not_attempted": 0,
    }
    assert json.loads((out / "download.json").read_text())["failures_by_reason"] == dict(
        Counter(expected_failures.values())
    )
    # Transient failures were retried (1 + 2 retries), permanent ones were not.
    requests = {int(re.search(r"(\d+)\.jpg", p).group(1)): n for p, n in source.requests.items()}
    assert requests[2] == 1 and requests[9] == 1 and requests[10] == 1
    assert requests[3] == 3 and requests[4] == 3 and requests[5] == 3 and requests[7] == 3
    assert requests[6] == 2 and requests[8] == 2 and requests[11] == 2
    assert "99" not in str(requests)

    # The server recovers; the rerun fetches only what is missing.
    source.behaviour.clear()
    before = dict(source.requests)
    again = download(ava_txt, out, url_template=template, workers=4, **FAST)
    assert (again["ok"], again["skipped"], again["failed"]) == (7, 7, 0)
    assert set(_complete(out)) == set(behaviours)
    fetched = {p for p, n in source.requests.items() if n > before.get(p, 0)}
    assert fetched == {f"/img/{i}.jpg" for i in expected_failures}
    assert pd.read_csv(out / "failures.csv").empty


def test_page_mode_finds_the_image_in_the_page(tmp_path, source):
    source.page_behaviour.update({2: "no_img", 3: "404"})
    source.behaviour[4] = "404"  # the page is fine, its image is gone
    ava_txt = _ava_txt(tmp_path / "AVA.txt", [1, 2, 3, 4])
    out = tmp_path / "images"
    summary = download(ava_txt, out, url_template=source.base + "/page?IMAGE_ID={id}", page_mode=True, **FAST)
    assert summary["ok"] == 1 and set(_complete(out)) == {1}
    assert _failures(out) == {2: "no_image_in_page", 3: "not_found", 4: "not_found"}
    failures = pd.read_csv(out / "failures.csv").set_index("image_id")
    assert failures.loc[4, "url"].endswith("/img/Copyrighted_Image_Reuse_Prohibited_4.jpg")
    assert not any("logo" in p or "_123_" in p for p in source.requests)


def test_page_mode_never_reads_local_files(tmp_path, source):
    """A hostile page (or redirect) pointing at file://, ftp:// or data: fetches nothing."""
    secret = tmp_path / "secret_7.jpg"
    secret.write_bytes(image_bytes(96, 72, seed=7))
    (tmp_path / "passwd").write_text("root:x:0:0")
    source.page_behaviour.update(
        {
            7: f"src:file://{secret}",
            8: f"og:file://{tmp_path / 'passwd'}",
            9: "og:data:image/png;base64,iVBORw0KGgo=",
            10: "src:ftp://127.0.0.1/secret_10.jpg",
        }
    )
    source.behaviour[11] = f"redirect:file://{secret}"
    ava_txt = _ava_txt(tmp_path / "AVA.txt", [7, 8, 9, 10])
    out = tmp_path / "images"
    summary = download(ava_txt, out, url_template=source.base + "/page?IMAGE_ID={id}", page_mode=True, **FAST)
    assert summary["ok"] == 0 and not _complete(out)
    failures = _failures(out)
    assert failures[7] == failures[10] == "unsafe_url"
    assert failures[8] == failures[9] == "unsafe_url"
    # A plain image URL that redirects to a local file is refused the same way.
    out2 = tmp_path / "images2"
    download(_ava_txt(tmp_path / "AVA2.txt", [11]), out2, url_template=source.base + "/img/{id}.jpg", **FAST)
    assert _failures(out2) == {11: "unsafe_url"} and not _complete(out2)


def test_a_malformed_redirect_location_is_a_failure_not_a_crash(source):
    from beholder.data.download import Fetcher, FetchError

    source.behaviour[1] = "redirect:http://[::1/{id}.jpg"  # an unclosed IPv6 literal
    source.behaviour[2] = "redirect:http://" + "a" * 70 + ".example/{id}.jpg"  # a label over 63 chars
    fetcher = Fetcher(retries=0, timeout=5)
    for image_id in (1, 2):
        with pytest.raises(FetchError) as caught:
            fetcher.fetch(f"{source.base}/img/{image_id}.jpg")
        assert caught.value.reason == "unsafe_url" and "malformed" in caught.value.detail


def test_failure_details_quoting_the_server_are_one_printable_line(source):
    from beholder.data.download import Fetcher, FetchError

    source.behaviour[1] = "bad_status_line"
    source.behaviour[2] = "escape_reason"
    fetcher = Fetcher(retries=0, timeout=5)
    details = []
    for image_id in (1, 2):
        with pytest.raises(FetchError) as caught:
            fetcher.fetch(f"{source.base}/img/{image_id}.jpg")
        details.append(caught.value.detail)
    assert details[0] == "BadStatusLine: HTTP/9.9 abc"
    assert details[1] == "HTTP 403 Forbidden \\x1b[2J"


def test_a_url_template_with_an_invalid_host_name_is_a_usage_error(tmp_path):
    with pytest.raises(ConfigError, match="invalid host name"):
        download(
            _ava_txt(tmp_path / "AVA.txt", [1]),
            tmp_path / "out",
            url_template="http://" + "a" * 70 + ".example/{id}.jpg",
            **FAST,
        )


def test_redirects_are_followed_and_count_against_the_target_host(tmp_path, source):
    target = FakeSource()
    thread = threading.Thread(target=target.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        target.delay = 0.05  # so that concurrent requests would overlap if they were allowed
        ids = list(range(1, 9))
        # "localhost" and "127.0.0.1" are two hosts to the downloader, one socket to the test.
        other = target.base.replace("127.0.0.1", "localhost")
        source.behaviour.update({i: f"redirect:{other}/img/moved_{{id}}.jpg" for i in ids})
        out = tmp_path / "images"
        summary = download(
            _ava_txt(tmp_path / "AVA.txt", ids),
            out,
            url_template=source.base + "/img/{id}.jpg",
            workers=8,
            per_host=1,
            **FAST,
        )
        assert summary["ok"] == len(ids) and set(_complete(out)) == set(ids)
        assert target.max_unanswered == 1  # the redirect target's limit held
        assert sum(target.requests.values()) == len(ids)
    finally:
        target.shutdown()
        target.server_close()


def test_an_endless_body_stops_at_the_size_cap(tmp_path, source):
    source.behaviour.update({1: "endless", 2: "ok"})
    out = tmp_path / "images"
    summary = download(
        _ava_txt(tmp_path / "AVA.txt", [1, 2]),
        out,
        url_template=source.base + "/img/{id}.jpg",
        max_bytes=1024 * 1024,
        **{**FAST, "timeout": 5.0},
    )
    assert summary["ok"] == 1 and _failures(out) == {1: "too_large"}
    assert not list(out.glob("*.part"))


def test_find_image_url():
    page = """<html><img src="/logo.png"><img src='thumbs/Copyrighted_1234.jpg'>
        <img src="https://images.example.com/challenge/Copyrighted_Image_Reuse_Prohibited_123.jpg"></html>"""
    assert find_image_url(page, "http://x.org/image.php?IMAGE_ID=123", 123) == (
        "https://images.example.com/challenge/Copyrighted_Image_Reuse_Prohibited_123.jpg"
    )
    assert (
        find_image_url(page, "http://x.org/a/image.php?IMAGE_ID=1234", 1234)
        == "http://x.org/a/thumbs/Copyrighted_1234.jpg"
    )
    assert find_image_url(page, "http://x.org/", 12) is None
    og = '<meta property="og:image" content="/full/777.jpg"><img src="/logo.png">'
    assert find_image_url(og, "http://x.org/p", 5) == "http://x.org/full/777.jpg"
    assert find_image_url("<img src=<<<", "http://x.org/", 1) is None


def test_per_host_concurrency_is_bounded(tmp_path, source):
    source.delay = 0.1
    ids = list(range(1, 13))
    summary = download(
        _ava_txt(tmp_path / "AVA.txt", ids), tmp_path / "images", url_template=source.base + "/img/{id}.jpg",
        workers=6, per_host=2, **FAST,
    )  # fmt: skip
    assert summary["ok"] == 12
    # Unanswered, not active: a handler thread still finishing after its last byte overlaps the
    # client's next request, which the client's own limit does not (and need not) prevent.
    assert source.max_unanswered == 2


def test_ids_and_limit(tmp_path, source):
    ava_txt = _ava_txt(tmp_path / "AVA.txt", range(1, 11))
    out = tmp_path / "images"
    summary = download(
        ava_txt, out, ids={9, 3, 5, 77}, limit=2, url_template=source.base + "/img/{id}.jpg", **FAST
    )
    assert set(_complete(out)) == {3, 5}  # AVA.txt order, then the limit
    assert summary["requested"] == 2 and summary["ids_without_label"] == 1


def test_unreachable_host_gives_reasons_not_tracebacks(tmp_path, capsys):
    with socket.socket() as probe:  # a port with nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ava_txt = _ava_txt(tmp_path / "AVA.txt", range(1, 31))
    argv = ["ava", "download", "--ava-txt", str(ava_txt), "--out", str(tmp_path / "images")]
    argv += ["--url-template", f"http://127.0.0.1:{port}/img/{{id}}.jpg", "--workers", "2", "--retries", "1"]
    argv += ["--backoff", "0.01", "--timeout", "1", "--abort-after", "4", "--no-progress"]
    assert ava_main(argv) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "is the host reachable?" in captured.out
    summary = json.loads((tmp_path / "images" / "download.json").read_text())
    assert summary["aborted"] and summary["ok"] == 0 and summary["not_attempted"] > 0
    assert set(_failures(tmp_path / "images").values()) == {"connection_error"}


def test_unresolvable_host_is_a_clear_config_error(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(dl.socket, "getaddrinfo", offline)
    monkeypatch.setattr(dl.urllib.request, "getproxies", dict)
    ava_txt = _ava_txt(tmp_path / "AVA.txt", [1])
    argv = ["ava", "download", "--ava-txt", str(ava_txt), "--out", str(tmp_path / "images"), "--page-mode"]
    assert ava_main(argv) == 2
    assert "cannot resolve host 'www.dpchallenge.com'" in capsys.readouterr().err


def test_usage_errors(tmp_path):
    ava_txt = _ava_txt(tmp_path / "AVA.txt", [1])
    with pytest.raises(ConfigError, match="--url-template"):
        download(ava_txt, tmp_path / "images")
    with pytest.raises(ConfigError, match=r"\{id\}"):
        download(ava_txt, tmp_path / "images", url_template="http://x.org/image.jpg")
    with pytest.raises(ConfigError, match="http"):
        download(ava_txt, tmp_path / "images", url_template="file:///tmp/{id}.jpg")
    # A negative --abort-after used to stop the run after its very first outcome.
    with pytest.raises(ConfigError, match="abort_after"):
        download(ava_txt, tmp_path / "images", url_template="http://x.org/{id}.jpg", abort_after=-1)
    with pytest.raises(ConfigError, match="backoff"):
        download(ava_txt, tmp_path / "images", url_template="http://x.org/{id}.jpg", backoff=-1.0)


def _wait_for(condition, seconds: float = 300.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the download to reach the expected state")
        time.sleep(0.05)


def _start(tmp_path: Path, source: FakeSource, ids, timeout: float = 30) -> tuple[Path, object]:
    """A child `beholder ava download` in which ids marked "hang" stall half-way through their body."""
    ava_txt = _ava_txt(tmp_path / "AVA.txt", ids)
    out = tmp_path / "images"
    argv = ["ava", "download", "--ava-txt", str(ava_txt), "--out", str(out), "--workers", "2"]
    argv += ["--url-template", source.base + "/img/{id}.jpg", "--timeout", str(timeout), "--no-progress"]
    return out, ava_subprocess(argv, cwd=tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_killed_midway_then_resumed(tmp_path, source):
    source.behaviour.update({9: "hang", 10: "hang"})
    out, child = _start(tmp_path, source, range(1, 11))
    try:
        # Ids 1-8 done, and both workers half-way through 9 and 10: kill without any cleanup.
        _wait_for(lambda: len(list(out.glob("*.jpg"))) == 8 and len(list(out.glob("*.part"))) == 2)
    finally:
        child.kill()
        child.communicate()
    assert set(_complete(out)) == set(range(1, 9))  # every final name holds a complete image
    assert len(list(out.glob("*.part"))) == 2  # the partial bodies are there, under .part names only

    source.behaviour.clear()
    summary = download(tmp_path / "AVA.txt", out, url_template=source.base + "/img/{id}.jpg", **FAST)
    assert (summary["skipped"], summary["ok"], summary["failed"]) == (8, 2, 0)
    assert set(_complete(out)) == set(range(1, 11)) and not list(out.glob("*.part"))
    assert all(source.requests[f"/img/{i}.jpg"] == 1 for i in range(1, 9))  # not fetched twice


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_cleanly_and_writes_the_summary(tmp_path, source):
    source.behaviour.update({i: "hang" for i in range(7, 11)})
    # The hung bodies never end while the test runs, and the client's own timeout is far away: a
    # child that waited for them would never exit (communicate's deadline is only a safety net).
    out, child = _start(tmp_path, source, range(1, 11), timeout=3600)
    try:
        _wait_for(lambda: len(list(out.glob("*.jpg"))) == 6 and len(list(out.glob("*.part"))) == 2)
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=600)
    finally:
        child.kill()
    assert child.returncode == 130, stderr
    # It stopped while the server still held both requests open: it did not wait for them.
    assert not source.release.is_set() and source.active == 2
    assert "interrupted" in stderr and "Traceback" not in stderr
    summary = json.loads((out / "download.json").read_text())
    assert summary["interrupted"] is True
    assert (summary["ok"], summary["failed"], summary["not_attempted"]) == (6, 0, 4)
    assert set(_complete(out)) == set(range(1, 7)) and not list(out.glob("*.part"))
    assert pd.read_csv(out / "failures.csv").empty


def test_max_failed_fraction_makes_acceptable_failures_exit_0(tmp_path, source, capsys):
    """AVA always has ids that are gone: a pipeline states how many it accepts, and goes on."""
    source.behaviour.update({3: "404", 7: "404"})
    ava_txt = _ava_txt(tmp_path / "AVA.txt", range(1, 11))
    base = ["ava", "download", "--ava-txt", str(ava_txt), "--out", str(tmp_path / "images"), "--no-progress"]
    base += ["--url-template", source.base + "/img/{id}.jpg", "--timeout", "30", "--retries", "0"]
    assert ava_main(base) == 1  # the default accepts no failure, as before
    assert "2 failed" in capsys.readouterr().out
    assert json.loads((tmp_path / "images" / "download.json").read_text())["failed_fraction"] == 0.2
    assert ava_main([*base, "--max-failed-fraction", "0.2"]) == 0  # 2 of 10: at the limit
    assert ava_main([*base, "--max-failed-fraction", "0.1"]) == 1
    assert "20.0% of the ids failed, over --max-failed-fraction" in capsys.readouterr().out
    assert ava_main([*base, "--max-failed-fraction", "1.5"]) == 2
    assert "--max-failed-fraction must be in 0..1" in capsys.readouterr().err

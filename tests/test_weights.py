"""Weights resolution (explicit, BEHOLDER_WEIGHTS_PATH, cache, download) against a local HTTP server."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from beholder.cli import main
from beholder.errors import ConfigError, WeightsUnavailableError
from beholder.models import create_model, registry
from beholder.weights import WeightsSpec, download_file, resolve_weights, sha256_file
from conftest import asset

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class FileServer:
    """Serves ``payload`` at /weights.bin, honouring Range requests; can cut the body short once."""

    def __init__(self, payload: bytes = PAYLOAD) -> None:
        self.payload = payload
        self.requests: list = []
        self.cut_next_at: int | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path != "/weights.bin":
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].rstrip("-"))
                body = server.payload[start:]
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_next_at is not None:
                    body, server.cut_next_at = body[: server.cut_next_at], None
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    instance = FileServer()
    yield instance
    instance.close()


def spec_for(url: str, sha256: str | None = hashlib.sha256(PAYLOAD).hexdigest()) -> WeightsSpec:
    return WeightsSpec("weights.bin", url, sha256, "keras_h5", "test", "test server")


def test_download_verifies_and_caches(server, isolated_cache: Path) -> None:
    spec = spec_for(f"{server.url}/weights.bin")
    path = resolve_weights(spec, progress=False)
    assert path == isolated_cache / "weights" / "weights.bin"
    assert path.read_bytes() == PAYLOAD
    # Second resolution is served from the cache: no new request.
    assert resolve_weights(spec, progress=False) == path
    assert len(server.requests) == 1


def test_interrupted_download_leaves_no_final_file_and_resumes(server, tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    server.cut_next_at = 300_000
    with pytest.raises(OSError, match="ended early"):
        download_file(f"{server.url}/weights.bin", target, progress=False)
    assert not target.exists()
    partial = tmp_path / "weights.bin.part"
    assert partial.stat().st_size == 300_000
    download_file(
        f"{server.url}/weights.bin", target, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False
    )
    assert target.read_bytes() == PAYLOAD and not partial.exists()
    assert server.requests[-1] == ("/weights.bin", "bytes=300000-")


def test_sha256_mismatch_is_refused(server, isolated_cache: Path) -> None:
    spec = spec_for(f"{server.url}/weights.bin", sha256="0" * 64)
    with pytest.raises(WeightsUnavailableError, match="sha256 mismatch"):
        resolve_weights(spec, progress=False)
    assert not (isolated_cache / "weights" / "weights.bin").exists()
    assert not (isolated_cache / "weights" / "weights.bin.part").exists()


def test_search_path_wins_over_download_and_is_verified(server, tmp_path: Path, monkeypatch) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    (good / "weights.bin").write_bytes(PAYLOAD)
    (bad / "weights.bin").write_bytes(b"tampered")
    monkeypatch.setenv("BEHOLDER_WEIGHTS_PATH", f"{bad}:{good}")
    assert resolve_weights(spec_for(f"{server.url}/weights.bin"), progress=False) == good / "weights.bin"
    assert server.requests == []


def test_explicit_file_comes_first_and_must_exist(tmp_path: Path) -> None:
    mine = tmp_path / "mine.h5"
    mine.write_bytes(b"anything")
    assert resolve_weights(spec_for("http://127.0.0.1:9/none"), mine) == mine
    with pytest.raises(ConfigError, match="not found"):
        resolve_weights(spec_for("http://127.0.0.1:9/none"), tmp_path / "missing.h5")


def test_offline_score_exits_2_with_instructions(monkeypatch, tmp_path: Path, capsys) -> None:
    spec = registry.MODELS[registry.DEFAULT_MODEL]
    # Port 9 (discard) on loopback refuses connections: the same failure as having no network.
    # A model without packaged weights or ONNX file (the default model ships its own; others
    # download theirs).
    offline = dataclasses.replace(
        spec,
        packaged=None,
        packaged_onnx=None,
        weights=dataclasses.replace(spec.weights, url="http://127.0.0.1:9/w.hdf5"),
    )
    monkeypatch.setitem(registry.MODELS, registry.DEFAULT_MODEL, offline)
    monkeypatch.delenv("BEHOLDER_WEIGHTS_PATH", raising=False)
    image = asset("ava_sample/images/42039.jpg")
    assert main(["score", str(image)]) == 2
    message = capsys.readouterr().err
    assert "could not download weights weights_mobilenet_aesthetic_0.07.hdf5" in message
    assert "BEHOLDER_WEIGHTS_PATH" in message and "--weights FILE" in message


def test_registered_model_downloads_from_its_url(server, monkeypatch, isolated_cache: Path) -> None:
    """The real idealo file, served locally, goes through download + sha256 + load."""
    source = asset("nima_idealo/weights_mobilenet_aesthetic_0.07.hdf5")
    spec = registry.MODELS[registry.DEFAULT_MODEL]
    assert sha256_file(source) == spec.weights.sha256
    served = dataclasses.replace(
        spec, packaged=None, weights=dataclasses.replace(spec.weights, url=f"{server.url}/weights.bin")
    )
    monkeypatch.setitem(registry.MODELS, registry.DEFAULT_MODEL, served)
    monkeypatch.delenv("BEHOLDER_WEIGHTS_PATH", raising=False)
    server.payload = source.read_bytes()
    model = create_model(registry.DEFAULT_MODEL, progress=False)
    assert (isolated_cache / "weights" / spec.weights.filename).read_bytes() == source.read_bytes()
    assert model.head[1].weight.shape == (10, 1024)

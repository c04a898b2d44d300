"""The real server on a socket: idle and half-open connections, header timeouts, and 413s every client reads."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from beholder.inference import Scorer  # noqa: E402
from beholder.models import Architecture, build_nima, get_model_spec  # noqa: E402
from beholder.serve import create_app  # noqa: E402
from beholder.serve_http import make_server  # noqa: E402

WAIT_S = 60.0  # an upper bound on waiting for the server, not a measured duration


def small_scorer() -> Scorer:
    torch.manual_seed(0)
    spec = get_model_spec("nima-mobilenet-idealo")
    model = build_nima(Architecture(alpha=0.25), preprocessing=spec.preprocessing).eval()
    return Scorer(model, runtime="torch", batch_size=4, workers=2)


def jpeg(size=(96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 80, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


@contextlib.contextmanager
def running(app, **server_options) -> Iterator[tuple[str, object]]:
    """``make_server`` serving ``app`` on a free port in a thread; yields (base URL, server)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = make_server(app, host="127.0.0.1", port=port, log_level="warning", **server_options)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, "the server to answer /healthz")
        yield url, server
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        listener.close()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=WAIT_S)


def test_a_client_is_served_while_300_idle_and_half_open_connections_are_held():
    app = create_app(small_scorer())
    # A long header timeout, so that the 300 connections are certainly still open during the request.
    with running(app, header_timeout_s=600) as (url, server):
        held = [connect(url) for _ in range(300)]
        try:
            for index, sock in enumerate(held):
                if index % 3 == 1:
                    sock.sendall(b"POST /v1/score HT")  # half a request line
                elif index % 3 == 2:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # half the headers
            connections = server.server_state.connections
            wait_until(lambda: len(connections) >= 300, "the server to accept the 300 connections")
            response = httpx.post(f"{url}/v1/score", files=[("files", ("a.jpg", jpeg()))], timeout=10)
            assert response.status_code == 200, response.text
            (result,) = response.json()
            assert result["path"] == "a.jpg" and 1 <= result["mean"] <= 10
            assert len(connections) >= 300  # they were all still held while the client was served
        finally:
            for sock in held:
                sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the peer has closed ``sock`` (a non-blocking socket)."""
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_connections_that_never_complete_a_request_head_are_closed():
    app = create_app(small_scorer())
    with running(app, header_timeout_s=0.5) as (url, _):
        idle, half_line, trickle = connect(url), connect(url), connect(url)
        half_line.sendall(b"POST /v1/sc")
        sockets = {"idle": idle, "half line": half_line, "trickle": trickle}
        for sock in sockets.values():
            sock.setblocking(False)
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 100_000 + b"\r\n\r\n"
        sent = 0
        closed: set[str] = set()

        def all_closed() -> bool:
            nonlocal sent
            if "trickle" not in closed:  # a byte per poll: each byte must not extend the deadline
                with contextlib.suppress(OSError):
                    sent += trickle.send(head[sent : sent + 1])
            closed.update(name for name, sock in sockets.items() if closed_by_server(sock))
            return len(closed) == len(sockets)

        wait_until(all_closed, "the server to close the three connections")
        assert sent < len(head)  # the trickled head was cut off before it was complete
        for sock in sockets.values():
            sock.close()
        # A client that sends its request promptly is unaffected, on a kept-alive connection too.
        with httpx.Client(base_url=url, timeout=WAIT_S) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/v1/models").status_code == 200


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


BIG = b"\0" * (16 * 2**20)  # far past the socket buffers, so a client still sending meets the answer


@pytest.fixture(scope="module")
def small_cap_server():
    with running(create_app(small_scorer(), max_upload_bytes=100_000)) as (url, _):
        yield url


def assert_too_large(status: int, body: bytes) -> None:
    assert status == 413
    assert json.loads(body)["error"] == "upload_too_large"


def test_oversized_upload_is_a_413_that_urllib_receives(small_cap_server):
    body, content_type = multipart("big.png", BIG)
    request = urllib.request.Request(
        f"{small_cap_server}/v1/score", data=body, headers={"Content-Type": content_type}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=WAIT_S)
    assert_too_large(caught.value.code, caught.value.read())


def test_oversized_upload_is_a_413_that_httpx_and_requests_receive(small_cap_server):
    response = httpx.post(f"{small_cap_server}/v1/score", files=[("files", ("big.png", BIG))], timeout=WAIT_S)
    assert_too_large(response.status_code, response.content)

    # Chunked transfer: no Content-Length, so the size is counted while it streams. The body is a
    # well-formed multipart part that only grows too large, so the one thing wrong with it is its size.
    head, content_type = multipart("big.png", b"")
    head = head[: head.index(b"\r\n\r\n") + 4]

    def chunks():
        yield head
        for _ in range(16):
            yield b"\0" * 2**20

    headers = {"Content-Type": content_type}
    streamed = httpx.post(f"{small_cap_server}/v1/score", content=chunks(), headers=headers, timeout=WAIT_S)
    assert_too_large(streamed.status_code, streamed.content)
    requests = pytest.importorskip("requests")
    answer = requests.post(f"{small_cap_server}/v1/score", files={"files": ("big.png", BIG)}, timeout=WAIT_S)
    assert_too_large(answer.status_code, answer.content)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("expect", ["100-continue", ""], ids=["expect-continue", "no-expect"])
def test_oversized_upload_is_a_413_that_curl_receives(small_cap_server, tmp_path, expect):
    big = tmp_path / "big.png"
    big.write_bytes(BIG)
    command = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H", f"Expect: {expect}"]
    command += ["-F", f"files=@{big}", f"{small_cap_server}/v1/score"]
    done = subprocess.run(command, capture_output=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr.decode()
    body, _, status = done.stdout.rpartition(b"\n")
    assert_too_large(int(status), body)


def test_requests_over_the_active_limit_get_a_json_503_until_a_slot_frees(caplog):
    app = create_app(small_scorer(), max_active_requests=1)
    with running(app) as (url, _):
        stalled = connect(url)  # a request whose body never comes holds the one slot
        stalled.sendall(
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000\r\n\r\n--b"
        )

        def busy() -> bool:
            return httpx.get(f"{url}/healthz", timeout=WAIT_S).status_code == 503

        wait_until(busy, "the stalled request to take the slot")
        response = httpx.get(f"{url}/v1/models", timeout=WAIT_S)
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert response.json()["error"] == "busy"
        stalled.close()
        wait_until(lambda: not busy(), "the slot to be freed")
    # A client that goes away mid-upload is not a scoring failure: nothing logged as an error.
    assert not [r for r in caplog.records if r.name == "beholder.serve" and r.levelname == "ERROR"]


@pytest.mark.parametrize("flag", ["--header-timeout", "--max-active-requests", "--limit-concurrency"])
def test_serve_cli_refuses_non_positive_connection_limits(tmp_path, capsys, flag):
    from beholder.cli import main
    from beholder.models import save_checkpoint

    checkpoint = save_checkpoint(tmp_path / "small.pt", small_scorer().model)
    assert main(["serve", "--checkpoint", str(checkpoint), "--runtime", "torch", flag, "0"]) == 2
    assert f"{flag} must be positive" in capsys.readouterr().err

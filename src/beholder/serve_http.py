"""The service's network layer: how connections and request bodies are bounded before any handler runs.

What a slow or hostile client can hold, and for how long:

* **A connection that never completes a request head** (idle, or half a request line, sent a byte
  at a time) is closed ``header_timeout_s`` after it opened or after its previous response. The
  deadline is not reset by each byte, so trickling cannot extend it. uvicorn has a keep-alive timer
  only, armed after a response, so a fresh connection that sends nothing would otherwise stay open
  for ever (:class:`HeaderTimeoutH11Protocol`).
* **Open connections**, idle ones included, are capped by uvicorn's ``limit_concurrency`` (503
  above it). The cap is set well above what idle sockets cost (a few kB each), so holding a few
  hundred of them open does not lock other clients out until the header timeout closes them.
* **Requests being handled** (bodies in memory, decoding, queued for the model) are capped by
  :class:`ActiveRequestLimitMiddleware`: a JSON 503 with ``Retry-After`` above it.
* **An oversized body** is answered 413 by :class:`BodyLimitMiddleware`, after reading and
  discarding up to ``drain_bytes`` more of it. A client that writes its whole body before reading
  (urllib, requests) would otherwise see its connection reset instead of the 413.
* A body that arrives too slowly is bounded by the handler's ``request_timeout_s`` (408).

:func:`make_server` puts these together; ``beholder serve`` and the tests use it. Past these
limits, :func:`read_uploads` turns a multipart body into ``(name, bytes)`` uploads and refuses any
field that is not a file (the service never reads server paths or fetches URLs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

#: Seconds a connection may take to send a complete request head (request line and headers).
DEFAULT_HEADER_TIMEOUT_S = 10.0
#: Seconds an idle keep-alive connection stays open after a response.
DEFAULT_KEEP_ALIVE_S = 5
#: Open connections (idle ones included) before uvicorn answers 503.
DEFAULT_MAX_CONNECTIONS = 1024
#: Requests handled at once (uploads in memory, decoding, waiting for the model) before a 503.
DEFAULT_MAX_ACTIVE_REQUESTS = 32
#: How much of an oversized body is read and discarded so that the client receives the 413.
DEFAULT_DRAIN_BYTES = 64 * 1024 * 1024
#: How long that draining may take.
DEFAULT_DRAIN_TIMEOUT_S = 10.0


class ApiError(Exception):
    """An error answered as JSON: ``{"error": code, "detail": message, "files": [...]}``."""

    def __init__(self, status: int, code: str, detail: str, files: list[dict[str, str]] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.files = status, code, detail, files

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail}
        if self.files is not None:
            body["files"] = self.files
        return body

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers())

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": "1"} if self.status == 503 else None


def too_large(limit: int) -> ApiError:
    """The 413 for a body over ``limit`` bytes (raised from ``receive`` while a body streams)."""
    detail = f"request body is larger than the limit of {limit:,} bytes ({limit / 2**20:.1f} MiB)"
    return ApiError(413, "upload_too_large", detail)


class BodyLimitMiddleware:
    """ASGI middleware: 413 when the body is over ``max_bytes``, before the app sees it.

    A declared Content-Length over the limit is refused before the app runs; a chunked or
    understated body is counted while it streams, and refused as soon as it passes the limit.
    Either way up to ``drain_bytes`` of the rest is read and discarded first (within
    ``drain_timeout_s``), unless the client asked ``Expect: 100-continue`` and so waits for an answer
    before sending: reading would invite the body. A body that is larger still is cut off and its
    connection closed.
    """

    def __init__(
        self,
        app: Callable,
        max_bytes: int,
        drain_bytes: int = DEFAULT_DRAIN_BYTES,
        drain_timeout_s: float = DEFAULT_DRAIN_TIMEOUT_S,
    ):
        self.app, self.max_bytes = app, max_bytes
        self.drain_bytes, self.drain_timeout_s = drain_bytes, drain_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        waits_for_continue = headers.get(b"expect", b"").lower() == b"100-continue"
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                response = JSONResponse({"error": "bad_request", "detail": "invalid Content-Length"}, 400)
                await response(scope, receive, send)
                return
            if length > self.max_bytes:
                if not waits_for_continue and length <= self.max_bytes + self.drain_bytes:
                    await self._drain(receive, length)
                await too_large(self.max_bytes).response()(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    if message.get("more_body", False):
                        await self._drain(receive, self.drain_bytes)
                    raise too_large(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)

    async def _drain(self, receive: Callable, at_most: int) -> None:
        async def read() -> None:
            drained = 0
            while drained <= at_most:
                message = await receive()
                if message["type"] != "http.request":
                    return
                drained += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(read(), self.drain_timeout_s)


class ActiveRequestLimitMiddleware:
    """ASGI middleware: a JSON 503 (``Retry-After: 1``) while ``max_active`` HTTP requests are in progress.

    uvicorn's own limit counts connections, idle ones included; this one counts only the requests
    that hold memory and workers. All on the event loop's thread, so a plain counter suffices.
    """

    def __init__(self, app: Callable, max_active: int):
        self.app, self.max_active = app, max_active
        self.active = 0

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.max_active:
            busy = ApiError(503, "busy", f"{self.max_active} requests in progress; retry shortly")
            await busy.response()(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def header_timeout_protocol(header_timeout_s: float) -> type:
    """uvicorn's h11 protocol, closing connections that do not complete a request head in time."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    if header_timeout_s <= 0:
        raise ValueError(f"the header timeout must be positive, got {header_timeout_s}")

    class HeaderTimeoutH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._await_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

        def _waiting_for_head(self) -> bool:
            return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

        def _await_head(self) -> None:
            # Armed once per request head, never re-armed by the bytes of that head (slowloris).
            if not self._waiting_for_head():
                self._cancel_head_timer()
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self._waiting_for_head():
                log.debug("closing a connection that sent no complete request head in %g s", header_timeout_s)
                self.transport.close()

    return HeaderTimeoutH11Protocol


def make_server(
    app: Callable,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S,
    keep_alive_s: int = DEFAULT_KEEP_ALIVE_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    log_level: str = "info",
):
    """A :class:`uvicorn.Server` for ``app`` with the bounds above (``.run()`` serves until stopped)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=header_timeout_protocol(header_timeout_s),
        limit_concurrency=max_connections,
        timeout_keep_alive=keep_alive_s,
        log_level=log_level,
    )
    return uvicorn.Server(config)


# --------------------------------------------------------------------------------------------------
# Request bodies -> uploads


def _upload_name(filename: str | None, index: int) -> str:
    # Browsers send base names; keep at most 255 characters of whatever the client said.
    name = os.path.basename((filename or "").replace("\\", "/")) or f"upload-{index + 1}"
    return name[:255]


async def read_uploads(request: Request, max_files: int) -> list[tuple[str, bytes]]:
    """The uploaded files of a multipart request as (name, bytes); ApiError for anything else."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send images as multipart/form-data file uploads (this service never reads paths or URLs)",
        )
    parser = MultiPartParser(
        request.headers, request.stream(), max_files=max_files, max_fields=max_files
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise ApiError(
                413, "too_many_files", f"more than {max_files} files in one request"
            ) from exc
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc.message}") from exc
    try:
        uploads: list[tuple[str, bytes]] = []
        for index, (field_name, value) in enumerate(form.multi_items()):
            if not isinstance(value, UploadFile):
                raise ApiError(
                    422,
                    "not_a_file",
                    f"form field {field_name!r} is not a file upload: this service scores uploaded "
                    "files only and never reads server paths or fetches URLs",
                )
            uploads.append((_upload_name(value.filename, index), await value.read()))
    finally:
        await form.close()
    if not uploads:
        raise ApiError(422, "no_files", "no image files in the request (multipart field 'files')")
    return uploads

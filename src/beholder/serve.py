"""HTTP service and web page: score uploaded photos with a :class:`~beholder.inference.Scorer`.

Endpoints (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

* ``POST /v1/score``: multipart upload of one or many images; returns the same JSON objects as
  ``beholder score --format json``, in upload order;
* ``POST /v1/rank``: the same, best mean first (failed files last);
* ``GET /v1/models``: the served model (name, architecture, preprocessing, runtime) and the limits;
* ``GET /healthz``: liveness;
* ``GET /``: a self-contained web page to drop photos on and compare them.

Design:

* Only uploaded bytes are scored. No endpoint reads server paths or fetches URLs: a form field
  that is not a file upload is rejected (422), never interpreted.
* Limits give JSON errors naming the offending file: request body over ``max_upload_bytes``
  (413, from Content-Length before the app reads it, or while streaming; see
  :mod:`beholder.serve_http` for that and the connection limits), more than ``max_files`` files
  (413), a file that is not an image (415) or is empty/corrupt/truncated/over ``max_pixels``
  (422), a request slower than ``request_timeout_s`` (408 while uploading, 504 after).
  When several files are sent and only some fail, the response is 200 with per-file ``error``
  objects, as ``beholder score`` prints them; an error status means nothing could be scored.
* Decoding and preprocessing run on a thread pool, never on the event loop. Preprocessed
  tensors from concurrent requests are micro-batched (:class:`MicroBatcher`): the first one
  waits up to ``batch_window_ms`` for others, up to ``max_batch`` images, then one runtime call
  on a dedicated thread serves them all. Requests arriving during a model call form the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from beholder import __version__
from beholder.errors import ConfigError
from beholder.imageio import DecodeBudget
from beholder.inference import NOT_FINITE, Scorer, ScoreResult, collect, fill_scores, rank
from beholder.pages import page_text
from beholder.preprocessing import load_input
from beholder.serve_http import (
    DEFAULT_MAX_ACTIVE_REQUESTS,
    ActiveRequestLimitMiddleware,
    ApiError,
    BodyLimitMiddleware,
    read_uploads,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_FILES = 32
#: Lower than the library's 128 MP: a service decodes several uploads at once (3 bytes per pixel).
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_REQUEST_TIMEOUT_S = 60.0
DEFAULT_BATCH_WINDOW_MS = 5.0
#: Decode memory shared by the service's decoding threads. Small, because the service process
#: already holds the runtime: with it, a request of four 62 MP 16-bit PNGs stays near 1.5 GB of RSS.
#: An image that needs more than this still decodes, alone.
DEFAULT_DECODE_BUDGET_BYTES = 384 * 2**20

_NOT_AN_IMAGE = "not an image"  # the start of ImageLoadError.problem for undecodable data


@dataclass
class _Job:
    batch: np.ndarray  # (n, 3, H, W) float32
    future: asyncio.Future


@dataclass
class BatcherStats:
    calls: int = 0
    images: int = 0


class MicroBatcher:
    """Collect preprocessed batches from concurrent requests into few model calls.

    Args:
        predict: (B, 3, H, W) float32 array -> (B, 10) probabilities; runs on one dedicated thread.
        max_batch: at most this many images per model call (larger submissions are split).
        window_s: how long the first waiting job waits for company before the call.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], *, max_batch: int, window_s: float):
        if max_batch < 1:
            raise ConfigError(f"max batch must be at least 1, got {max_batch}")
        self.predict, self.max_batch, self.window_s = predict, max_batch, max(0.0, window_s)
        self.stats = BatcherStats()
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._carry: _Job | None = None

    def _ensure_started(self) -> asyncio.Queue:
        # Bound to the running loop lazily: test clients may run each app instance in its own loop.
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop, self._queue, self._carry = loop, asyncio.Queue(), None
            if self._executor is None:  # created here so that an app survives close() and restarts
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="beholder-model")
            self._task = loop.create_task(self._run(), name="beholder-micro-batcher")
        assert self._queue is not None
        return self._queue

    @property
    def pending(self) -> int:
        """Jobs waiting for the model (for /healthz)."""
        return (self._queue.qsize() if self._queue is not None else 0) + (self._carry is not None)

    async def submit(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (n, 10) for a preprocessed (n, 3, H, W) batch, computed with others'."""
        queue = self._ensure_started()
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(batch), self.max_batch):
            future = loop.create_future()
            queue.put_nowait(_Job(batch[start : start + self.max_batch], future))
            futures.append(future)
        parts = await asyncio.gather(*futures)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    async def _next_jobs(self, queue: asyncio.Queue) -> list[_Job]:
        first = self._carry or await queue.get()
        self._carry = None
        jobs, size = [first], len(first.batch)
        if size < self.max_batch and self.window_s > 0 and queue.qsize() == 0:
            await asyncio.sleep(self.window_s)  # give concurrent requests time to join
        while size < self.max_batch and not queue.empty():
            job = queue.get_nowait()
            if size + len(job.batch) > self.max_batch:
                self._carry = job  # first in line for the next call
                break
            jobs.append(job)
            size += len(job.batch)
        return jobs

    async def _run(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            jobs = [job for job in await self._next_jobs(queue) if not job.future.done()]
            if not jobs:  # every requester timed out or went away while waiting
                continue
            try:
                batch = np.concatenate([job.batch for job in jobs]) if len(jobs) > 1 else jobs[0].batch
                probabilities = await loop.run_in_executor(self._executor, self.predict, batch)
            except Exception as exc:  # fails these requests (they log it), not the service
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.stats.calls += 1
            self.stats.images += len(batch)
            start = 0
            for job in jobs:
                end = start + len(job.batch)
                if not job.future.done():  # the request may have timed out meanwhile
                    job.future.set_result(probabilities[start:end])
                start = end

    async def close(self) -> None:
        if self._task is not None and self._loop is asyncio.get_running_loop():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


@dataclass
class ServiceConfig:
    """The service's limits (see :func:`create_app`)."""

    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_files: int = DEFAULT_MAX_FILES
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS
    max_batch: int = 32
    workers: int = 2
    decode_budget_bytes: int = DEFAULT_DECODE_BUDGET_BYTES

    def check(self) -> None:
        for name in ("max_upload_bytes", "max_files", "max_batch", "workers", "decode_budget_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ConfigError(f"max_pixels must be at least 1, got {self.max_pixels}")
        if self.request_timeout_s <= 0:
            raise ConfigError(f"request timeout must be positive, got {self.request_timeout_s}")
        if self.batch_window_ms < 0:
            raise ConfigError(f"batch window must not be negative, got {self.batch_window_ms}")


def public_model_name(name: str) -> str:
    """The model's name as clients see it: a checkpoint's file name, never the server's path to it."""
    return os.path.basename(name.replace("\\", "/").rstrip("/")) or name


class ScoringService:
    """Uploads -> per-file results: decoding on a thread pool, the model through a micro-batcher."""

    def __init__(self, scorer: Scorer, config: ServiceConfig):
        self.scorer, self.config = scorer, config
        self.runtime_name = scorer.runtime_name
        self.model_name = public_model_name(scorer.name)
        self.decode_budget = DecodeBudget(config.decode_budget_bytes)
        self._decode_pool: ThreadPoolExecutor | None = None
        self.batcher = MicroBatcher(
            scorer.predict, max_batch=config.max_batch, window_s=config.batch_window_ms / 1000
        )
        self.started = time.time()

    def _prepare(self, data: bytes, name: str) -> np.ndarray:
        # As Scorer.preprocess, but reserving decode memory from the service's own budget.
        scorer = self.scorer
        return load_input(
            data,
            scorer.preprocessing,
            name=name,
            max_pixels=self.config.max_pixels,
            fidelity=scorer.fidelity,
            budget=self.decode_budget,
        )  # (3, H, W)

    async def score(self, uploads: list[tuple[str, bytes]]) -> list[ScoreResult]:
        loop = asyncio.get_running_loop()
        if self._decode_pool is None:
            self._decode_pool = ThreadPoolExecutor(self.config.workers, thread_name_prefix="beholder-decode")
        futures = [
            loop.run_in_executor(self._decode_pool, self._prepare, data, name) for name, data in uploads
        ]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        results, inputs = collect((name, outcome) for (name, _), outcome in zip(uploads, outcomes))
        if inputs:
            fill_scores(results, await self.batcher.submit(np.stack(inputs)))  # (n, 10)
        return results

    def describe_model(self) -> dict[str, Any]:
        scorer = self.scorer
        return {
            "name": self.model_name,
            "architecture": scorer.architecture.to_dict(),
            "preprocessing": scorer.preprocessing.to_dict(),
            "runtime": self.runtime_name,
            "input_size": list(scorer.preprocessing.input_size),
            "scores": list(range(1, scorer.architecture.num_classes + 1)),
        }

    def limits(self) -> dict[str, Any]:
        c = self.config
        return {
            "max_upload_bytes": c.max_upload_bytes,
            "max_files": c.max_files,
            "max_pixels": c.max_pixels,
            "request_timeout_s": c.request_timeout_s,
            "batch_window_ms": c.batch_window_ms,
            "max_batch": c.max_batch,
            "decode_budget_bytes": c.decode_budget_bytes,
        }

    async def close(self) -> None:
        await self.batcher.close()
        if self._decode_pool is not None:
            self._decode_pool.shutdown(wait=False)
            self._decode_pool = None


class ErrorBody(BaseModel):
    """An error response; ``files`` lists the per-file problems when files were at fault."""

    error: str
    detail: str
    # The scoring core's result type (its JSON form is the same as `beholder score --format json`).
    files: list[ScoreResult] | None = None


def _failure(results: list[ScoreResult]) -> ApiError:
    files = [r.to_dict() for r in results]
    names = ", ".join(repr(r.path) for r in results[:5]) + (" ..." if len(results) > 5 else "")
    if all(r.error.startswith(_NOT_AN_IMAGE) for r in results):
        return ApiError(415, "unsupported_media_type", f"not an image or unsupported format: {names}", files)
    detail = "; ".join(f"{r.path!r}: {r.error}" for r in results[:5])
    if any(r.error == NOT_FINITE for r in results):
        # The images were fine; the model's output was not. JSON, naming each file, never a bare 500.
        return ApiError(422, "model_output_not_finite", f"no image could be scored: {detail}", files)
    return ApiError(422, "invalid_image", f"no image could be scored: {detail}", files)


_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one or more image files (any field name; every part must be a file)",
                        }
                    },
                    "required": ["files"],
                }
            }
        },
    }
}


#: What /v1/score and /v1/rank declare alike: the body they read, what they answer, how they fail.
_SCORING_ROUTE: dict[str, Any] = {
    "response_model": list[ScoreResult],
    "openapi_extra": _MULTIPART_BODY,
    "responses": {
        status: {"model": ErrorBody, "description": text}
        for status, text in {
            408: "the upload did not complete within the request timeout",
            413: "request body or file count over the limit",
            503: "too many requests in progress (retry after the Retry-After seconds)",
            415: "no file was an image",
            422: "no file could be scored (empty, corrupt, truncated, too many pixels), or a non-file field",
            504: "scoring did not complete within the request timeout",
        }.items()
    },
}


async def _answer(request: Request, service: ScoringService, *, ranked: bool) -> JSONResponse:
    """One scoring request, upload to JSON answer, within the request timeout."""
    config = service.config
    phase = "upload"

    async def work() -> list[ScoreResult]:
        nonlocal phase
        uploads = await read_uploads(request, config.max_files)
        phase = "scoring"
        return await service.score(uploads)

    try:
        results = await asyncio.wait_for(work(), timeout=config.request_timeout_s)
    except asyncio.TimeoutError:
        if phase == "upload":
            raise ApiError(
                408, "upload_timeout", f"upload not complete within {config.request_timeout_s:g} s"
            ) from None
        raise ApiError(
            504, "timeout", f"scoring did not complete within {config.request_timeout_s:g} s"
        ) from None
    except (ApiError, asyncio.CancelledError):
        raise
    except ClientDisconnect:  # the client went away mid-upload: nobody to answer, nothing failed
        log.debug("client disconnected during the upload")
        raise ApiError(400, "client_disconnected", "the client disconnected during the upload") from None
    except Exception as exc:  # a runtime failure: answer JSON naming it, keep serving
        log.exception("scoring failed")
        raise ApiError(500, "internal_error", f"scoring failed: {type(exc).__name__}: {exc}") from exc
    if all(not r.ok for r in results):
        raise _failure(results)
    if ranked:
        results = rank(results)
    return JSONResponse([r.to_dict() for r in results])


def create_app(
    scorer: Scorer,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    batch_window_ms: float = DEFAULT_BATCH_WINDOW_MS,
    max_batch: int | None = None,
    workers: int | None = None,
    max_active_requests: int = DEFAULT_MAX_ACTIVE_REQUESTS,
    decode_budget_bytes: int = DEFAULT_DECODE_BUDGET_BYTES,
):
    """Build the FastAPI app serving ``scorer``.

    Args:
        scorer: the model, its preprocessing and runtime (``Scorer(..., runtime='auto')``).
        max_upload_bytes: largest request body (all files together); 413 above it.
        max_files: most files in one request; 413 above it.
        max_pixels: largest image (width x height); 422 above it (decompression bombs).
        request_timeout_s: a request (upload, decoding, queueing, model) taking longer fails:
            408 if the upload itself was not complete by then, 504 otherwise.
        batch_window_ms: how long a request waits for concurrent ones to share a model call.
        max_batch: most images per model call (default: the scorer's batch size).
        workers: decoding threads (default: the scorer's).
        max_active_requests: requests handled at once; 503 (``busy``) above it.
        decode_budget_bytes: decode memory shared by all requests' decoding threads.
    """
    config = ServiceConfig(
        max_upload_bytes=max_upload_bytes,
        max_files=max_files,
        max_pixels=max_pixels,
        request_timeout_s=request_timeout_s,
        batch_window_ms=batch_window_ms,
        max_batch=max_batch or scorer.batch_size,
        workers=workers or scorer.workers,
        decode_budget_bytes=decode_budget_bytes,
    )
    config.check()
    if max_active_requests < 1:
        raise ConfigError(f"max_active_requests must be at least 1, got {max_active_requests}")
    service = ScoringService(scorer, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await service.close()

    app = FastAPI(
        title="Beholder",
        version=__version__,
        description=(
            "Predict the distribution of human 1-10 aesthetic ratings for photos "
            "(NIMA, Talebi & Milanfar 2018). Upload images as multipart/form-data."
        ),
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_upload_bytes)
    app.add_middleware(ActiveRequestLimitMiddleware, max_active=max_active_requests)  # the outer one

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = str(exc.detail).lower().replace(" ", "_") if exc.status_code in (404, 405) else "http_error"
        return JSONResponse({"error": code, "detail": str(exc.detail)}, exc.status_code, headers=exc.headers)

    _add_routes(app, service)
    return app


def _add_routes(app: FastAPI, service: ScoringService) -> None:
    """The scoring endpoints, the metadata endpoints and the web page."""
    page = page_text("static", "index.html")

    @app.post("/v1/score", summary="Score images, in upload order", **_SCORING_ROUTE)
    async def score(request: Request) -> JSONResponse:
        """Rating distribution, mean and std of each uploaded image (per-file ``error`` if it failed)."""
        return await _answer(request, service, ranked=False)

    @app.post("/v1/rank", summary="Score images, best mean first", **_SCORING_ROUTE)
    async def rank_endpoint(request: Request) -> JSONResponse:
        """As ``/v1/score``, sorted by mean score, best first; failed files last."""
        return await _answer(request, service, ranked=True)

    @app.get("/v1/models", summary="The served model and the service's limits")
    async def models() -> dict[str, Any]:
        return {"models": [service.describe_model()], "limits": service.limits()}

    # Load balancers and uptime checkers often probe with HEAD: answer it, outside the schema.
    @app.head("/healthz", include_in_schema=False)
    async def healthz_probe() -> Response:
        return Response(status_code=200)

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, Any]:
        stats = service.batcher.stats
        return {
            "status": "ok",
            "model": service.model_name,
            "runtime": service.runtime_name,
            "uptime_s": round(time.time() - service.started, 1),
            "model_calls": stats.calls,
            "images_scored": stats.images,
            "queued": service.batcher.pending,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

"""Polite, resumable, concurrent download of the AVA images (standard library only).

Each image is fetched from a URL template containing ``{id}``; in page mode the template gives a
DPChallenge-style HTML page per id (``image.php?IMAGE_ID={id}``, the original AVA source) whose
``<img>`` holds the image address. Every request has a timeout and is retried with exponential
backoff and jitter (``Retry-After`` honoured); at most ``per_host`` requests run at once per host.

A body is streamed to ``<id>.<random>.part`` in the output directory, must decode completely as an
image (:func:`beholder.imageio.open_image`), and is then renamed to ``<id>.<ext>`` atomically: a
final name always holds a complete image, so a rerun skips those and a killed run leaves only
``.part`` files, which the next run deletes. Outcomes go to ``download.json`` and ``failures.csv``.

:class:`Fetcher` applies the same rules (schemes, redirects, per-host limit, timeouts, retries,
size cap) to single URLs whose bodies stay in memory: catalogue scoring uses it.

This module is longer than most (about 800 lines) because one concept, fetching untrusted bodies
safely, needs its parts side by side: the scheme and redirect rules, the per-host limits, the size
and time caps, the checks before an atomic rename, and the failure reasons they produce.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import email.utils
import http.client
import logging
import os
import queue
import random
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from beholder import __version__
from beholder.data.ava import find_images, parse_ava_txt
from beholder.errors import ConfigError, ImageLoadError, one_line
from beholder.files import (
    PathLike,
    atomic_write,
    make_temp,
    progress_bar,
    remove_stale_temporaries,
    write_json,
)
from beholder.imageio import open_image

log = logging.getLogger(__name__)

#: The original AVA source: one HTML page per image id (use with ``page_mode=True``).
DPCHALLENGE_PAGE_TEMPLATE = "http://www.dpchallenge.com/image.php?IMAGE_ID={id}"
#: Why an id failed, as written to ``failures.csv``.
FAILURE_REASONS = (
    "not_found",  # HTTP 404 / 410: not retried
    "http_error",  # other HTTP status; 408, 429 and 5xx are retried
    "timeout",  # no answer within the timeout, on every attempt
    "connection_error",  # refused, reset, DNS: host unreachable or offline
    "incomplete_body",  # fewer bytes than Content-Length, or a truncated image
    "not_an_image",  # HTML (or anything else) where an image was expected
    "corrupt_image",  # complete body that does not decode
    "no_image_in_page",  # page mode: no <img> for this id in the page
    "too_large",  # the body is over the size cap (max_bytes)
    "unsafe_url",  # not an http(s) URL, or a malformed one (a page's <img>, a redirect): never fetched
    "write_error",  # the output directory is not writable (disk full, permissions)
    "unexpected_error",  # a bug in beholder: please report it (the log has the traceback)
)
FAILURES_COLUMNS = ["image_id", "reason", "detail", "url"]
SUMMARY_FILE = "download.json"
FAILURES_FILE = "failures.csv"

_CHUNK = 64 * 1024
_MAX_PAGE_BYTES = 4 * 1024 * 1024
#: Default cap on one image body: far above any real photo, far below what fills a disk.
MAX_IMAGE_BYTES = 50 * 1024 * 1024
#: The only schemes ever fetched: for templates, page images and redirects alike. urllib's default
#: opener also speaks file://, ftp:// and data:, which would let a hostile page read local files.
ALLOWED_SCHEMES = ("http", "https")
_MAX_REDIRECTS = 5
_REDIRECT_STATUS = {301, 302, 303, 307, 308}
_RETRY_STATUS = {408, 425, 429}
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


class _Failure(Exception):
    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        retryable: bool,
        url: str = "",
        retry_after: float | None = None,
    ):
        # Details quote what a server sent (a status line, a reason phrase): one line, and no
        # control characters, in failures.csv, a table's error column and a terminal.
        detail = one_line(detail)
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retryable = reason, detail, retryable
        self.url, self.retry_after = url, retry_after


class _Cancelled(Exception):
    """The run is stopping (Ctrl-C or too many connection errors)."""


@dataclass
class _Outcome:
    image_id: int
    status: str  # ok | skipped | failed | cancelled
    reason: str = ""
    detail: str = ""
    url: str = ""
    nbytes: int = 0


class _ImageSources(HTMLParser):
    """Collects ``<img src>`` and ``og:image`` addresses from a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.og_images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name.lower(): value for name, value in attrs if value}
        if tag == "img" and values.get("src"):
            self.images.append(values["src"].strip())
        elif tag == "meta" and values.get("property", "").lower() == "og:image" and values.get("content"):
            self.og_images.append(values["content"].strip())


def find_image_url(html: str, page_url: str, image_id: int) -> str | None:
    """The address of image ``image_id`` in a DPChallenge-style page, absolute, or None.

    The first ``<img src>`` whose file name ends with the id (``<id>.jpg``, ``..._<id>.jpg``: how
    DPChallenge names its files; thumbnails of other images do not match) wins, JPEGs before other
    types; failing that, an ``og:image`` meta tag.
    """
    parser = _ImageSources()
    with contextlib.suppress(Exception):  # HTMLParser is lenient; never let a page crash a run
        parser.feed(html)
        parser.close()
    ends_with_id = re.compile(rf"(?:^|[^0-9]){int(image_id)}$")
    matches = []
    for src in parser.images:
        stem, _, suffix = urllib.parse.unquote(urllib.parse.urlsplit(src).path.rsplit("/", 1)[-1]).rpartition(
            "."
        )
        if ends_with_id.search(stem):
            matches.append((suffix.lower() not in ("jpg", "jpeg"), src))  # AVA photos are JPEGs: first
    if matches:
        return urllib.parse.urljoin(page_url, min(matches, key=lambda m: m[0])[1])
    if parser.og_images:
        return urllib.parse.urljoin(page_url, parser.og_images[0])
    return None


def _looks_complete(path: Path) -> bool:
    """Cheap check of a final file from an earlier run (it was fully decoded before its rename)."""
    try:
        if path.stat().st_size == 0:
            return False
        with Image.open(path) as image:
            return bool(image.format)
    except Exception:
        return False


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - _dt.datetime.now(when.tzinfo)).total_seconds())
    return None


def _http_only_opener() -> urllib.request.OpenerDirector:
    """An opener that speaks http and https only and never follows a redirect by itself.

    ``build_opener()`` would add the file, ftp and data handlers and a redirect handler that follows
    any scheme; redirects are followed in :meth:`_Downloader._request` instead, one hop at a time, so
    that each hop's scheme is checked and its host's concurrency limit applies.
    """
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.HTTPHandler(),
        urllib.request.HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),  # every status >= 300 raises HTTPError
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def check_url(url: str) -> None:
    """Raise :class:`_Failure` ("unsafe_url") unless ``url`` is a well-formed http(s) URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is no number or out of range
        (parts.hostname or "").encode("idna")  # a label over 63 characters, an empty label
    except (ValueError, UnicodeError) as exc:
        raise _Failure("unsafe_url", f"malformed URL ({exc})", retryable=False, url=url) from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise _Failure(
            "unsafe_url",
            f"refused a {scheme or 'scheme-less'} URL (only http and https)",
            retryable=False,
            url=url,
        )
    if "@" in parts.netloc:  # urllib would take "user:password@host" for the host name and retry DNS
        raise _Failure(
            "unsafe_url", "refused a URL with credentials (user:password@host)", retryable=False, url=url
        )


def _transport_failure(
    exc: BaseException, url: str, stalled: str, *, broken: str = "connection_error"
) -> _Failure:
    """A timeout (``stalled`` says what waited), a body cut short, or a broken connection: the
    failures of the transport itself, all worth a retry. ``broken`` names the last kind."""
    if isinstance(exc, TimeoutError):
        return _Failure("timeout", stalled, retryable=True, url=url)
    if isinstance(exc, http.client.IncompleteRead):
        detail = f"connection closed after {len(exc.partial)} bytes"
        return _Failure("incomplete_body", detail, retryable=True, url=url)
    return _Failure(broken, f"{type(exc).__name__}: {exc}", retryable=True, url=url)


class _Downloader:
    """State shared by the worker threads of one run."""

    def __init__(
        self,
        out_dir: Path,
        url_template: str,
        *,
        page_mode: bool,
        per_host: int,
        timeout: float,
        retries: int,
        backoff: float,
        max_backoff: float,
        user_agent: str,
        existing: dict[int, Path],
        max_bytes: int = MAX_IMAGE_BYTES,
    ):
        self.out_dir = out_dir
        self.url_template = url_template
        self.page_mode = page_mode
        self.per_host = per_host
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.user_agent = user_agent
        self.existing = existing
        self.max_bytes = max_bytes
        self.stop = threading.Event()
        self._opener = _http_only_opener()
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._hosts_lock = threading.Lock()
        self._parts: set[Path] = set()  # .part files being written now
        self._parts_lock = threading.Lock()

    def active_parts(self) -> list[Path]:
        with self._parts_lock:
            return list(self._parts)

    def url_for(self, image_id: int) -> str:
        return self.url_template.replace("{id}", str(image_id))

    @contextlib.contextmanager
    def _host_slot(self, url: str) -> Iterator[None]:
        host = urllib.parse.urlsplit(url).netloc.lower()
        with self._hosts_lock:
            slot = self._hosts.setdefault(host, threading.BoundedSemaphore(self.per_host))
        while not slot.acquire(timeout=0.1):
            if self.stop.is_set():
                raise _Cancelled
        try:
            yield
        finally:
            slot.release()

    @contextlib.contextmanager
    def _request(self, url: str, accept: str) -> Iterator[http.client.HTTPResponse]:
        """Open ``url``, following up to 5 redirects, each hop checked for its scheme and within its
        own host's concurrency limit; map every failure to a :class:`_Failure`."""
        for _ in range(_MAX_REDIRECTS + 1):
            check_url(url)
            with self._open_one(url, accept) as (response, location):
                if location is None:
                    yield response
                    return
            try:
                url = urllib.parse.urljoin(url, location)
            except ValueError as exc:  # "http://[::1" and the like, from a hostile server
                raise _Failure(
                    "unsafe_url", f"malformed redirect Location ({exc})", retryable=False, url=url
                ) from None
        raise _Failure("http_error", f"more than {_MAX_REDIRECTS} redirects", retryable=False, url=url)

    @contextlib.contextmanager
    def _open_one(
        self, url: str, accept: str
    ) -> Iterator[tuple[http.client.HTTPResponse | None, str | None]]:
        """One request: yields (response, None), or (None, Location) for a redirect."""
        request = urllib.request.Request(url, headers={"User-Agent": self.user_agent, "Accept": accept})
        try:
            with self._host_slot(url), self._opener.open(request, timeout=self.timeout) as response:
                yield response, None
        except (_Failure, _Cancelled):
            raise
        except urllib.error.HTTPError as exc:
            code = exc.code
            location = exc.headers.get("Location") if exc.headers else None
            retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
            exc.close()
            if code in _REDIRECT_STATUS and location:
                yield None, location.strip()
                return
            if code in (404, 410):
                raise _Failure("not_found", f"HTTP {code}", retryable=False, url=url) from None
            raise _Failure(
                "http_error",
                f"HTTP {code} {exc.reason}",
                retryable=code >= 500 or code in _RETRY_STATUS,
                url=url,
                retry_after=retry_after,
            ) from None
        except urllib.error.URLError as exc:  # before OSError, of which it is a subclass
            if isinstance(exc.reason, TimeoutError):
                raise _transport_failure(exc.reason, url, f"no answer within {self.timeout:g} s") from None
            raise _Failure("connection_error", str(exc.reason), retryable=True, url=url) from None
        except (http.client.HTTPException, OSError) as exc:
            raise _transport_failure(exc, url, f"no answer within {self.timeout:g} s") from None

    def _read_body(
        self, response: http.client.HTTPResponse, sink: Any, url: str, *, page: bool = False
    ) -> int:
        """Stream the body into ``sink``, at most the page or image size cap; check it against
        Content-Length. Returns the byte count."""
        limit = _MAX_PAGE_BYTES if page else self.max_bytes
        kind = "page" if page else "image"
        limit_failure = ("not_an_image" if page else "too_large", f"{kind} larger than {limit} bytes")
        declared = response.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _Failure(*limit_failure, retryable=False, url=url)
        deadline = time.monotonic() + 10 * self.timeout  # bounds a server that trickles bytes
        received = 0
        while True:
            if self.stop.is_set():
                raise _Cancelled
            if time.monotonic() > deadline:
                raise _Failure(
                    "timeout", f"body not complete within {10 * self.timeout:g} s", retryable=True, url=url
                )
            chunk = self._read_chunk(response, url)
            if not chunk:
                break
            received += len(chunk)
            if received > limit:
                raise _Failure(*limit_failure, retryable=False, url=url)
            try:
                sink.write(chunk)
            except OSError as exc:
                raise _Failure("write_error", str(exc), retryable=False, url=url) from None
        # http.client does not raise when a body ends early on read(n): compare with the header.
        if declared and declared.isdigit() and received < int(declared):
            raise _Failure("incomplete_body", f"got {received} of {declared} bytes", retryable=True, url=url)
        return received

    def _read_chunk(self, response: http.client.HTTPResponse, url: str) -> bytes:
        """One ``read1`` (what has arrived, so stop and deadline stay checked), failures mapped."""
        try:
            return response.read1(_CHUNK)
        except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            stalled = f"body stalled for {self.timeout:g} s"
            raise _transport_failure(exc, url, stalled, broken="incomplete_body") from None

    def _page_image_url(self, page_url: str, image_id: int) -> str:
        buffer = _Buffer()
        with self._request(page_url, "text/html,*/*;q=0.5") as response:
            charset = response.headers.get_content_charset() or "utf-8"
            self._read_body(response, buffer, page_url, page=True)
        image_url = find_image_url(buffer.text(charset), page_url, image_id)
        if image_url is None:
            raise _Failure(
                "no_image_in_page", f"no <img> for id {image_id} in the page", retryable=False, url=page_url
            )
        return image_url

    def _attempt(self, image_id: int, url: str) -> tuple[int, str]:
        image_url = self._page_image_url(url, image_id) if self.page_mode else url
        try:
            fd, part_name = make_temp(self.out_dir, f"{image_id}.", ".part")
        except OSError as exc:
            raise _Failure("write_error", str(exc), retryable=False, url=image_url) from None
        part = Path(part_name)
        with self._parts_lock:
            self._parts.add(part)
        try:
            with os.fdopen(fd, "wb") as handle, self._request(image_url, "image/*,*/*;q=0.5") as response:
                # Not get_content_type(): it says "text/plain" when the header is absent.
                content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                nbytes = self._read_body(response, handle, image_url)
            final = self._check_and_place(image_id, part, content_type, image_url)
            old = self.existing.get(image_id)
            if old is not None and old != final:
                with contextlib.suppress(OSError):
                    old.unlink()  # an unreadable leftover under another suffix
            return nbytes, image_url
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            with self._parts_lock:
                self._parts.discard(part)

    def _check_and_place(self, image_id: int, part: Path, content_type: str, url: str) -> Path:
        with open(part, "rb") as handle:
            head = handle.read(512).lstrip()
        if content_type.startswith("text/") or head[:1] == b"<":
            kind = content_type if content_type.startswith("text/") else "markup"
            raise _Failure("not_an_image", f"got {kind} instead of an image", retryable=False, url=url)
        try:
            open_image(part, name=f"image {image_id}")
        except ImageLoadError as exc:
            if "truncated" in exc.problem:  # a cut connection without Content-Length: try again
                raise _Failure("incomplete_body", exc.problem, retryable=True, url=url) from None
            reason = "not_an_image" if exc.problem.startswith("not an image") else "corrupt_image"
            raise _Failure(reason, exc.problem, retryable=False, url=url) from None
        with Image.open(part) as image:
            fmt = image.format or "JPEG"
        final = self.out_dir / f"{image_id}{_EXTENSIONS.get(fmt, '.' + fmt.lower())}"
        try:
            os.replace(part, final)  # atomic: the final name only ever holds a checked image
        except OSError as exc:
            raise _Failure("write_error", str(exc), retryable=False, url=url) from None
        return final

    def download_one(self, image_id: int) -> _Outcome:
        """Skip, fetch (with retries) or fail one id. Never raises."""
        existing = self.existing.get(image_id)
        if existing is not None and _looks_complete(existing):
            return _Outcome(image_id, "skipped")
        url = self.url_for(image_id)
        failure: _Failure | None = None
        attempts = 0
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                if failure is not None and failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, self.max_backoff))
                if self.stop.wait(delay):
                    return _Outcome(image_id, "cancelled")
            if self.stop.is_set():
                return _Outcome(image_id, "cancelled")
            attempts += 1
            try:
                nbytes, image_url = self._attempt(image_id, url)
                return _Outcome(image_id, "ok", url=image_url, nbytes=nbytes)
            except _Cancelled:
                return _Outcome(image_id, "cancelled")
            except _Failure as exc:
                failure = exc
                log.debug("id %d attempt %d: %s", image_id, attempts, exc)
                if not exc.retryable:
                    break
            except Exception as exc:  # a bug must not take the whole run down; report it per id
                log.exception("unexpected error downloading id %d", image_id)
                failure = _Failure(
                    "unexpected_error", f"{type(exc).__name__}: {exc}", retryable=False, url=url
                )
                break
        assert failure is not None
        detail = failure.detail + (f" ({attempts} attempts)" if attempts > 1 else "")
        return _Outcome(image_id, "failed", failure.reason, detail, failure.url or url)


class _Buffer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def text(self, charset: str) -> str:
        try:
            return b"".join(self.parts).decode(charset, errors="replace")
        except LookupError:  # unknown charset name in the header
            return b"".join(self.parts).decode("utf-8", errors="replace")


class _DaemonPool:
    """Worker threads that pull ids from a queue; daemon threads, so that Ctrl-C never waits for a
    request stuck on a silent server (``concurrent.futures`` joins its threads at exit)."""

    def __init__(self, fn: Any, items: list[int], workers: int, stop: threading.Event):
        self._fn, self._stop = fn, stop
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        for item in items:
            self._tasks.put(item)
        self._remaining = len(items)
        self._threads = [
            threading.Thread(target=self._loop, name=f"beholder-download-{n}", daemon=True)
            for n in range(min(workers, max(1, len(items))))
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._tasks.get_nowait()
            except queue.Empty:
                return
            self._done.put(self._fn(item))

    def results(self) -> Iterator[Any]:
        """Outcomes as they finish, until every item is done or every thread has stopped."""
        while self._remaining:
            try:
                outcome = self._done.get(timeout=0.2)  # a timeout keeps Ctrl-C responsive everywhere
            except queue.Empty:
                if not any(thread.is_alive() for thread in self._threads) and self._done.empty():
                    return
                continue
            self._remaining -= 1
            yield outcome

    def finish(self, grace: float) -> list[Any]:
        """After ``stop`` is set: wait up to ``grace`` seconds for the jobs in flight; their outcomes."""
        deadline = time.monotonic() + grace
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        leftovers = []
        while True:
            try:
                leftovers.append(self._done.get_nowait())
            except queue.Empty:
                return leftovers


def _check_resolvable(url: str) -> None:
    """Fail fast, with a clear message, when the host cannot even be resolved (offline, typo)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host or urllib.request.getproxies().get(parts.scheme):
        return  # through a proxy only the proxy needs to resolve
    try:
        socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot resolve host {host!r} ({exc.strerror}): offline, or a wrong --url-template?"
        ) from None
    except UnicodeError as exc:  # a label over 63 characters, or an empty one ("a..b")
        raise ConfigError(f"--url-template has an invalid host name {host!r} ({exc})") from None


def _check_options(url_template: str, *, timeout: float, **at_least: float) -> None:
    """ConfigError for a template that is not an http(s) URL with ``{id}``, or an option out of range."""
    if "{id}" not in url_template:
        raise ConfigError(f"the URL template must contain {{id}}: {url_template!r}")
    if urllib.parse.urlsplit(url_template).scheme not in ("http", "https"):
        raise ConfigError(f"the URL template must be an http(s) URL: {url_template!r}")
    # abort_after: a negative value would stop the run after its first outcome.
    minimum = {"workers": 1, "per_host": 1, "retries": 0, "backoff": 0, "max_backoff": 0, "abort_after": 0}
    for name, value in at_least.items():
        least = minimum.get(name, 1)
        if value < least:
            raise ConfigError(f"{name} must be at least {least}, got {value}")
    if timeout <= 0:
        raise ConfigError(f"timeout must be positive, got {timeout}")


def _run_pool(
    worker: _Downloader,
    selected: list[int],
    workers: int,
    timeout: float,
    abort_after: int,
    progress: bool | None,
) -> tuple[dict[int, _Outcome], bool, str | None]:
    """Download ``selected`` on ``workers`` threads: ``(outcomes by id, interrupted, abort message)``."""
    outcomes: dict[int, _Outcome] = {}
    counts: Counter[str] = Counter()
    interrupted = False
    aborted: str | None = None
    consecutive_connection_errors = 0
    bar = progress_bar(progress, total=len(selected), desc="download", unit="img")
    pool = _DaemonPool(worker.download_one, selected, workers, worker.stop)

    def record(outcome: _Outcome) -> None:
        if outcome.status != "cancelled":
            outcomes[outcome.image_id] = outcome
            counts[outcome.status] += 1
            bar.update(1)

    try:
        for outcome in pool.results():
            record(outcome)
            bar.set_postfix(
                ok=counts["ok"], skipped=counts["skipped"], failed=counts["failed"], refresh=False
            )
            if outcome.status == "failed" and outcome.reason == "connection_error":
                consecutive_connection_errors += 1
            elif outcome.status != "cancelled":
                consecutive_connection_errors = 0
            if abort_after and consecutive_connection_errors >= abort_after:
                aborted = (
                    f"stopped after {consecutive_connection_errors} ids in a row failed to connect "
                    f"(last: {outcome.detail}); is the host reachable?"
                )
                log.info(aborted)
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        worker.stop.set()  # jobs in flight return at their next chunk or backoff
        try:
            for outcome in pool.finish(grace=min(2.0, timeout)):
                record(outcome)
        except KeyboardInterrupt:  # a second Ctrl-C: do not wait at all
            interrupted = True
        bar.close()
        # Requests still blocked on a silent server are abandoned (daemon threads); drop their files.
        for part in worker.active_parts():
            with contextlib.suppress(OSError):
                part.unlink()
    return outcomes, interrupted, aborted


def _select_ids(
    ava_txt: PathLike | None, ids: Iterable[int] | None, limit: int | None
) -> tuple[list[int], int]:
    """Ids to fetch in AVA.txt order (restricted to ``ids``), and how many of ``ids`` lack a label row."""
    wanted = None if ids is None else {int(i) for i in ids}
    if ava_txt is None:
        if wanted is None:
            raise ConfigError("give an AVA.txt file, a list of ids, or both")
        selected, unlabelled = sorted(wanted), 0
    else:
        labels, rejected = parse_ava_txt(ava_txt)
        if len(rejected):
            log.info("%d malformed rows in %s are not downloaded", len(rejected), ava_txt)
        order = labels["image_id"].tolist()
        if wanted is None:
            selected, unlabelled = order, 0
        else:
            selected = [i for i in order if i in wanted]
            unlabelled = len(wanted - set(order))
            if unlabelled:
                log.warning("%d listed ids have no valid row in %s; skipped", unlabelled, ava_txt)
    if limit is not None:
        selected = selected[: max(0, limit)]
    return selected, unlabelled


def _summary(
    outcomes: dict[int, _Outcome],
    selected: list[int],
    unlabelled: int,
    out: Path,
    url_template: str,
    page_mode: bool,
    start: float,
) -> dict[str, Any]:
    """The counts and provenance of ``download.json`` (``interrupted`` and ``aborted`` are added by the caller)."""
    failures = [o for o in outcomes.values() if o.status == "failed"]
    status_counts = Counter(o.status for o in outcomes.values())
    seconds = time.perf_counter() - start
    return {
        "beholder_version": __version__,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "out_dir": str(out),
        "url_template": url_template,
        "page_mode": page_mode,
        "requested": len(selected),
        "ok": status_counts["ok"],
        "skipped": status_counts["skipped"],
        "failed": status_counts["failed"],
        "not_attempted": len(selected) - len(outcomes),
        # Share of the requested ids that failed (ids not attempted are not counted as failed).
        "failed_fraction": status_counts["failed"] / len(selected) if selected else 0.0,
        "failures_by_reason": dict(sorted(Counter(o.reason for o in failures).items())),
        "ids_without_label": unlabelled,
        "bytes_downloaded": sum(o.nbytes for o in outcomes.values()),
        "seconds": round(seconds, 3),
    }


def download(
    ava_txt: PathLike | None,
    out_dir: PathLike,
    *,
    ids: Iterable[int] | None = None,
    url_template: str | None = None,
    page_mode: bool = False,
    workers: int = 8,
    per_host: int = 4,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    max_backoff: float = 60.0,
    limit: int | None = None,
    abort_after: int = 20,
    user_agent: str | None = None,
    progress: bool | None = None,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> dict[str, Any]:
    """Download the images of AVA ids into ``out_dir`` as ``<id>.<ext>``; resumable.

    Args:
        ava_txt: AVA.txt-format file; its valid rows give the ids, in file order. May be None when
            ``ids`` is given.
        out_dir: image directory (created); ``download.json`` and ``failures.csv`` go there too.
        ids: only these ids (e.g. from ``read_image_list``).
        url_template: image URL with ``{id}``; in page mode the page URL (default: DPChallenge's).
        page_mode: the URL gives an HTML page whose ``<img>`` is the image (see :func:`find_image_url`).
        workers: download threads. per_host: concurrent requests per host (politeness).
        timeout: seconds for connecting and for each read (a body may take at most 10x this).
        retries: extra attempts after a transient failure (timeouts, 408/429/5xx, cut bodies), with
            ``backoff * 2**n`` seconds (jittered, at most ``max_backoff``) between them.
        limit: at most this many ids (after filtering), counting those already present.
        abort_after: stop the run after this many consecutive ids failed with connection errors
            (host down or offline); 0 never stops.
        progress: show a progress bar; None shows it only on a terminal.
        max_bytes: an image body over this many bytes fails its id ("too_large").

    Returns:
        the summary written to ``download.json``: counts of ``ok`` (fetched now), ``skipped``
        (already complete), ``failed`` and ``not_attempted``, ``failures_by_reason``, ``seconds``.

    Raises:
        ConfigError: bad options, an unresolvable host.
        KeyboardInterrupt: after writing ``download.json`` and ``failures.csv`` for what was done.
    """
    start = time.perf_counter()
    if url_template is None:
        if not page_mode:
            raise ConfigError(
                "give --url-template (an image URL containing {id}) or --page-mode "
                f"(DPChallenge pages, {DPCHALLENGE_PAGE_TEMPLATE})"
            )
        url_template = DPCHALLENGE_PAGE_TEMPLATE
    _check_options(
        url_template,
        workers=workers,
        per_host=per_host,
        retries=retries,
        backoff=backoff,
        max_backoff=max_backoff,
        abort_after=abort_after,
        max_bytes=max_bytes,
        timeout=timeout,
    )

    selected, unlabelled = _select_ids(ava_txt, ids, limit)
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out, "*.part")  # left by a killed run; never counted as complete
    if stale:
        log.info("removed %d partial files left by an earlier run", stale)
    if selected:
        _check_resolvable(url_template.replace("{id}", str(selected[0])))

    worker = _Downloader(
        out,
        url_template,
        page_mode=page_mode,
        per_host=per_host,
        timeout=timeout,
        retries=retries,
        backoff=backoff,
        max_backoff=max_backoff,
        user_agent=user_agent or f"beholder/{__version__} (AVA research download; polite, {per_host}/host)",
        existing=find_images(out),
        max_bytes=max_bytes,
    )
    outcomes, interrupted, aborted = _run_pool(worker, selected, workers, timeout, abort_after, progress)

    # Jobs that finished after the loop stopped listening still count: the directory is the truth.
    present = find_images(out)
    for image_id in selected:
        if image_id not in outcomes and image_id in present and image_id not in worker.existing:
            outcomes[image_id] = _Outcome(image_id, "ok")
    failures = [o for o in outcomes.values() if o.status == "failed"]
    summary = _summary(outcomes, selected, unlabelled, out, url_template, page_mode, start)
    summary.update(interrupted=interrupted, aborted=aborted)
    frame = pd.DataFrame(
        [(o.image_id, o.reason, o.detail, o.url) for o in sorted(failures, key=lambda o: o.image_id)],
        columns=FAILURES_COLUMNS,
    ).astype({"image_id": "int64"})
    atomic_write(out / FAILURES_FILE, lambda tmp: frame.to_csv(tmp, index=False))
    write_json(out / SUMMARY_FILE, summary)
    if interrupted:
        log.warning(
            "interrupted: %d ok, %d skipped, %d failed, %d not attempted; rerun to resume",
            summary["ok"],
            summary["skipped"],
            summary["failed"],
            summary["not_attempted"],
        )
        raise KeyboardInterrupt
    return summary


# -- fetching single URLs into memory (catalogue scoring) ------------------------------------------


class FetchError(Exception):
    """A URL could not be fetched: ``reason`` is one of :data:`FAILURE_REASONS`, ``detail`` says more."""

    def __init__(self, url: str, reason: str, detail: str):
        super().__init__(f"{url}: {reason}: {detail}")
        self.url, self.reason, self.detail = url, reason, detail


class Fetcher(_Downloader):
    """Fetch image URLs into memory with the downloader's rules, for callers that score bodies directly.

    The same safety and politeness as :func:`download`: http(s) only (every redirect hop checked),
    at most ``per_host`` requests at once per host, a timeout on connect and on each read, retries
    with jittered exponential backoff for transient failures, and a size cap (``max_bytes``).
    Nothing is written to disk. Thread-safe: one Fetcher serves any number of threads.
    """

    def __init__(
        self,
        *,
        per_host: int = 4,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        max_bytes: int = MAX_IMAGE_BYTES,
        user_agent: str | None = None,
    ):
        if per_host < 1 or retries < 0 or timeout <= 0 or max_bytes < 1:
            raise ConfigError(
                f"fetch options out of range: per_host={per_host} (>= 1), retries={retries} (>= 0), "
                f"timeout={timeout} (> 0), max_bytes={max_bytes} (>= 1)"
            )
        # No output directory and no template: only the request, body and retry rules are used.
        super().__init__(
            Path("."),
            "",
            page_mode=False,
            per_host=per_host,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            user_agent=user_agent or f"beholder/{__version__} (image scoring; {per_host}/host)",
            existing={},
            max_bytes=max_bytes,
        )

    def fetch(self, url: str) -> bytes:
        """The body of ``url``. Raises :class:`FetchError` after the last attempt fails."""
        failure: _Failure | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                if failure is not None and failure.retry_after is not None:
                    delay = max(delay, min(failure.retry_after, self.max_backoff))
                if self.stop.wait(delay):
                    break
            try:
                buffer = _Buffer()
                with self._request(url, "image/*,*/*;q=0.5") as response:
                    self._read_body(response, buffer, url)
                return b"".join(buffer.parts)
            except _Cancelled:
                break
            except _Failure as exc:
                failure = exc
                log.debug("%s attempt %d: %s", url, attempt + 1, exc)
                if not exc.retryable:
                    break
        if failure is None:
            raise FetchError(url, "cancelled", "the run is stopping")
        attempts = f" ({attempt + 1} attempts)" if attempt else ""
        raise FetchError(url, failure.reason, failure.detail + attempts)

    def close(self) -> None:
        """Stop retries and bodies in flight (they raise :class:`FetchError` "cancelled")."""
        self.stop.set()

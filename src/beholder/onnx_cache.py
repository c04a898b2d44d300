"""The ONNX export cache: ``$BEHOLDER_CACHE/onnx/<key>.onnx``, each entry verified before it is used.

The key is a sha256 over everything that decides the exported graph: for a model in memory,
:func:`beholder.export.model_fingerprint` (its weights, architecture, preprocessing...); for a
registered model or a checkpoint, :func:`source_key` over the weights file's sha256 and how the model
is built from it, which needs no torch, so that a cache hit scores without importing torch at all.

Next to each entry, ``<key>.json`` records the sha256 and size of the file as it was written at
export. :meth:`OnnxCache.lookup` hashes the file and compares: a missing record, a truncated file or
changed bytes make the entry broken, and it is removed with a warning and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from beholder import __version__
from beholder.files import atomic_write, write_json
from beholder.onnx_model import METADATA_VERSION

log = logging.getLogger(__name__)

SUFFIX = ".onnx"
RECORD_SUFFIX = ".json"
_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """``$BEHOLDER_ONNX_CACHE`` if set, else ``$BEHOLDER_CACHE/onnx``.

    A folder of its own can be shared (by a team, or by a test session), since entries are keyed by
    content and verified on every use.
    """
    from beholder.weights import cache_dir

    override = os.environ.get("BEHOLDER_ONNX_CACHE")
    return Path(override).expanduser() if override else cache_dir() / "onnx"


def source_key(**identity: Any) -> str:
    """A cache key from what builds the model (a weights sha256, architecture, preprocessing, export
    settings) and this Beholder's version and metadata layout; JSON-able keyword values only.

    The exporting torch version is left out on purpose: it is not known without importing torch,
    and the graph computes the same function whichever torch wrote it.
    """
    header = {**identity, "beholder": __version__, "metadata": METADATA_VERSION}
    return hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxCache:
    """Verified ONNX files by key, in ``folder`` (default :func:`default_cache_dir`)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def _record(self, key: str) -> Path:
        return self.folder / f"{key}{RECORD_SUFFIX}"

    def lookup(self, key: str) -> Path | None:
        """The entry's path if it is present and intact; None if absent or broken (then removed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        problem = self._problem(key, path)
        if problem is None:
            log.debug("using cached ONNX export %s", path)
            return path
        log.warning("ONNX cache entry %s is broken (%s): rebuilding it", path, problem)
        for stale in (path, self._record(key)):
            stale.unlink(missing_ok=True)
        return None

    def _problem(self, key: str, path: Path) -> str | None:
        try:
            record = json.loads(self._record(key).read_text(encoding="utf-8"))
            expected, size = str(record["sha256"]), int(record["size"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"no readable record of its content ({type(exc).__name__})"
        actual_size = path.stat().st_size
        if actual_size != size:
            return f"{actual_size} bytes, {size} written"
        if sha256_of(path) != expected:
            return "its content changed since it was written (sha256 mismatch)"
        return None

    def store(
        self, key: str, build: Callable[[Path], Any], check: Callable[[Path], None] | None = None
    ) -> Path:
        """Build the entry with ``build(temporary_path)``, ``check`` it, then record its hash and install it.

        If the cache folder is not writable (a read-only container, say), the file goes to a fresh
        temporary directory instead and is used once.
        """
        path = self.path(key)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return self._install(key, path, build, check)
        except PermissionError as exc:
            fallback = Path(tempfile.mkdtemp(prefix="beholder-onnx-")) / path.name
            log.warning("cannot write the ONNX cache %s (%s); exporting to %s", self.folder, exc, fallback)
            build(fallback)
            if check is not None:
                check(fallback)
            return fallback

    def _install(
        self, key: str, path: Path, build: Callable[[Path], Any], check: Callable[[Path], None] | None
    ) -> Path:
        def write(temporary: Path) -> None:
            build(temporary)
            if check is not None:
                check(temporary)
            # The record goes first, so that a reader who sees the new file also sees its record
            # (a crash in between leaves an old file with a new record: lookup rebuilds it).
            record = {
                "sha256": sha256_of(temporary),
                "size": temporary.stat().st_size,
                "beholder": __version__,
            }
            write_json(self._record(key), record)

        atomic_write(path, write)
        log.info("cached ONNX export %s", path)
        return path

    def get(
        self, key: str, build: Callable[[Path], Any], check: Callable[[Path], None] | None = None
    ) -> Path:
        """The verified entry for ``key``, built with ``build`` when absent or broken."""
        return self.lookup(key) or self.store(key, build, check)

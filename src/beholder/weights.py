"""Find, download and verify weight files.

A registered model may ship its weights inside the package (``ModelSpec.packaged``, a
safetensors file under ``beholder/resources``): :func:`load_packaged_state_dict` verifies that file
against its pinned sha256 and reads it, with no network and no cache. ``create_model`` uses it
first for such a model, unless the user passes ``--weights FILE``. Other packaged files (the
default model's ONNX export) are checked with :func:`verify_packaged_file`, once per process.

Resolution order for a registered file that is not packaged (see :func:`resolve_weights`):

1. an explicit path given by the user (``--weights FILE``);
2. directories listed in ``BEHOLDER_WEIGHTS_PATH`` (``os.pathsep``-separated), matched by file
   name and verified by sha256;
3. the cache, ``$BEHOLDER_CACHE/weights`` (default ``~/.cache/beholder/weights``), verified;
4. a download into the cache: progress bar, resume of a partial ``.part`` file with an HTTP Range
   request, sha256 check, then an atomic rename, so a killed download never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from beholder.errors import ConfigError, WeightsUnavailableError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_CHUNK = 1 << 20

#: ``format`` in a packaged safetensors file's metadata, and the layout version this code reads.
PACKAGED_FORMAT = "beholder.nima.state_dict"
PACKAGED_FORMAT_VERSION = 1
_PACKAGED_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class WeightsSpec:
    """A weight file's identity and provenance."""

    filename: str
    url: str | None
    sha256: str | None
    # "keras_h5" (Keras legacy weights), "torch" (a Beholder checkpoint), "safetensors" (a
    # packaged state_dict, see load_packaged_state_dict) or "onnx" (a packaged ONNX export)
    format: str
    license: str
    source: str  # where the file was published, for people

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def cache_dir() -> Path:
    """Beholder's cache root: ``$BEHOLDER_CACHE`` or ``~/.cache/beholder``."""
    return Path(os.environ.get("BEHOLDER_CACHE") or Path.home() / ".cache" / "beholder").expanduser()


def weights_search_path() -> list:
    raw = os.environ.get("BEHOLDER_WEIGHTS_PATH", "")
    return [Path(part).expanduser() for part in raw.split(os.pathsep) if part.strip()]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified(path: Path, spec: WeightsSpec) -> bool:
    if not path.is_file():
        return False
    if spec.sha256 is None:
        return True
    actual = sha256_file(path)
    if actual != spec.sha256:
        log.warning(
            "%s: sha256 %s does not match the expected %s; ignoring this copy", path, actual, spec.sha256
        )
        return False
    return True


def _candidates(spec: WeightsSpec) -> Iterator[Path]:
    for directory in weights_search_path():
        yield directory / spec.filename
    yield cache_dir() / "weights" / spec.filename


def find_local_weights(spec: WeightsSpec) -> Path | None:
    """The first verified local copy of ``spec`` (search path, then cache), or None."""
    for path in _candidates(spec):
        if _verified(path, spec):
            return path
    return None


def _how_to_get(spec: WeightsSpec) -> str:
    where = f"download {spec.url}" if spec.url else f"obtain {spec.filename} ({spec.source})"
    return (
        f"To use it offline, {where} on a machine with internet access and either place it in "
        f"{cache_dir() / 'weights'}, or put it in a directory listed in BEHOLDER_WEIGHTS_PATH, "
        f"or pass --weights FILE."
    )


def packaged_path(filename: str) -> Path:
    """Where a packaged weights file lives: ``beholder/resources/<filename>`` inside the package."""
    return Path(__file__).resolve().parent / "resources" / filename


#: Packaged files already hashed in this process: (path, size, mtime, expected sha256) -> matched.
_PACKAGED_CHECKS: dict[tuple, bool] = {}


def verify_packaged_file(spec: WeightsSpec, path: str | Path) -> bool:
    """Whether the packaged file at ``path`` matches ``spec``'s pinned sha256; hashed once per process.

    A file that does not match is logged as a warning (once) naming the file: the installation is
    damaged, and the caller falls back to a slower way rather than use it. Torch-free.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        log.warning("packaged file %s cannot be read (%s)", path, exc)
        return False
    # Keyed by size and mtime too, so that a file replaced under a running process is hashed again.
    key = (str(path), stat.st_size, stat.st_mtime_ns, spec.sha256)
    matched = _PACKAGED_CHECKS.get(key)
    if matched is None:
        actual = sha256_file(path)
        matched = spec.sha256 is None or actual == spec.sha256
        if not matched:
            log.warning(
                "packaged file %s: sha256 %s does not match the expected %s: the installation is "
                "damaged (reinstall beholder); not using it",
                path,
                actual,
                spec.sha256,
            )
        _PACKAGED_CHECKS[key] = matched
    return matched


def load_packaged_state_dict(
    spec: WeightsSpec, path: str | Path | None = None
) -> dict[str, torch.Tensor]:
    """Verify and read a packaged safetensors ``state_dict``; floating tensors come back as float32.

    Args:
        spec: the packaged file's identity (``ModelSpec.packaged``); its sha256 is checked.
        path: read this file instead of the one inside the package (tests, repairs).

    Raises:
        WeightsUnavailableError: the file is missing, does not match its sha256, or is not a
            packaged Beholder state_dict. The message names the file.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    path = Path(path) if path is not None else packaged_path(spec.filename)
    damaged = "the installation is damaged; reinstall beholder, or pass --weights FILE"
    if not path.is_file():
        raise WeightsUnavailableError(f"packaged weights {path} are missing: {damaged}")
    actual = sha256_file(path)
    if spec.sha256 is not None and actual != spec.sha256:
        raise WeightsUnavailableError(
            f"packaged weights {path}: sha256 {actual} does not match the expected {spec.sha256}: {damaged}"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {}).get("beholder", "{}"))
            state = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise WeightsUnavailableError(
            f"packaged weights {path}: not a readable safetensors file ({exc})"
        ) from exc
    if meta.get("format") != PACKAGED_FORMAT or meta.get("format_version") != str(PACKAGED_FORMAT_VERSION):
        raise WeightsUnavailableError(
            f"packaged weights {path}: metadata format {meta.get('format')!r} version "
            f"{meta.get('format_version')!r}, expected {PACKAGED_FORMAT!r} version {PACKAGED_FORMAT_VERSION}"
        )
    if meta.get("dtype") not in _PACKAGED_DTYPES:
        raise WeightsUnavailableError(f"packaged weights {path}: unsupported dtype {meta.get('dtype')!r}")
    log.debug("loaded packaged weights %s (%s, from %s)", path, meta["dtype"], meta.get("source_file"))
    # Stored in half precision to keep the wheel small; computed in float32 like every other model.
    return {
        name: tensor.to(torch.float32) if tensor.is_floating_point() else tensor
        for name, tensor in state.items()
    }


def resolve_weights(
    spec: WeightsSpec,
    explicit: str | Path | None = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> Path:
    """Return a local, verified path to ``spec``'s file, downloading it if needed.

    Raises:
        ConfigError: an explicit file that does not exist.
        WeightsUnavailableError: not found locally and not downloadable (offline, no URL, bad sha256).
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"weights file not found: {path}")
        return path
    local = find_local_weights(spec)
    if local is not None:
        return local
    if not spec.url or not download:
        raise WeightsUnavailableError(
            f"weights {spec.filename} are not available locally. {_how_to_get(spec)}"
        )
    target = cache_dir() / "weights" / spec.filename
    try:
        return download_file(spec.url, target, sha256=spec.sha256, progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise WeightsUnavailableError(
            f"could not download weights {spec.filename} from {spec.url} ({exc}). {_how_to_get(spec)}"
        ) from exc


def download_file(
    url: str,
    target: str | Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``target`` atomically, resuming a previous partial download.

    The body goes to ``target + '.part'``; an interrupted run leaves that file and the next call
    continues it with a Range request (or starts over if the server ignores ranges). Only a body
    whose sha256 matches is renamed to ``target``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "beholder"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = offset > 0 and response.status == 206
        if not resumed:
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            open(partial, "ab" if resumed else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=f"downloading {target.name}",
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                bar.update(len(block))
    if total is not None and partial.stat().st_size != total:
        raise OSError(f"download of {url} ended early: {partial.stat().st_size} of {total} bytes")
    if sha256 is not None:
        actual = sha256_file(partial)
        if actual != sha256:
            partial.unlink()
            raise ValueError(f"sha256 mismatch for {url}: got {actual}, expected {sha256}")
    os.replace(partial, target)
    log.info("downloaded %s -> %s", url, target)
    return target

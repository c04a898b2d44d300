"""File utilities under everything: atomic writes with the umask's mode, strict JSON, progress bars.

Every output Beholder writes goes through :func:`atomic_write` (a temporary file in the same
directory, then ``os.replace``), so a reader or a rerun after ``kill -9`` never sees half a file,
and every file gets the mode of any new file (the umask), unlike ``tempfile.mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

PathLike = Union[str, "os.PathLike[str]"]

#: Suffix of the temporary files :func:`atomic_write` creates; a rerun may delete stale ones.
TEMP_SUFFIX = ".tmp"


def make_temp(directory: PathLike, prefix: str, suffix: str = TEMP_SUFFIX) -> tuple[int, str]:
    """Create a new, uniquely named file opened for writing: ``(fd, path)``, mode from the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        name = os.path.join(os.fspath(directory), f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(name, flags, 0o666), name
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file onto ``path`` atomically.

    The parent directory is created. On any failure the temporary file is removed and ``path``
    keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp(path.parent, f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def strict_json_value(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, so that it is valid (strict) JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(item) for item in value]
    if hasattr(value, "item") and hasattr(value, "dtype"):  # a numpy scalar
        return strict_json_value(value.item())
    return value


def dumps_json(data: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text: NaN and infinities become null (``json.dumps`` would write bare NaN)."""
    return json.dumps(strict_json_value(data), indent=indent, default=str, allow_nan=False)


def write_json(path: PathLike, data: Any) -> Path:
    """Write ``data`` as indented, strict JSON, atomically."""
    return atomic_write_text(path, dumps_json(data) + "\n")


def remove_stale_temporaries(directory: PathLike, pattern: str = f".*{TEMP_SUFFIX}") -> int:
    """Delete temporary files a killed run left in ``directory``; returns how many."""
    removed = 0
    for stale in Path(directory).glob(pattern):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed


def progress_bar(progress: bool | None = None, **kwargs: Any):
    """A tqdm bar with rate and ETA; ``progress=None`` shows it only on a terminal."""
    from tqdm import tqdm

    return tqdm(disable=None if progress is None else not progress, dynamic_ncols=True, **kwargs)

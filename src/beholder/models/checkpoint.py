"""Self-describing checkpoints: architecture, preprocessing and provenance travel with the weights.

A checkpoint is a ``torch.save`` dict::

    {"format": "beholder-checkpoint", "version": 1,
     "architecture": {...}, "preprocessing": {...}, "provenance": {...},
     "model": state_dict,
     # training state, when written by `beholder train`:
     "optimizer", "scheduler", "epoch", "phase", "config", "rng", ...}

so that ``beholder score --checkpoint FILE`` needs nothing else.

A checkpoint is data, never code: it holds only tensors, plain containers, numbers and strings
(checked when it is written), and it is read with ``torch.load(weights_only=True)``, which refuses
anything else, so a crafted file cannot run code in any load path.

A checkpoint is written atomically through :func:`beholder.files.atomic_write` (mode from the
umask, 0644 typically); a failed write (a full disk, say) leaves the previous file intact and
raises :class:`CheckpointWriteError`.

Checkpoints written before that (with NumPy RNG states) are refused. ``trust=True``
(``--trust-checkpoint`` on the command line) also admits the NumPy arrays, dtypes and scalars they
hold, still with ``weights_only=True``: no checkpoint is ever unpickled in full, so none runs code.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from beholder.errors import ConfigError
from beholder.files import PathLike, atomic_write
from beholder.models.nima import NIMA, Architecture, build_nima
from beholder.preprocessing import Preprocessing

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "beholder-checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointWriteError(ConfigError):
    """A checkpoint could not be written (disk full, read-only, ...); the previous one is intact."""

    def __init__(self, path: PathLike, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: cannot write the checkpoint: {reason}")


def unwrap(model: torch.nn.Module) -> NIMA:
    """The plain model inside DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while True:
        inner = getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _plain(value: Any, where: str) -> Any:
    """``value`` as what ``weights_only=True`` loads: tensors, plain containers, numbers, strings.

    NumPy scalars and arrays become Python numbers and tensors, paths become strings; anything
    else is a bug in the caller and raises, so that no checkpoint is written that cannot be read.
    """
    import numpy as np  # numpy comes with torch; imported here to keep this module's import light

    if isinstance(value, np.generic):  # before the scalars: np.float64 is also a float
        return value.item()
    if isinstance(value, (_PLAIN_SCALARS, torch.Tensor)):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {key: _plain(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item, f"{where}[{n}]") for n, item in enumerate(value))
    raise TypeError(f"checkpoint entry {where} is a {type(value).__name__}, not plain data")


def save_checkpoint(path: PathLike, model: torch.nn.Module, **extra: Any) -> Path:
    """Write a checkpoint atomically (temporary file in the same directory, then rename).

    Raises:
        CheckpointWriteError: the file could not be written (``reason`` says why, e.g. "no space
            left on device"); whatever was at ``path`` before is unchanged.
    """
    nima = unwrap(model)
    payload: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "architecture": nima.architecture.to_dict(),
        "preprocessing": nima.preprocessing.to_dict(),
        "provenance": extra.pop("provenance", {}),
        "model": nima.state_dict(),
        **{key: _plain(value, key) for key, value in extra.items()},
    }

    def write(temporary: Path) -> None:
        # Through a Python file, so that a failed write(2) (a full disk) comes back as an OSError
        # with its errno; given a path, torch's own writer reports it as a RuntimeError without it.
        with open(temporary, "wb") as handle:
            torch.save(payload, handle)

    try:
        return atomic_write(path, write)
    except OSError as exc:
        raise CheckpointWriteError(path, _write_failure(exc)) from exc


def _write_failure(exc: OSError) -> str:
    """``OSError(ENOSPC)`` -> "no space left on device" (the OS's words, whatever the message)."""
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def read_checkpoint(path: PathLike, *, trust: bool = False) -> dict[str, Any]:
    """Load a checkpoint dict (on CPU), checking that it is one of ours.

    ``trust=True`` also admits the numpy arrays and scalars of old-format checkpoints; nothing that
    could run code is ever unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    payload = _load_trusted(path) if trust else _load_data_only(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a Beholder checkpoint (no 'format: {CHECKPOINT_FORMAT}' entry)")
    return payload


def _old_format_globals() -> list[Any]:
    """The numpy pieces older Beholder checkpoints pickled (their numpy RNG state and scalars).

    Allow-listing exactly these keeps ``weights_only=True`` for old files too: numpy arrays,
    dtypes and scalars are rebuilt as data, and any other global (how a pickle runs code) is
    still refused. Full unpickling is never used, whatever the user says.
    """
    import numpy as np

    multiarray = getattr(np, "_core", getattr(np, "core", None)).multiarray
    dtype_classes = {type(np.dtype(kind)) for kind in ("u1", "u4", "u8", "i4", "i8", "f4", "f8", "?")}
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtype_classes]


def _load_trusted(path: Path) -> Any:
    log.warning(
        "%s: loading an old-format checkpoint (--trust-checkpoint): numpy arrays and scalars are "
        "allowed besides tensors and plain data; anything else is still refused",
        path,
    )
    with torch.serialization.safe_globals(_old_format_globals()):
        return _load_data_only(path)


def _load_data_only(path: Path) -> Any:
    try:
        # weights_only=True: unpickling only tensors and plain data, so a crafted file runs no code.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch has one exception type for both cases; only a GLOBAL (a class or function
        # reference, which is how pickles run code) that is not allow-listed means "hostile".
        if "global" not in str(exc).lower():
            raise ConfigError(f"{path}: not a readable checkpoint (damaged or not a torch file)") from exc
        raise ConfigError(
            f"{path}: refused: it holds Python objects other than tensors and plain data, which could "
            "run code when loaded (Beholder checkpoints never do). If you wrote it yourself with an "
            "older Beholder, --trust-checkpoint also admits the numpy data such files hold"
        ) from exc
    except Exception as exc:  # torch raises many types for a damaged file
        raise ConfigError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    return payload


def load_checkpoint(path: PathLike, *, trust: bool = False) -> tuple[NIMA, dict[str, Any]]:
    """Rebuild the model stored in a checkpoint; returns (model in eval mode, checkpoint dict).

    ``trust``: also admit an old-format checkpoint's NumPy data (see :func:`read_checkpoint`).
    """
    payload = read_checkpoint(path, trust=trust)
    return model_from_payload(payload, path).eval(), payload


def model_from_payload(payload: dict[str, Any], path: PathLike | None = None) -> NIMA:
    """The model a checkpoint dict describes, with its weights (in training mode, as built).

    Raises ConfigError naming ``path`` when the description is damaged or the weights do not fit it.
    """
    where = f"checkpoint {path}" if path is not None else "the checkpoint"
    try:
        model = build_nima(
            Architecture.from_dict(payload["architecture"]),
            preprocessing=Preprocessing.from_dict(payload["preprocessing"]),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{where} has a damaged model description: {_reason(exc)}") from exc
    try:
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, RuntimeError, AttributeError) as exc:
        raise ConfigError(f"{where} does not match the architecture it declares: {_reason(exc)}") from exc
    return model


def _reason(exc: Exception) -> str:
    """One line about ``exc``: torch's state-dict errors span many lines, one per tensor."""
    if isinstance(exc, KeyError):
        return f"missing entry {exc}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = "; ".join(lines[:4]) + (f"; ... ({len(lines) - 4} more)" if len(lines) > 4 else "")
    return text[:600]

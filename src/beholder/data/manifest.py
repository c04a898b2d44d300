"""The manifest of a prepared directory: its column contract and its one reader.

``beholder ava prepare`` (and ``beholder prepare --labels``) write ``manifest.parquet``; training,
evaluation and EDA read it only through :func:`load_manifest`, which resolves the image paths and
fails loudly, naming the file, when the manifest is missing, unreadable or incomplete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from beholder.errors import ConfigError
from beholder.files import PathLike
from beholder.ratings import VOTE_COLUMNS

MANIFEST_FILE = "manifest.parquet"
#: The summary ``prepare`` writes beside the manifest (counts, options, provenance).
PREPARE_SUMMARY_FILE = "prepare.json"
#: The splits a manifest row may belong to.
SPLITS = ("train", "val", "test")
#: Columns of ``manifest.parquet``, in order. ``mode`` and ``format`` are extras beyond the issue's list.
MANIFEST_COLUMNS = [
    "image_id",
    "split",
    *VOTE_COLUMNS,
    "n_votes",
    "mean",
    "std",
    "tag1",
    "tag2",
    "challenge_id",
    "source_path",
    "cache_path",
    "file_bytes",
    "width",
    "height",
    "aspect_ratio",
    "mode",
    "format",
]


def load_manifest(
    prepared_dir: PathLike,
    *,
    splits: str | Sequence[str] | None = None,
    check_files: bool = False,
) -> pd.DataFrame:
    """Read ``manifest.parquet`` with ``source_path``/``cache_path`` resolved to absolute paths.

    Args:
        prepared_dir: the directory ``prepare`` wrote (or the manifest file itself).
        splits: keep only these splits (``"train"`` or ``["train", "val"]``).
        check_files: also require every ``cache_path`` to exist.

    Raises:
        ConfigError: the manifest is missing, unreadable, lacks columns, or (``check_files``) a
            cache file is gone. The message names the file.
    """
    path = Path(prepared_dir)
    if path.is_dir() or path.suffix != ".parquet":
        path = path / MANIFEST_FILE
    if not path.is_file():
        raise ConfigError(f"manifest not found: {path} (run `beholder ava prepare` first)")
    try:
        manifest = pd.read_parquet(path)
    except Exception as exc:
        raise ConfigError(f"cannot read manifest {path}: {exc}") from exc
    absent = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if absent:
        raise ConfigError(f"manifest {path} lacks columns {absent}; rerun `beholder ava prepare`")
    base = path.absolute().parent
    for column in ("source_path", "cache_path"):
        # os.path.join keeps absolute entries as they are.
        manifest[column] = [os.path.normpath(os.path.join(base, p)) for p in manifest[column]]
    if splits is not None:
        wanted = [splits] if isinstance(splits, str) else list(splits)
        unknown = sorted(set(wanted) - set(SPLITS))
        if unknown:
            raise ConfigError(f"unknown split(s) {unknown}; choose from {list(SPLITS)}")
        manifest = manifest[manifest["split"].isin(wanted)].reset_index(drop=True)
    if check_files:
        gone = [p for p in manifest["cache_path"] if not os.path.isfile(p)]
        if gone:
            raise ConfigError(
                f"{len(gone)} cache file(s) listed in {path} are missing, e.g. {gone[0]}; "
                "rerun `beholder ava prepare`"
            )
    return manifest


def prepared_image_settings(prepared_dir: PathLike) -> dict[str, Any] | None:
    """How ``prepare`` resized the cache images: ``{"image_size": (width, height), "resample": str,
    "jpeg_quality": int}``, read from ``prepare.json``; None when the directory has no
    ``prepare.json`` (a manifest written by other means, whose cache size is unknown).

    Training checks ``data.image_size`` against this, so that a model is never trained on a cache
    resized to another size than the one its preprocessing expects.

    Raises:
        ConfigError: ``prepare.json`` exists but is unreadable or lacks the settings.
    """
    path = Path(prepared_dir)
    if path.suffix == ".parquet":
        path = path.parent
    path = path / PREPARE_SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        options = json.loads(path.read_text(encoding="utf-8"))["options"]
        width, height = (int(side) for side in options["image_size"])
        return {
            "image_size": (width, height),
            "resample": str(options["resample"]),
            "jpeg_quality": int(options["jpeg_quality"]),
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the cache settings from {path}: {exc!r}") from exc

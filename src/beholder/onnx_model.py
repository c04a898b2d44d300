"""A Beholder ONNX file: its metadata layout, and the checks that a file is what it says it is.

:mod:`beholder.export` writes the metadata (keys ``beholder.*`` in ``metadata_props``); this module
reads it back from the raw key/value map (ONNX Runtime's ``custom_metadata_map``, or onnx's
``metadata_props``), so that scoring with ONNX Runtime never imports ``onnx`` or torch.

:func:`check_model_outputs` runs a loaded file on probe inputs and refuses one whose graph does not
do what its metadata declares: an input of another size, not ``(N, 10)`` outputs, "probabilities"
that are not, a head that gives every image the same distribution (zeroed weights). It guards
users' ``--onnx`` files and every freshly built cache entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from beholder.errors import ConfigError
from beholder.ratings import NUM_BINS

#: ONNX opset of exported files: 18 is read by onnxruntime >= 1.14 and OpenVINO >= 2023.
DEFAULT_OPSET = 18
INPUT_NAME = "images"
OUTPUT_KINDS = ("probabilities", "logits")
METADATA_PREFIX = "beholder."
#: Version of the metadata layout; bump when keys change meaning.
METADATA_VERSION = 1
REQUIRED_KEYS = ("architecture", "preprocessing", "output")
JSON_KEYS = ("architecture", "preprocessing", "provenance", "input", "scores")
#: Probabilities must sum to 1 within this (float32 softmax over 10 classes is far tighter).
_SUM_TOLERANCE = 1e-3
#: Two different probe images must move the distribution by more than this.
_MIN_SPREAD = 1e-6


def parse_metadata(raw: dict[str, str], where: str) -> dict[str, Any]:
    """The Beholder metadata of a file from its raw ``metadata_props`` map.

    Returns ``model``, ``version``, ``format_version``, ``output`` and the decoded JSON of
    ``architecture``, ``preprocessing``, ``provenance``, ``input`` and ``scores``.

    Raises:
        ConfigError: naming ``where``, when keys are missing, not JSON, or of an unknown version.
    """
    own = {
        key[len(METADATA_PREFIX) :]: value for key, value in raw.items() if key.startswith(METADATA_PREFIX)
    }
    missing = [key for key in REQUIRED_KEYS if key not in own]
    if missing:
        raise ConfigError(f"{where}: not a Beholder ONNX export (no metadata {', '.join(missing)})")
    metadata: dict[str, Any] = dict(own)
    for key in JSON_KEYS:
        if key in own:
            try:
                metadata[key] = json.loads(own[key])
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: metadata {METADATA_PREFIX}{key} is not valid JSON") from exc
    version = own.get("format_version", str(METADATA_VERSION))
    if not version.isdigit() or int(version) > METADATA_VERSION:
        raise ConfigError(
            f"{where}: metadata format version {version!r} is newer than this Beholder reads "
            f"({METADATA_VERSION}); upgrade beholder"
        )
    if metadata["output"] not in OUTPUT_KINDS:
        raise ConfigError(
            f"{where}: metadata output {metadata['output']!r} is not one of {', '.join(OUTPUT_KINDS)}"
        )
    return metadata


def declared_input_size(metadata: dict[str, Any], where: str) -> tuple[int, int]:
    """(height, width) the metadata's preprocessing feeds the graph."""
    from beholder.preprocessing import Preprocessing

    try:
        return Preprocessing.from_dict(metadata["preprocessing"]).input_size
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: metadata preprocessing is not usable ({exc})") from exc


def _probe_batch(height: int, width: int) -> np.ndarray:
    """Two model inputs that any working aesthetics model tells apart: flat grey, and seeded noise."""
    noise = np.random.default_rng(0).uniform(-1.0, 1.0, size=(1, 3, height, width))
    return np.concatenate([np.zeros((1, 3, height, width)), noise]).astype(np.float32)


def check_model_outputs(
    run: Callable[[np.ndarray], np.ndarray], metadata: dict[str, Any], where: str
) -> None:
    """Run the graph on probe images and check it against its metadata.

    Args:
        run: the session's raw call, (B, 3, H, W) float32 -> the graph's output, before any softmax.
        metadata: from :func:`parse_metadata`.
        where: the file, for messages.

    Raises:
        ConfigError: what is wrong, naming the file.
    """
    classes = (
        metadata["architecture"].get("num_classes") if isinstance(metadata["architecture"], dict) else None
    )
    scores = metadata.get("scores", list(range(1, NUM_BINS + 1)))
    if classes != NUM_BINS or len(scores) != NUM_BINS:
        raise ConfigError(
            f"{where}: the metadata declares {classes} classes and {len(scores)} scores; "
            f"Beholder models rate on {NUM_BINS} bins (scores 1..{NUM_BINS})"
        )
    height, width = declared_input_size(metadata, where)
    try:
        outputs = np.asarray(run(_probe_batch(height, width)), dtype=np.float64)
    except Exception as exc:  # engines raise their own types for a shape the graph does not take
        raise ConfigError(
            f"{where}: the graph does not run on the (N, 3, {height}, {width}) input its metadata "
            f"declares ({type(exc).__name__}: {exc})"
        ) from exc
    if outputs.shape != (2, NUM_BINS):
        raise ConfigError(
            f"{where}: the graph returns shape {outputs.shape[1:]} per image, not ({NUM_BINS},)"
        )
    if not np.isfinite(outputs).all():
        raise ConfigError(f"{where}: the graph returns non-finite values")
    if metadata["output"] == "probabilities":
        sums = outputs.sum(axis=1)
        if (outputs < 0).any() or np.abs(sums - 1).max() > _SUM_TOLERANCE:
            raise ConfigError(
                f"{where}: the metadata says 'probabilities' but the outputs are not a distribution "
                f"(row sums {', '.join(f'{s:.4g}' for s in sums)})"
            )
    if np.abs(outputs[0] - outputs[1]).max() <= _MIN_SPREAD:
        raise ConfigError(
            f"{where}: the graph gives two very different images the same output "
            "(a zeroed or broken head); it cannot rate photos"
        )

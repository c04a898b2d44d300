"""Export a NIMA model to ONNX: a self-describing file with a dynamic batch size.

The graph takes ``images``, a float32 ``(batch, 3, H, W)`` tensor preprocessed as the model
declares, and by default returns ``probabilities`` ``(batch, 10)`` over the scores 1..10 (softmax
inside the graph). Probabilities are the default because the file is a deployment artefact: a
consumer in any language gets the rating distribution without knowing that a softmax is due, and
it is what Beholder's runtimes return. ``output="logits"`` keeps the raw ``forward`` output, for
calibration or distillation; the metadata says which one a file holds.

Everything needed to use the file travels in its ``metadata_props`` (keys ``beholder.*``): the
architecture, the preprocessing (resize, interpolation, crop, normalisation), the weights'
provenance, the Beholder version and the output kind. :func:`load_onnx_metadata` reads them back.
BatchNorm is folded into the convolutions (on a copy) before export, so the graph is the same
one the fast torch runtime runs.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from beholder import __version__
from beholder.errors import ConfigError
from beholder.models.fusion import fuse_conv_bn
from beholder.models.nima import NIMA
from beholder.onnx_model import (
    DEFAULT_OPSET,
    INPUT_NAME,
    METADATA_PREFIX,
    METADATA_VERSION,
    OUTPUT_KINDS,
    parse_metadata,
)

log = logging.getLogger(__name__)

#: The oldest opset asked for that can be honoured: torch's exporter writes opset 18 and converts
#: down only best-effort (keeping 18 when it cannot), so lower versions are refused up front.
MIN_OPSET = 18
# An example batch of 2 (not 1): the exporter would otherwise specialise a size-1 dimension.
_EXAMPLE_BATCH = 2


class _WithSoftmax(nn.Module):
    """logits (B, 10) -> probabilities (B, 10), so that the softmax is part of the exported graph."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(images), dim=-1)


def _check_output(output: str) -> None:
    if output not in OUTPUT_KINDS:
        raise ConfigError(f"ONNX output must be one of {', '.join(OUTPUT_KINDS)}, got {output!r}")


def check_opset(opset: int) -> int:
    """``opset`` if this installation can write it, else a ConfigError saying which ones it can."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"ONNX opset {opset} cannot be written here: choose {MIN_OPSET}..{newest}")
    return opset


def _written_opset(proto: Any) -> int | None:
    return next((op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")), None)


def model_fingerprint(model: NIMA, *, opset: int = DEFAULT_OPSET, output: str = "probabilities") -> str:
    """A sha256 over everything that decides the exported graph: weights, architecture, preprocessing,
    opset, output kind and the exporting versions. Used to key the runtimes' export cache."""
    digest = hashlib.sha256()
    header = {
        "architecture": model.architecture.to_dict(),
        "preprocessing": model.preprocessing.to_dict(),
        "opset": opset,
        "output": output,
        "beholder": __version__,
        "torch": torch.__version__,
        "metadata": METADATA_VERSION,
    }
    digest.update(json.dumps(header, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The torch.export-based exporter prints progress to stdout and warns freely; keep it in the log."""
    buffer = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buffer):
        warnings.simplefilter("ignore")
        yield
    text = buffer.getvalue().strip()
    if text:
        log.debug("torch.onnx.export said:\n%s", text)


def export_onnx(
    model: NIMA,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    output: str = "probabilities",
    name: str | None = None,
    provenance: dict[str, Any] | None = None,
    check: bool = True,
) -> Path:
    """Write ``model`` as an ONNX file with a dynamic batch axis and Beholder metadata.

    Args:
        model: the NIMA model (left untouched; a BatchNorm-folded copy is exported).
        path: output file; written atomically (temporary file, then rename).
        opset: ONNX opset version.
        output: 'probabilities' (softmax in the graph, the default) or 'logits'.
        name: the model's name, stored in the metadata (registry name or checkpoint path).
        provenance: where the weights come from (URL, sha256, training run...), stored as JSON.
        check: run ``onnx.checker`` on the written file.

    Returns:
        the path written.
    """
    _check_output(output)
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError("ONNX export needs the 'onnx' extra: pip install 'beholder[onnx]'") from exc
    check_opset(opset)

    path = Path(path)
    folded = copy.deepcopy(model).cpu().float().eval()
    fuse_conv_bn(folded)
    wrapped = (_WithSoftmax(folded) if output == "probabilities" else folded).eval()
    height, width = model.preprocessing.input_size
    example = torch.zeros(_EXAMPLE_BATCH, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                wrapped,
                (example,),
                None,
                input_names=[INPUT_NAME],
                output_names=[output],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=({0: batch},),  # by position: NIMA.forward names its input x
                verbose=False,
            )
    except ImportError as exc:  # the torch.export-based exporter needs onnxscript
        raise ConfigError(
            f"ONNX export needs the 'onnx' extra ({exc}): pip install 'beholder[onnx]'"
        ) from exc
    proto = program.model_proto
    written = _written_opset(proto)
    if written != opset:  # the exporter's down-conversion is best-effort and silent when it fails
        raise ConfigError(f"ONNX opset {opset} was asked for, but the exporter wrote opset {written}")
    metadata = {
        "format_version": str(METADATA_VERSION),
        "version": __version__,
        "model": name or "custom",
        "architecture": json.dumps(model.architecture.to_dict()),
        "preprocessing": json.dumps(model.preprocessing.to_dict()),
        "provenance": json.dumps(provenance or {}),
        "output": output,
        "input": json.dumps(
            {"name": INPUT_NAME, "shape": ["batch", 3, height, width], "dtype": "float32", "layout": "NCHW"}
        ),
        "scores": json.dumps(list(range(1, model.architecture.num_classes + 1))),
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, value
    proto.doc_string = (
        f"Beholder NIMA model {metadata['model']!r}: {INPUT_NAME} float32 (batch, 3, {height}, {width}) "
        f"preprocessed as in metadata 'beholder.preprocessing' -> {output} (batch, "
        f"{model.architecture.num_classes}) over scores 1..{model.architecture.num_classes}."
    )
    proto.producer_name, proto.producer_version = "beholder", __version__

    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name that onnx creates with the usual permissions (mkstemp would make it 0600, and
    # reading the umask means setting it, process-wide, under other threads' feet).
    temporary = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        onnx.save_model(proto, os.fspath(temporary))
        if check:
            onnx.checker.check_model(os.fspath(temporary), full_check=True)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    log.info("exported %s to %s (opset %d, output %s)", metadata["model"], path, opset, output)
    return path


def load_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read the Beholder metadata of an exported ONNX file.

    Returns a dict with ``model``, ``version`` (of Beholder), ``format_version``, ``output``
    ('probabilities' or 'logits'), ``opset`` and the decoded JSON of ``architecture``,
    ``preprocessing``, ``provenance``, ``input`` and ``scores``.

    Raises:
        ConfigError: the file is missing, not ONNX, or was not written by :func:`export_onnx`.
    """
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError("reading ONNX files needs the 'onnx' extra: pip install 'beholder[onnx]'") from exc
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load_model(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a file that is not ONNX
        raise ConfigError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    metadata = parse_metadata({entry.key: entry.value for entry in proto.metadata_props}, str(path))
    metadata["opset"] = _written_opset(proto)
    return metadata

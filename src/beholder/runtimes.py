"""Inference runtimes: run a NIMA model on a preprocessed batch and return probabilities.

A runtime is a callable ``(batch: float32 array or tensor of shape (B, 3, H, W)) -> (B, 10)
probabilities as a numpy array`` with a ``name``. The scorer, the evaluator and the HTTP service
only talk to this interface, so a faster engine slots in without touching them.

Runtimes:

* ``torch``: eager PyTorch with BatchNorm folded and channels-last memory (always available);
* ``onnx``: ONNX Runtime on the model's ONNX export, or on an ONNX file (:meth:`from_file`);
* ``openvino``: OpenVINO on the same file, at fp32 (``INFERENCE_PRECISION_HINT``: on CPUs
  with bf16 units OpenVINO would otherwise silently run in bf16);
* ``openvino-int8``: OpenVINO on an int8 copy of the export, calibrated once on generated photos
  (about 3× ``onnx``; means move by 0.02 on average, so it is chosen by name only);
* ``auto``: the fastest one installed (see :data:`AUTO_PREFERENCE`).

Runtimes are registered by whether their package can be found (``importlib.util.find_spec``) and
the package is imported only when the runtime is built: importing this module costs no torch,
onnx, onnxruntime or openvino. ``onnx`` and ``openvino`` export a model on first use into the
verified cache of :mod:`beholder.onnx_cache` and reuse that file afterwards.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from beholder.errors import ConfigError
from beholder.onnx_model import check_model_outputs, parse_metadata

if TYPE_CHECKING:
    import torch

    from beholder.models.nima import NIMA

log = logging.getLogger(__name__)

Batch = Union[np.ndarray, "torch.Tensor"]


class TorchRuntime:
    """Eager PyTorch: a fused, channels-last, eval-mode copy of the model under ``inference_mode``."""

    name = "torch"

    def __init__(
        self, model: NIMA, device: str | None = None, channels_last: bool = True, fuse: bool = True
    ):
        import torch

        from beholder.models.fusion import fuse_conv_bn

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = copy.deepcopy(model).eval()
        if fuse:
            count = fuse_conv_bn(model)
            log.debug("fused %d conv+BatchNorm pairs", count)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)

    def __call__(self, batch: Batch) -> np.ndarray:
        import torch

        tensor = torch.as_tensor(batch).to(self.device, memory_format=self.memory_format, non_blocking=True)
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(tensor).float(), dim=-1)  # (B, 10)
        return probabilities.cpu().numpy()


def _cpu_threads() -> int:
    """CPUs this process may use (the affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _as_float32_numpy(batch: Batch) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    if torch is not None and isinstance(batch, torch.Tensor):
        batch = batch.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def exporter_available() -> bool:
    """Whether a model can be exported here (torch's exporter needs onnx and onnxscript)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript"))


def exported_onnx(model: NIMA, cache_dir: str | os.PathLike | None = None) -> Path:
    """The model as an ONNX file (probabilities output), exported once and cached by fingerprint.

    The key covers the weights, architecture, preprocessing and exporter versions, so a retrained
    model never picks up a stale file; the entry's content hash is checked on every use.
    """
    from beholder.export import export_onnx, model_fingerprint
    from beholder.onnx_cache import OnnxCache

    return OnnxCache(cache_dir).get(
        model_fingerprint(model), lambda path: export_onnx(model, path, check=False)
    )


class _OnnxFileRuntime:
    """What the engines that run an ONNX file share: the file, its metadata, threads, the checks.

    Subclasses check their device in :meth:`_select_device` (cheap, so before any export), and load
    the file in :meth:`_open`, which returns its raw metadata.
    """

    name = "exported"

    def __init__(
        self,
        model: NIMA | None = None,
        device: str | None = None,
        *,
        threads: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        path: str | os.PathLike | None = None,
        verify: bool = False,
    ):
        self._select_device(device)
        if (model is None) == (path is None):
            raise ConfigError(
                f"runtime {self.name!r} needs a model or the path of an exported ONNX file (one of them)"
            )
        self.path = Path(path) if path is not None else exported_onnx(model, cache_dir)
        if not self.path.is_file():
            raise ConfigError(f"ONNX file not found: {self.path}")
        self.path = self._engine_file(self.path, cache_dir)
        self.threads = threads or _cpu_threads()
        self.metadata: dict[str, Any] = {}
        self._loaded(self._open(), verify)

    def _select_device(self, device: str | None) -> None:
        """Set ``self.device``; a ConfigError for a device this engine cannot use."""
        raise NotImplementedError

    def _open(self) -> dict[str, str]:
        """Load ``self.path`` for :meth:`_run`; return the file's raw metadata."""
        raise NotImplementedError

    def _unreadable(self, exc: Exception) -> ConfigError:
        return ConfigError(f"{self.path}: not a readable ONNX file ({type(exc).__name__}: {exc})")

    def _loaded(self, raw_metadata: dict[str, str], verify: bool) -> None:
        self.metadata = parse_metadata(raw_metadata, str(self.path))
        self.output = self.metadata["output"]
        if verify:
            check_model_outputs(self._run, self.metadata, str(self.path))

    def _engine_file(self, fp32_path: Path, cache_dir: str | os.PathLike | None) -> Path:
        """The file this engine loads, made from the fp32 export (the export itself here)."""
        return fp32_path

    @property
    def preprocessing(self):
        from beholder.preprocessing import Preprocessing

        return Preprocessing.from_dict(self.metadata["preprocessing"])

    @property
    def architecture(self):
        from beholder.models.architecture import Architecture

        return Architecture.from_dict(self.metadata["architecture"])

    @classmethod
    def from_file(
        cls, path: str | os.PathLike, device: str | None = None, *, verify: bool = False, **kwargs
    ):
        """Run an ONNX file written by :func:`beholder.export.export_onnx`.

        ``verify`` runs it on probe images first and refuses a file whose graph does not match its
        metadata (see :func:`beholder.onnx_model.check_model_outputs`); ``Scorer.from_onnx`` and
        ``beholder score --onnx`` do, for users' files.
        """
        return cls(None, device, path=path, verify=verify, **kwargs)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, batch: Batch) -> np.ndarray:
        outputs = self._run(_as_float32_numpy(batch))
        return outputs if self.output == "probabilities" else _softmax(outputs)  # (B, 10)


class OnnxRuntime(_OnnxFileRuntime):
    """ONNX Runtime (CPU, or CUDA with onnxruntime-gpu) on the model's cached ONNX export.

    Args:
        model: the NIMA model to export; or use :meth:`from_file` for an exported file.
        device: None or 'cpu' for the CPU provider; 'cuda' needs onnxruntime-gpu.
        threads: intra-op threads (default: the CPUs this process may use). Threads do not spin
            while idle, because the Scorer decodes images on the same cores between model calls.
        cache_dir: where exports are cached (default ``$BEHOLDER_CACHE/onnx``).
        verify: check the graph against its metadata on probe images (users' files).
    """

    name = "onnx"

    def _select_device(self, device: str | None) -> None:
        import onnxruntime as ort

        self.device = (device or "cpu").lower()
        if self.device == "cpu":
            self._providers = ["CPUExecutionProvider"]
        elif self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError("runtime 'onnx' on CUDA needs onnxruntime-gpu; use --runtime torch on GPUs")
            self._providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            raise ConfigError(f"runtime 'onnx' supports devices cpu and cuda, not {device!r}")

    def _open(self) -> dict[str, str]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: the Scorer decodes images on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(os.fspath(self.path), options, providers=self._providers)
        except Exception as exc:  # onnxruntime raises its own exception types for a bad file
            raise self._unreadable(exc) from exc
        self.input_name = self.session.get_inputs()[0].name
        # The metadata straight from the session: reading it with the onnx package costs 1 s of imports.
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe; no lock needed.
        (outputs,) = self.session.run(None, {self.input_name: batch})
        return outputs


class OpenVinoRuntime(_OnnxFileRuntime):
    """OpenVINO (CPU plugin, fp32) on the model's cached ONNX export.

    Args:
        model: the NIMA model to export; or use :meth:`from_file` for an exported file.
        device: None or 'cpu' for OpenVINO's CPU plugin; other OpenVINO device names (GPU, NPU)
            are passed through when OpenVINO lists them.
        threads: inference threads (default: the CPUs this process may use).
        cache_dir: where exports are cached (default ``$BEHOLDER_CACHE/onnx``).
        verify: check the graph against its metadata on probe images (users' files).
    """

    name = "openvino"

    def _select_device(self, device: str | None) -> None:
        import openvino as ov

        self._core = ov.Core()
        self.device = (device or "cpu").upper()
        if self.device not in self._core.available_devices:
            raise ConfigError(
                f"runtime 'openvino' has no device {device!r}; OpenVINO sees: {', '.join(self._core.available_devices)}"
            )

    def _open(self) -> dict[str, str]:
        config = {
            # One request at a time, all threads on it: the Scorer and the service already batch.
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if self.device == "CPU":
            config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            graph = self._core.read_model(os.fspath(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for a bad file
            raise self._unreadable(exc) from exc
        self.compiled = self._core.compile_model(graph, self.device, config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request serves one call at a time
        return _onnx_metadata_props(self.path)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            result = self._request.infer({0: batch})
            return np.array(result[0], dtype=np.float32, copy=True)  # the request reuses its buffer


class OpenVinoInt8Runtime(OpenVinoRuntime):
    """OpenVINO on an int8 copy of the fp32 export (:func:`beholder.quantize.int8_variant`).

    Calibrated once on generated photo-like images and cached; about 2.5–3× fp32 ONNX Runtime, with
    means within 0.02 of fp32 on average and 0.06 at most (docs/int8.md), so it is a choice by name,
    never the ``auto`` pick. Refused on x86 CPUs without VNNI, where OpenVINO's int8 sums saturate.
    """

    name = "openvino-int8"

    def _select_device(self, device: str | None) -> None:
        from beholder.quantize import cpu_runs_int8_exactly

        super()._select_device(device)
        if self.device == "CPU" and not cpu_runs_int8_exactly():
            raise ConfigError(
                "runtime 'openvino-int8' needs a CPU with VNNI (avx512_vnni, avx_vnni or amx_int8): "
                "on plain AVX2 OpenVINO's int8 sums saturate and scores move by up to 0.9; "
                "use --runtime onnx or openvino"
            )

    def _engine_file(self, fp32_path: Path, cache_dir: str | os.PathLike | None) -> Path:
        from beholder.quantize import int8_variant

        return int8_variant(fp32_path, cache_dir)


def _onnx_metadata_props(path: Path) -> dict[str, str]:
    """A file's raw ``metadata_props`` through the onnx package (OpenVINO does not expose them)."""
    try:
        import onnx
    except ImportError as exc:
        raise ConfigError(
            "runtime 'openvino' reads ONNX metadata with the 'onnx' package: pip install onnx"
        ) from exc
    try:
        proto = onnx.load_model(os.fspath(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a file that is not ONNX
        raise ConfigError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    return {entry.key: entry.value for entry in proto.metadata_props}


#: Runtimes that run an ONNX file (exported from a model, or given by the user).
ONNX_RUNTIMES: dict[str, type[_OnnxFileRuntime]] = {
    "onnx": OnnxRuntime,
    "openvino": OpenVinoRuntime,
    "openvino-int8": OpenVinoInt8Runtime,
}
#: The packages each ONNX runtime needs (int8 quantizes with NNCF and reads metadata with onnx).
_RUNTIME_PACKAGES = {
    "onnx": ("onnxruntime",),
    "openvino": ("openvino",),
    "openvino-int8": ("openvino", "onnx", "nncf"),
}


def _registered() -> dict[str, Callable[..., Callable[[Batch], np.ndarray]]]:
    found: dict[str, Callable[..., Callable[[Batch], np.ndarray]]] = {"torch": TorchRuntime}
    for name, packages in _RUNTIME_PACKAGES.items():
        missing = [package for package in packages if importlib.util.find_spec(package) is None]
        if not missing:
            found[name] = ONNX_RUNTIMES[name]
        else:
            log.debug("%s not installed: runtime %s unavailable", ", ".join(missing), name)
    return found


#: The extra that brings each ONNX runtime.
_EXTRA_OF = {"onnx": "beholder[onnx]", "openvino": "beholder[openvino]", "openvino-int8": "beholder[int8]"}

#: name -> factory(model, device) for every runtime this installation supports.
RUNTIMES: dict[str, Callable[..., Callable[[Batch], np.ndarray]]] = _registered()

#: What ``auto`` picks on CPU: the first of these that is installed. A fixed order rather than a
#: measurement at start-up, so that a service starts fast and always picks the same engine; it
#: follows benchmarks/score_throughput.py on a 2-core AVX-512 CPU (docs/deploy.md has figures).
AUTO_PREFERENCE: tuple[str, ...] = ("onnx", "openvino", "torch")


def available_runtimes() -> list[str]:
    """Names of the runtimes installed here (``auto`` not included)."""
    return list(RUNTIMES)


def _accelerated(device: str | None) -> bool:
    """Whether ``device`` (or, when None, the default torch device) is not the CPU."""
    if device:
        return device.split(":")[0].lower() != "cpu"
    # Without a driver there is no GPU: answer without importing torch (2 s) on CPU-only machines.
    if not os.path.exists("/proc/driver/nvidia/version") and sys.platform.startswith("linux"):
        return False
    import torch

    return torch.cuda.is_available()


def resolve_runtime_name(name: str, device: str | None = None) -> str:
    """The concrete runtime ``name`` stands for: ``auto`` becomes the fastest installed one.

    On any device but the CPU (``cuda``, ``mps``...) ``auto`` means ``torch``: the CPU engines
    cannot use it.
    """
    if name != "auto":
        return name
    if _accelerated(device):
        return "torch"
    return next(candidate for candidate in AUTO_PREFERENCE if candidate in RUNTIMES)


def check_available(name: str, requested: str | None = None) -> None:
    """Raise ConfigError unless runtime ``name`` (resolved from ``requested``) is installed here."""
    if name not in RUNTIMES:
        raise ConfigError(
            f"unknown or unavailable runtime {requested or name!r}; available here: "
            f"{', '.join([*RUNTIMES, 'auto'])}"
            + (f" (install {_EXTRA_OF[name]!r})" if name in _EXTRA_OF else "")
        )


def create_runtime(name: str, model: NIMA, device: str | None = None) -> Callable[[Batch], np.ndarray]:
    """Build the runtime called ``name`` ('torch', 'onnx', 'openvino' or 'auto') for ``model``.

    Raises:
        ConfigError: the name is unknown, or its package is not installed.
    """
    resolved = resolve_runtime_name(name, device)
    check_available(resolved, name)
    if resolved != name:
        log.info("runtime auto -> %s", resolved)
    return RUNTIMES[resolved](model, device=device)


def runtime_for_file(
    name: str, path: str | os.PathLike, device: str | None = None, *, verify: bool = True
) -> _OnnxFileRuntime:
    """An ONNX runtime ('onnx', 'openvino' or 'auto') on the ONNX file at ``path``.

    Raises:
        ConfigError: the runtime cannot run ONNX files or is not installed, or the file is refused.
    """
    resolved = resolve_runtime_name(name, device)
    if resolved == "torch" and name == "auto":  # a GPU: still run the file, with ONNX Runtime
        resolved = next((n for n in AUTO_PREFERENCE if n in RUNTIMES and n in ONNX_RUNTIMES), "onnx")
    if resolved not in ONNX_RUNTIMES:
        raise ConfigError(f"an ONNX file runs with --runtime onnx, openvino or auto, not {name!r}")
    check_available(resolved, name)
    return ONNX_RUNTIMES[resolved].from_file(path, device, verify=verify)

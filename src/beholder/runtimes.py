"""Inference runtimes: run a NIMA model on a preprocessed batch and return probabilities.

A runtime is a callable ``(batch: float32 array or tensor of shape (B, 3, H, W)) -> (B, 10)
probabilities as a numpy array``. The scorer, the evaluator and the HTTP service only talk to
this interface, so a faster engine slots in without touching them.

Runtimes:

* ``torch``: eager PyTorch with BatchNorm folded and channels-last memory (always available);
* ``onnx``: ONNX Runtime on the model exported by :func:`beholder.export.export_onnx`;
* ``openvino``: OpenVINO on the same ONNX file, at fp32 (``INFERENCE_PRECISION_HINT``: on CPUs
  with bf16 units OpenVINO would otherwise silently run in bf16);
* ``auto``: the fastest one installed (see :data:`AUTO_PREFERENCE`).

``onnx`` and ``openvino`` are registered only when their packages import. They export the model
on first use into ``$BEHOLDER_CACHE/onnx/<sha256 of weights, architecture, preprocessing>.onnx``
and reuse that file afterwards.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from beholder.errors import ConfigError
from beholder.models.nima import NIMA

log = logging.getLogger(__name__)

Batch = Union[np.ndarray, torch.Tensor]


def fuse_conv_bn(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a Conv2d inside an ``nn.Sequential`` into the conv.

    Inference-only (uses running statistics). On the Keras MobileNet this removes 27 BatchNorm
    passes over the activations, about 1.5x faster on CPU. Returns the number of pairs fused.
    Only plain ``nn.BatchNorm2d`` is folded: subclasses may do more (timm's ``BatchNormAct2d``
    applies an activation too), which replacing them with ``Identity`` would lose.
    """
    fused = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = [name for name, _ in module.named_children()]
        for first, second in zip(names, names[1:]):
            conv, bn = getattr(module, first), getattr(module, second)
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                setattr(module, first, fuse_conv_bn_eval(conv, bn))
                setattr(module, second, nn.Identity())
                fused += 1
    return fused


class TorchRuntime:
    """Eager PyTorch: a fused, channels-last, eval-mode copy of the model under ``inference_mode``."""

    name = "torch"

    def __init__(
        self, model: NIMA, device: Optional[str] = None, channels_last: bool = True, fuse: bool = True
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = copy.deepcopy(model).eval()
        if fuse:
            count = fuse_conv_bn(model)
            log.debug("fused %d conv+BatchNorm pairs", count)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)

    def __call__(self, batch: Batch) -> np.ndarray:
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
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def onnx_cache_dir() -> Path:
    """Where runtimes keep exported ONNX files: ``$BEHOLDER_CACHE/onnx``."""
    from beholder.weights import cache_dir

    return cache_dir() / "onnx"


def exported_onnx(model: NIMA, cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The model as an ONNX file (probabilities output), exported once and cached by content hash.

    The cache key covers the weights, architecture, preprocessing and exporter versions, so a
    retrained model never picks up a stale file. If the cache is not writable (a read-only
    container, say), the file goes to a fresh temporary directory instead.
    """
    from beholder.export import export_onnx, model_fingerprint

    folder = Path(cache_dir) if cache_dir is not None else onnx_cache_dir()
    path = folder / f"{model_fingerprint(model)}.onnx"
    if path.is_file():
        log.debug("using cached ONNX export %s", path)
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return export_onnx(model, path, check=False)
    except OSError as exc:
        fallback = Path(tempfile.mkdtemp(prefix="beholder-onnx-")) / path.name
        log.warning("cannot write the ONNX cache %s (%s); exporting to %s", folder, exc, fallback)
        return export_onnx(model, fallback, check=False)


def _onnx_output_kind(path: Path) -> str:
    from beholder.export import load_onnx_metadata

    return load_onnx_metadata(path)["output"]


class _ExportedModelRuntime:
    """What the engines that run the model's ONNX export share: the file, its output kind, threads.

    Subclasses check their device first (cheap), then call ``super().__init__`` (may export).
    """

    name = "exported"

    def __init__(
        self,
        model: Optional[NIMA],
        *,
        threads: Optional[int],
        cache_dir: Optional[Union[str, os.PathLike]],
        path: Optional[Union[str, os.PathLike]],
    ):
        if (model is None) == (path is None):
            raise ConfigError(
                f"runtime {self.name!r} needs a model or the path of an exported ONNX file (one of them)"
            )
        self.path = Path(path) if path is not None else exported_onnx(model, cache_dir)
        self.output = _onnx_output_kind(self.path)
        self.threads = threads or _cpu_threads()

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike], device: Optional[str] = None, **kwargs):
        """Run an ONNX file written by :func:`beholder.export.export_onnx`."""
        return cls(None, device, path=path, **kwargs)

    def _probabilities(self, outputs: np.ndarray) -> np.ndarray:
        return outputs if self.output == "probabilities" else _softmax(outputs)  # (B, 10)


class OnnxRuntime(_ExportedModelRuntime):
    """ONNX Runtime (CPU, or CUDA with onnxruntime-gpu) on the model's cached ONNX export.

    Args:
        model: the NIMA model to export; or use :meth:`from_file` for an exported file.
        device: None or 'cpu' for the CPU provider; 'cuda' needs onnxruntime-gpu.
        threads: intra-op threads (default: the CPUs this process may use). Threads do not spin
            while idle, because the Scorer decodes images on the same cores between model calls.
        cache_dir: where exports are cached (default ``$BEHOLDER_CACHE/onnx``).
    """

    name = "onnx"

    def __init__(
        self,
        model: Optional[NIMA] = None,
        device: Optional[str] = None,
        *,
        threads: Optional[int] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        path: Optional[Union[str, os.PathLike]] = None,
    ):
        import onnxruntime as ort

        self.device = (device or "cpu").lower()
        if self.device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError("runtime 'onnx' on CUDA needs onnxruntime-gpu; use --runtime torch on GPUs")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            raise ConfigError(f"runtime 'onnx' supports devices cpu and cuda, not {device!r}")
        super().__init__(model, threads=threads, cache_dir=cache_dir, path=path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: the Scorer decodes images on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(os.fspath(self.path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: Batch) -> np.ndarray:
        # InferenceSession.run is thread-safe; no lock needed.
        (outputs,) = self.session.run(None, {self.input_name: _as_float32_numpy(batch)})
        return self._probabilities(outputs)


class OpenVinoRuntime(_ExportedModelRuntime):
    """OpenVINO (CPU plugin, fp32) on the model's cached ONNX export.

    Args:
        model: the NIMA model to export; or use :meth:`from_file` for an exported file.
        device: None or 'cpu' for OpenVINO's CPU plugin; other OpenVINO device names (GPU, NPU)
            are passed through when OpenVINO lists them.
        threads: inference threads (default: the CPUs this process may use).
        cache_dir: where exports are cached (default ``$BEHOLDER_CACHE/onnx``).
    """

    name = "openvino"

    def __init__(
        self,
        model: Optional[NIMA] = None,
        device: Optional[str] = None,
        *,
        threads: Optional[int] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        path: Optional[Union[str, os.PathLike]] = None,
    ):
        import openvino as ov

        core = ov.Core()
        self.device = (device or "cpu").upper()
        if self.device not in core.available_devices:
            raise ConfigError(
                f"runtime 'openvino' has no device {device!r}; OpenVINO sees: {', '.join(core.available_devices)}"
            )
        super().__init__(model, threads=threads, cache_dir=cache_dir, path=path)
        config = {
            # One request at a time, all threads on it: the Scorer and the service already batch.
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "f32",
        }
        if self.device == "CPU":
            config["INFERENCE_NUM_THREADS"] = self.threads
        self.compiled = core.compile_model(core.read_model(os.fspath(self.path)), self.device, config)
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # an infer request serves one call at a time

    def __call__(self, batch: Batch) -> np.ndarray:
        with self._lock:
            result = self._request.infer({0: _as_float32_numpy(batch)})
            outputs = np.array(result[0], dtype=np.float32, copy=True)  # the request reuses its buffer
        return self._probabilities(outputs)


#: name -> factory(model, device) for every runtime this installation supports.
RUNTIMES: Dict[str, Callable[..., Callable[[Batch], np.ndarray]]] = {"torch": TorchRuntime}


def _register_optional() -> None:
    # Export needs onnx and onnxscript (torch's exporter); each engine needs its own package too.
    # onnxscript is only looked up, not imported: importing it costs 0.3 s that `beholder score`
    # with the torch runtime should not pay; the exporter imports it when it runs.
    try:
        import onnx  # noqa: F401
    except ImportError:
        log.debug("onnx not installed: runtimes onnx and openvino unavailable")
        return
    if importlib.util.find_spec("onnxscript") is None:
        log.debug("onnxscript not installed: runtimes onnx and openvino unavailable")
        return
    try:
        import onnxruntime  # noqa: F401

        RUNTIMES["onnx"] = OnnxRuntime
    except ImportError:
        log.debug("onnxruntime not installed: runtime onnx unavailable")
    try:
        import openvino  # noqa: F401

        RUNTIMES["openvino"] = OpenVinoRuntime
    except ImportError:
        log.debug("openvino not installed: runtime openvino unavailable")


_register_optional()

#: What ``auto`` picks on CPU: the first of these that is installed. A fixed order rather than a
#: measurement at start-up, so that a service starts fast and always picks the same engine; it
#: follows benchmarks/score_throughput.py on a 2-core AVX-512 CPU (docs/deploy.md has figures).
AUTO_PREFERENCE: Tuple[str, ...] = ("onnx", "openvino", "torch")


def available_runtimes() -> list:
    """Names of the runtimes installed here (``auto`` not included)."""
    return list(RUNTIMES)


def resolve_runtime_name(name: str, device: Optional[str] = None) -> str:
    """The concrete runtime ``name`` stands for: ``auto`` becomes the fastest installed one.

    On any device but the CPU (``cuda``, ``mps``...) ``auto`` means ``torch``: the CPU engines
    cannot use it.
    """
    if name != "auto":
        return name
    accelerated = device.split(":")[0].lower() != "cpu" if device else torch.cuda.is_available()
    if accelerated:
        return "torch"
    return next(candidate for candidate in AUTO_PREFERENCE if candidate in RUNTIMES)


def create_runtime(name: str, model: NIMA, device: Optional[str] = None) -> Callable[[Batch], np.ndarray]:
    """Build the runtime called ``name`` ('torch', 'onnx', 'openvino' or 'auto').

    Raises:
        ConfigError: the name is unknown, or its package is not installed.
    """
    resolved = resolve_runtime_name(name, device)
    if resolved not in RUNTIMES:
        raise ConfigError(
            f"unknown or unavailable runtime {name!r}; available here: {', '.join([*RUNTIMES, 'auto'])}"
            + (
                " (install 'beholder[onnx]' or 'beholder[openvino]')"
                if resolved in ("onnx", "openvino")
                else ""
            )
        )
    if resolved != name:
        log.info("runtime auto -> %s", resolved)
    return RUNTIMES[resolved](model, device=device)

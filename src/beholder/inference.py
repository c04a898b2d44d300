"""The scoring core: images -> rating distributions, means, stds and AVA percentiles.

One home for what every consumer of scores shares: :class:`ScoreResult` (and its JSON form),
:func:`collect` (a batch's per-item outcomes -> results and model inputs, the one per-item error
mapping), :func:`fill_scores` (model outputs -> scores; a non-finite output is a per-item error),
:func:`rank` (best mean first, failures last) and :func:`results_json` (strict JSON). The CLI, the
HTTP service and culling all go through them.

The :class:`Scorer` decodes and preprocesses images on a thread pool
(:func:`beholder.preprocessing.load_input`: PIL and numpy) while the model runs on the previous
batch. Inputs that fail to load get a per-item error; the rest are still scored, in input order.

With ONNX Runtime, scoring a registered model or a checkpoint whose export is cached imports no
torch at all: the cache is keyed by the weights file's hash (see :mod:`beholder.onnx_cache`). A
registered model that ships its ONNX file in the package (the default one does) needs no export
even on the first run: :func:`_cached_engine` loads that file once it matches its pinned sha256.
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from beholder.defaults import DEFAULT_MODEL
from beholder.errors import ConfigError, ImageLoadError
from beholder.imageio import DEFAULT_MAX_PIXELS, ImageSource, describe
from beholder.onnx_model import DEFAULT_OPSET
from beholder.preprocessing import DEFAULT_FIDELITY, FIDELITIES, Preprocessing, load_input
from beholder.ratings import distribution_mean, distribution_std
from beholder.runtimes import (
    ONNX_RUNTIMES,
    check_available,
    create_runtime,
    resolve_runtime_name,
    runtime_for_file,
)

if TYPE_CHECKING:
    from beholder.models.nima import NIMA

log = logging.getLogger(__name__)

#: The per-item error of a model output that is NaN or infinite.
NOT_FINITE = "model output is not finite"
_OWN_LIMIT = object()  # Scorer.preprocess: "use the scorer's max_pixels" (None means no limit)


@dataclass
class ScoreResult:
    """The score of one input, or why it could not be scored.

    ``percentile`` is the share of AVA photos (0..100) whose mean rating is below ``mean``.
    """

    path: str
    mean: float | None = None
    std: float | None = None
    percentile: float | None = None
    distribution: list[float] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {
            "path": self.path,
            "mean": self.mean,
            "std": self.std,
            "percentile": self.percentile,
            "distribution": self.distribution,
        }


def rank(results: Iterable[ScoreResult]) -> list[ScoreResult]:
    """Best mean first; failed inputs last, in input order (``sorted`` is stable)."""
    return sorted(results, key=lambda r: (r.error is not None, -(r.mean or 0.0)))


def results_json(results: Iterable[ScoreResult], indent: int | None = 2) -> str:
    """Strict JSON (never NaN or Infinity; :func:`fill_scores` turns those into errors)."""
    return json.dumps([r.to_dict() for r in results], indent=indent, allow_nan=False)


def error_message(exc: BaseException) -> str:
    """The per-item error text of a failed input."""
    if isinstance(exc, ImageLoadError):
        return exc.problem
    return f"{type(exc).__name__}: {exc}"


def collect(outcomes: Iterable[tuple[str, Any]]) -> tuple[list[ScoreResult], list[np.ndarray]]:
    """(label, model input or the exception that replaced it) pairs -> results and the inputs to score.

    A failure on one odd image must not lose the batch: it becomes that item's ``error``.
    """
    results: list[ScoreResult] = []
    inputs: list[np.ndarray] = []
    for label, outcome in outcomes:
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, Exception):  # KeyboardInterrupt, CancelledError: not the item's
                raise outcome
            if not isinstance(outcome, ImageLoadError):
                log.debug("preprocessing failed for %s", label, exc_info=outcome)
            results.append(ScoreResult(path=label, error=error_message(outcome)))
        else:
            results.append(ScoreResult(path=label))
            inputs.append(outcome)
    return results, inputs


def fill_scores(results: Sequence[ScoreResult], probabilities: np.ndarray) -> None:
    """Give the results without an error, in order, their row of (n, 10) ``probabilities``.

    A row with a NaN or infinite value becomes that item's error (:data:`NOT_FINITE`).
    """
    from beholder.percentiles import percentile

    probabilities = np.asarray(probabilities, dtype=np.float64)
    finite = np.isfinite(probabilities).all(axis=-1)
    safe = np.where(finite[:, None], probabilities, 0.0)  # no NaN warnings from the moments below
    means, stds = distribution_mean(safe), distribution_std(safe)
    percentiles = percentile(means)
    rows = iter(range(len(probabilities)))
    for result in results:
        if result.error is not None:
            continue
        i = next(rows)
        if not finite[i]:
            result.error = NOT_FINITE
            continue
        result.mean, result.std = float(means[i]), float(stds[i])
        result.percentile = round(float(percentiles[i]), 2)
        result.distribution = [float(v) for v in probabilities[i]]


def _outcome(future: Future) -> Any:
    exc = future.exception()
    return exc if exc is not None else future.result()


class Scorer:
    """Turns images into NIMA rating distributions with a model and its declared preprocessing.

    Build it from a model (``Scorer(model, runtime=...)``), or with :meth:`from_pretrained`,
    :meth:`from_checkpoint` or :meth:`from_onnx`.

    Args:
        model: a NIMA model (its ``preprocessing`` decides how images are resized and normalised);
            or None with ``engine``.
        runtime: 'torch' (default), or another name registered in :mod:`beholder.runtimes`.
        device: torch device for the torch runtime (default: CUDA if available, else CPU).
        batch_size: images per model call.
        workers: decoding threads (default: twice the CPUs, at most 8; decoding competes with the
            model for cores, and more threads give it a fairer share).
        max_pixels: refuse larger images (decompression-bomb guard).
        fidelity: 'exact' (reproduces the reference model) or 'fast' (reduced JPEG decode of large
            photos; see docs/speed.md).
        engine: an already built runtime that carries its ``preprocessing`` and ``architecture``
            (an ONNX file's runtime), instead of ``model``.

    ``runtime_name`` is the engine that actually runs ('onnx', never 'auto').
    """

    def __init__(
        self,
        model: NIMA | None = None,
        *,
        runtime: str = "torch",
        device: str | None = None,
        batch_size: int = 32,
        workers: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        name: str | None = None,
        fidelity: str = DEFAULT_FIDELITY,
        engine: Callable[[Any], np.ndarray] | None = None,
    ):
        if (model is None) == (engine is None):
            raise ConfigError("a Scorer needs a model or a runtime engine (one of them)")
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        if fidelity not in FIDELITIES:
            raise ConfigError(f"fidelity must be one of {', '.join(FIDELITIES)}, got {fidelity!r}")
        self.model = model
        self.runtime = engine if engine is not None else create_runtime(runtime, model, device=device)
        self.runtime_name: str = getattr(self.runtime, "name", runtime)
        described = model if model is not None else self.runtime
        self.preprocessing: Preprocessing = described.preprocessing
        self.architecture = described.architecture
        self.name = name or "custom"
        self.fidelity = fidelity
        #: The JPEG draft size the fidelity allows (None: full-size decode), for callers that decode.
        self.draft_size = self.preprocessing.fidelity_draft_size(fidelity)
        self.batch_size = batch_size
        self.workers = max(1, workers if workers is not None else min(8, 2 * (os.cpu_count() or 1)))
        self.max_pixels = max_pixels

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name: str = DEFAULT_MODEL,
        *,
        weights: str | os.PathLike | None = None,
        runtime: str = "torch",
        device: str | None = None,
        **kwargs: Any,
    ) -> Scorer:
        """A scorer for a registered model (see ``beholder models``); downloads weights if needed.

        With an ONNX runtime ('onnx', 'openvino', or 'auto' on a CPU) the model's packaged ONNX file
        is loaded when it has one and no ``weights`` are given; otherwise the model is exported once
        into the ONNX cache, and later scorers load that file. Either way, without importing torch.
        """
        from beholder.models.registry import get_model_spec

        spec = get_model_spec(name)

        def build() -> NIMA:
            from beholder.models import create_model

            return create_model(name, weights=weights)

        def identity() -> dict[str, Any]:
            return {
                "model": name,
                "weights_sha256": _weights_sha256(spec, weights),
                "architecture": spec.architecture.to_dict(),
                "preprocessing": spec.preprocessing.to_dict(),
            }

        packaged = spec.verified_packaged_onnx if weights is None else None
        return cls._build(
            name,
            build,
            identity,
            spec.export_provenance(),
            runtime=runtime,
            device=device,
            packaged_onnx=packaged,
            **kwargs,
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        runtime: str = "torch",
        device: str | None = None,
        **kwargs: Any,
    ) -> Scorer:
        """A scorer for a checkpoint written by ``beholder train`` (it carries its preprocessing)."""
        from beholder.weights import sha256_file

        def build() -> NIMA:
            from beholder.models.checkpoint import load_checkpoint

            return load_checkpoint(path)[0]

        def identity() -> dict[str, Any]:
            if not Path(path).is_file():
                raise ConfigError(f"checkpoint not found: {path}")
            return {"checkpoint_sha256": sha256_file(path)}

        return cls._build(str(path), build, identity, {}, runtime=runtime, device=device, **kwargs)

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        *,
        runtime: str = "auto",
        device: str | None = None,
        **kwargs: Any,
    ) -> Scorer:
        """A scorer for an ONNX file written by ``beholder export`` (or by anyone, with its metadata).

        The file is run on probe images first and refused, with a ConfigError naming it, when its
        graph does not match its metadata (see :func:`beholder.onnx_model.check_model_outputs`).
        """
        engine = runtime_for_file(runtime, path, device, verify=True)
        name = kwargs.pop("name", None) or engine.metadata.get("model") or Path(path).name
        return cls(engine=engine, name=name, **kwargs)

    @classmethod
    def _build(
        cls,
        name: str,
        build: Callable[[], NIMA],
        identity: Callable[[], dict[str, Any]],
        provenance: dict[str, Any],
        *,
        runtime: str,
        device: str | None,
        packaged_onnx: Callable[[], Path | None] | None = None,
        **kwargs: Any,
    ) -> Scorer:
        resolved = resolve_runtime_name(runtime, device)
        check_available(resolved, runtime)
        if resolved in ONNX_RUNTIMES:
            engine = _cached_engine(
                resolved,
                build,
                identity,
                name,
                provenance,
                device,
                auto=runtime == "auto",
                packaged_onnx=packaged_onnx,
            )
            if engine is not None:
                return cls(engine=engine, name=name, **kwargs)
            resolved = "torch"  # 'auto' without an exporter and nothing cached
        return cls(build(), runtime=resolved, device=device, name=name, **kwargs)

    # -- scoring -----------------------------------------------------------------------------

    def preprocess(
        self, source: ImageSource, name: str | None = None, *, max_pixels: Any = _OWN_LIMIT
    ) -> np.ndarray:
        """Load one image and turn it into the model's (3, H, W) float32 input.

        ``max_pixels`` (an int, or None for no limit) overrides the scorer's (the service has its own).
        """
        limit = self.max_pixels if max_pixels is _OWN_LIMIT else max_pixels
        return load_input(source, self.preprocessing, name=name, max_pixels=limit, fidelity=self.fidelity)

    def predict(self, batch: Any) -> np.ndarray:
        """(B, 3, H, W) preprocessed batch (array or tensor) -> (B, 10) probabilities."""
        return self.runtime(batch)

    def iter_score(
        self,
        inputs: Iterable[ImageSource],
        *,
        names: Sequence[str] | None = None,
        progress: bool = False,
    ) -> Iterator[ScoreResult]:
        """Score inputs lazily, yielding one :class:`ScoreResult` per input, in input order."""
        from beholder.files import progress_bar

        items = inputs if isinstance(inputs, Sequence) else list(inputs)
        labels = iter(names) if names is not None else None
        pending: deque[tuple[str, Future]] = deque()
        window = 2 * self.batch_size  # decode ahead by one batch while the model runs
        bar = progress_bar(progress, total=len(items), unit="img", desc="scoring", leave=False)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="beholder-decode") as pool, bar:
            source_iter = iter(items)
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        source = next(source_iter)
                    except StopIteration:
                        exhausted = True
                        break
                    label = describe(source, next(labels) if labels is not None else None)
                    pending.append((label, pool.submit(self.preprocess, source, label)))
                if not pending:
                    break
                chunk = [pending.popleft() for _ in range(min(self.batch_size, len(pending)))]
                results, batch = collect((label, _outcome(future)) for label, future in chunk)
                if batch:
                    fill_scores(results, self.predict(np.stack(batch)))
                yield from results
                bar.update(len(chunk))

    def score(
        self,
        inputs: ImageSource | Iterable[ImageSource],
        *,
        names: Sequence[str] | None = None,
        progress: bool = False,
    ) -> list[ScoreResult]:
        """Score one input or many (paths, bytes, file objects or PIL images); see :meth:`iter_score`."""
        if isinstance(inputs, (str, os.PathLike, bytes)) or not isinstance(inputs, Iterable):
            inputs = [inputs]
        return list(self.iter_score(list(inputs), names=names, progress=progress))


def _weights_sha256(spec: Any, weights: str | os.PathLike | None) -> str:
    """The sha256 of the file a registered model's weights come from (hashed, never trusted by name)."""
    from beholder.weights import resolve_weights, sha256_file

    if weights is None and spec.packaged_file is not None:
        return sha256_file(spec.packaged_file)  # a damaged file gets another key, and fails to load
    return sha256_file(resolve_weights(spec.weights, weights))


def _cached_engine(
    runtime: str,
    build: Callable[[], NIMA],
    identity: Callable[[], dict[str, Any]],
    name: str,
    provenance: dict[str, Any],
    device: str | None,
    *,
    auto: bool,
    packaged_onnx: Callable[[], Path | None] | None = None,
) -> Any | None:
    """The ONNX runtime on the model's ONNX file: the packaged one, else the cached export of the
    model ``build`` makes, exported on a miss.

    ``packaged_onnx`` gives the packaged file once it matches its pinned sha256, or None (no such
    file, or a damaged one, which it reports): then the export cache is used as for any model.
    None when ``auto`` and nothing is cached and this installation cannot export (no onnx package).
    """
    from beholder.onnx_cache import OnnxCache, source_key
    from beholder.runtimes import exporter_available

    packaged = packaged_onnx() if packaged_onnx is not None else None
    if packaged is not None:
        log.debug("using the packaged ONNX file %s", packaged)
        # Not probed: the file is the one pinned in the registry, and its hash was just checked.
        return ONNX_RUNTIMES[runtime].from_file(packaged, device, verify=False)
    cache = OnnxCache()
    key = source_key(**identity(), opset=DEFAULT_OPSET, output="probabilities")
    path = cache.lookup(key)
    if path is not None:
        return ONNX_RUNTIMES[runtime].from_file(path, device, verify=False)  # its hash was just checked
    if auto and not exporter_available():
        log.info("runtime auto -> torch: nothing cached, and exporting to ONNX needs the 'onnx' extra")
        return None
    from beholder.export import export_onnx

    model = build()
    # A warning so that the CLI shows it: the first run pauses for the export, once.
    log.warning(
        "first use of %s with runtime %s: exporting it to ONNX once (later runs load it from %s)",
        name,
        runtime,
        cache.folder,
    )
    path = cache.store(
        key, lambda target: export_onnx(model, target, name=name, provenance=provenance, check=False)
    )
    # Not probed (verify=False): the file is our own export, and an untrained model, which gives every
    # image the same scores, must still run; users' files are probed (Scorer.from_onnx).
    return ONNX_RUNTIMES[runtime].from_file(path, device, verify=False)

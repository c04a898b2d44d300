"""Score images: files, bytes or PIL images -> rating distributions, means and standard deviations.

The :class:`Scorer` decodes and preprocesses images on a thread pool while the model runs on the
previous batch (PIL releases the GIL while decoding and resizing, so threads overlap with the
model without the start-up cost of worker processes). Inputs that fail to load get a per-item
error; the rest are still scored, in input order.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from beholder.errors import ConfigError, ImageLoadError
from beholder.imageio import DEFAULT_MAX_PIXELS, ImageSource, describe, is_image_file, open_image
from beholder.metrics import distribution_mean, distribution_std
from beholder.models import DEFAULT_MODEL, NIMA, create_model, load_checkpoint
from beholder.preprocessing import Preprocessing, build_eval_transform
from beholder.runtimes import create_runtime

log = logging.getLogger(__name__)


@dataclass
class ScoreResult:
    """The score of one input, or why it could not be scored."""

    path: str
    mean: Optional[float] = None
    std: Optional[float] = None
    distribution: Optional[List[float]] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> Dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "mean": self.mean, "std": self.std, "distribution": self.distribution}


def expand_inputs(patterns: Sequence[Union[str, os.PathLike]]) -> List[str]:
    """Expand files, directories (recursively, image suffixes only, sorted) and glob patterns.

    A path that does not exist and matches nothing is kept as is, so that it is reported as a
    per-file error ("file not found") rather than silently dropped.
    """
    paths: List[str] = []
    for pattern in patterns:
        text = os.fspath(pattern)
        path = Path(text)
        if path.is_dir():
            paths.extend(
                str(p)
                for p in sorted(path.rglob("*"))
                if p.is_file() and is_image_file(p) and not p.name.startswith(".")
            )
        elif path.exists():
            paths.append(text)
        elif glob.has_magic(text):
            paths.extend(sorted(p for p in glob.glob(text, recursive=True) if Path(p).is_file()))
        else:
            paths.append(text)
    return paths


class Scorer:
    """Turns images into NIMA rating distributions with a model and its declared preprocessing.

    Args:
        model: a NIMA model (its ``preprocessing`` decides how images are resized and normalised).
        runtime: 'torch' (default), or another name registered in :mod:`beholder.runtimes`.
        device: torch device for the torch runtime (default: CUDA if available, else CPU).
        batch_size: images per model call.
        workers: decoding threads (default: twice the CPUs, at most 8; decoding competes with the
            model for cores, and more threads give it a fairer share).
        max_pixels: refuse larger images (decompression-bomb guard).
    """

    def __init__(
        self,
        model: NIMA,
        *,
        runtime: str = "torch",
        device: Optional[str] = None,
        batch_size: int = 32,
        workers: Optional[int] = None,
        max_pixels: Optional[int] = DEFAULT_MAX_PIXELS,
        name: Optional[str] = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.model = model
        self.name = name or "custom"
        self.preprocessing: Preprocessing = model.preprocessing
        self.transform = build_eval_transform(self.preprocessing)
        self.draft_size = self.preprocessing.draft_size()
        self.batch_size = batch_size
        self.workers = max(1, workers if workers is not None else min(8, 2 * (os.cpu_count() or 1)))
        self.max_pixels = max_pixels
        self.runtime_name = runtime
        self.runtime = create_runtime(runtime, model, device=device)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, name: str = DEFAULT_MODEL, *, weights: Optional[Union[str, os.PathLike]] = None, **kwargs: Any
    ) -> "Scorer":
        """A scorer for a registered model (see ``beholder models``); downloads weights if needed."""
        return cls(create_model(name, weights=weights), name=name, **kwargs)

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], **kwargs: Any) -> "Scorer":
        """A scorer for a checkpoint written by ``beholder train`` (it carries its preprocessing)."""
        model, _ = load_checkpoint(path)
        return cls(model, name=str(path), **kwargs)

    # -- scoring -----------------------------------------------------------------------------

    def preprocess(self, source: ImageSource, name: Optional[str] = None) -> torch.Tensor:
        """Load one image and turn it into the model's (3, H, W) input tensor."""
        image = open_image(source, name=name, max_pixels=self.max_pixels, draft_size=self.draft_size)
        return self.transform(image)

    def predict(self, batch: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) preprocessed batch -> (B, 10) probabilities."""
        return self.runtime(batch)

    def iter_score(
        self,
        inputs: Iterable[ImageSource],
        *,
        names: Optional[Sequence[str]] = None,
        progress: bool = False,
    ) -> Iterator[ScoreResult]:
        """Score inputs lazily, yielding one :class:`ScoreResult` per input, in input order."""
        items = inputs if isinstance(inputs, Sequence) else list(inputs)
        labels = iter(names) if names is not None else None
        bar = tqdm(total=len(items), unit="img", desc="scoring", disable=not progress, leave=False)
        pending: Deque[Tuple[str, Future]] = deque()
        window = 2 * self.batch_size  # decode ahead by one batch while the model runs
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
                yield from self._score_chunk(chunk)
                bar.update(len(chunk))

    def score(
        self,
        inputs: Union[ImageSource, Iterable[ImageSource]],
        *,
        names: Optional[Sequence[str]] = None,
        progress: bool = False,
    ) -> List[ScoreResult]:
        """Score one input or many (paths, bytes, file objects or PIL images); see :meth:`iter_score`."""
        if isinstance(inputs, (str, os.PathLike, bytes)) or not isinstance(inputs, Iterable):
            inputs = [inputs]
        return list(self.iter_score(list(inputs), names=names, progress=progress))

    def _score_chunk(self, chunk: List[Tuple[str, Future]]) -> Iterator[ScoreResult]:
        tensors: List[torch.Tensor] = []
        results: List[ScoreResult] = []
        for label, future in chunk:
            try:
                tensors.append(future.result())
                results.append(ScoreResult(path=label))
            except ImageLoadError as exc:
                results.append(ScoreResult(path=label, error=exc.problem))
            except Exception as exc:  # a transform failure on one odd image must not lose the batch
                log.debug("preprocessing failed for %s", label, exc_info=True)
                results.append(ScoreResult(path=label, error=f"{type(exc).__name__}: {exc}"))
        if tensors:
            fill_scores(results, self.predict(torch.stack(tensors)))
        yield from results


def fill_scores(results: Sequence[ScoreResult], probabilities: np.ndarray) -> None:
    """Give the results without an error, in order, their row of (n, 10) ``probabilities``."""
    means, stds = distribution_mean(probabilities), distribution_std(probabilities)
    rows = iter(range(len(probabilities)))
    for result in results:
        if result.error is None:
            i = next(rows)
            result.mean, result.std = float(means[i]), float(stds[i])
            result.distribution = [float(v) for v in probabilities[i]]

"""The loops of one epoch: :func:`train_one_epoch`, :func:`validate` and the phase-1 feature cache.

Plain functions in the torchvision-references style. Each takes a
:class:`~beholder.training.distributed.Placement` (or just a device) for where tensors go, and
stops at the first non-finite loss with :class:`TrainingDivergedError` before the optimizer steps.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from beholder import metrics
from beholder.data.dataset import RatingDataset, seed_worker
from beholder.errors import ConfigError
from beholder.files import progress_bar
from beholder.models.checkpoint import unwrap
from beholder.training.distributed import Placement, all_gather_rows, all_reduce_sum
from beholder.training.phases import set_train_mode

log = logging.getLogger(__name__)


class TrainingDivergedError(ConfigError):
    """Training cannot go on: the loss became NaN or infinite (stopped before the optimizer stepped
    on it), or the model collapsed to one prediction for every image (see :func:`check_validation`)."""


def _stop_if_not_finite(loss: torch.Tensor, distributed: bool, where: str, step: int) -> float:
    """``loss.item()``, or TrainingDivergedError (on every process, if any of them saw it) when not finite."""
    value = loss.item()
    bad = not math.isfinite(value)
    if distributed:  # one process alone stopping would leave the others waiting in all_reduce
        bad = all_reduce_sum([float(bad)], loss.device)[0] > 0
    if bad:
        raise TrainingDivergedError(
            f"{where}, step {step + 1}: the training loss is {value} (not finite); {_STOPPED}"
        )
    return value


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    placement: Placement | torch.device,
    *,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    distributed: bool = False,
    progress: bool = False,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader`` ((images (B,3,H,W), targets (B,10)) batches); the scheduler steps per batch.

    Returns ``loss`` (mean EMD over the epoch's images, all processes), ``images`` (all
    processes), ``seconds``, ``images_per_second`` and ``lr`` (the head's rate at the last step).
    """
    place = Placement.of(placement)
    set_train_mode(model)
    start = time.perf_counter()
    total_loss, count, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
    bar = progress_bar(progress, iterable=loader, desc=desc, leave=False)
    for step, (images, targets) in enumerate(bar):
        images, targets = place.images(images), place.tensor(targets)  # (B, 3, H, W), (B, 10)
        with place.autocast():
            logits = model(images)  # (B, 10)
        loss = loss_fn(logits, targets)  # float32 inside EMDLoss
        value = _stop_if_not_finite(loss, distributed, desc, step)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        total_loss += value * images.shape[0]
        count += images.shape[0]
        bar.set_postfix(loss=f"{total_loss / count:.4f}", refresh=False)
    bar.close()
    return _epoch_stats(total_loss, count, start, lr, distributed, place.device)


def _epoch_stats(
    total_loss: float, count: int, start: float, lr: float, distributed: bool, device: torch.device
) -> dict[str, float]:
    """Loss summed over all ranks, throughput and last learning rate of one training epoch."""
    if distributed:
        total_loss, count = all_reduce_sum([total_loss, count], device)
    seconds = time.perf_counter() - start
    return {
        "loss": total_loss / max(count, 1),
        "images": int(count),
        "seconds": seconds,
        "images_per_second": count / seconds if seconds > 0 else math.nan,
        "lr": lr,
    }


@torch.inference_mode()
def predict(
    model: nn.Module,
    loader: Iterable,
    placement: Placement | torch.device,
    *,
    progress: bool = False,
    desc: str = "val",
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted probabilities (N, 10), targets (N, 10)) over ``loader``, model in eval mode."""
    place = Placement.of(placement)
    model.eval()
    predictions, truths = [], []
    for images, targets in progress_bar(progress, iterable=loader, desc=desc, leave=False):
        with place.autocast():
            logits = model(place.images(images))  # (B, 10)
        predictions.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        truths.append(targets.numpy())
    if not predictions:
        return np.zeros((0, 10), np.float32), np.zeros((0, 10), np.float32)
    return np.concatenate(predictions), np.concatenate(truths)


def validate(
    model: nn.Module,
    loader: Iterable,
    placement: Placement | torch.device,
    *,
    distributed: bool = False,
    progress: bool = False,
    desc: str = "val",
) -> dict[str, float]:
    """Validation metrics: ``loss`` (the EMD loss, = ``emd``), ``srcc_mean``, ``accuracy`` (at 5), ...

    Under DDP each process predicts its shard and the predictions are gathered, so every
    process returns the metrics of the whole split.
    """
    predicted, truth = predict(unwrap(model), loader, placement, progress=progress, desc=desc)
    if distributed:
        predicted, truth = all_gather_rows(predicted, truth)
    result = metrics.summarize(truth, predicted)
    result["loss"] = result["emd"]
    # How far apart the predicted means are: 0 when the model gives every image the same answer.
    result["predicted_mean_std"] = (
        float(np.std(metrics.distribution_mean(predicted))) if len(predicted) else 0.0
    )
    return result


def check_validation(result: dict[str, float], where: str) -> None:
    """Raise TrainingDivergedError when :func:`validate`'s ``result`` shows a diverged model.

    That is a non-finite validation loss, or the very same predicted mean for every image: a
    model whose weights blew up (a learning rate of 1e9, say) saturates its softmax, keeps a
    finite loss, and makes the rank correlation undefined (NaN) from then on.
    """
    if not math.isfinite(result["loss"]):
        raise TrainingDivergedError(
            f"{where}: the validation loss is {result['loss']} (not finite); {_STOPPED}"
        )
    if result["n"] > 1 and result["predicted_mean_std"] == 0.0:
        raise TrainingDivergedError(
            f"{where}: the model predicts the same distribution for all {result['n']} validation images "
            f"(it has collapsed, and val SRCC is undefined); {_STOPPED}"
        )


_STOPPED = "training stopped. A learning rate that is too high is the usual cause"


# ---------------------------------------------------------------------------------------------
# phase-1 feature cache


class FeatureCache:
    """Backbone features of training images, computed once each with the evaluation transform.

    A head-only phase leaves the backbone untouched, so its pooled features (B, C) can be
    computed once and the head trained on them: far fewer FLOPs per epoch, but every epoch sees
    the same centre crop of each image (no random crops or flips), which is weaker augmentation.
    """

    def __init__(self, dataset: RatingDataset, num_features: int):
        self.dataset = dataset
        self.features = torch.zeros(len(dataset), num_features)  # (N, C), CPU
        self.present = torch.zeros(len(dataset), dtype=torch.bool)

    def ensure(
        self,
        model: nn.Module,
        indices: Sequence[int],
        placement: Placement | torch.device,
        *,
        batch_size: int,
        num_workers: int = 0,
        progress: bool = False,
    ) -> int:
        """Compute the features of ``indices`` not cached yet; returns how many were computed."""
        place = Placement.of(placement)
        missing = sorted({int(i) for i in indices if not self.present[int(i)]})
        if not missing:
            return 0
        loader = DataLoader(
            self.dataset,
            batch_size=batch_size,
            sampler=missing,
            num_workers=num_workers,
            worker_init_fn=seed_worker,
            generator=torch.Generator(),  # leaves the global RNG (the head's dropout) alone
        )
        backbone = unwrap(model).backbone
        backbone.eval()
        rows = torch.as_tensor(missing)
        offset = 0
        with torch.inference_mode():
            for images, _ in progress_bar(progress, iterable=loader, desc="features", leave=False):
                with place.autocast():
                    features = backbone(place.images(images))  # (B, C)
                batch_rows = rows[offset : offset + images.shape[0]]
                self.features[batch_rows] = features.float().cpu()
                self.present[batch_rows] = True
                offset += images.shape[0]
        return len(missing)


def train_head_one_epoch(
    head: nn.Module,
    cache: FeatureCache,
    batches: Sequence[Sequence[int]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    placement: Placement | torch.device,
    *,
    scheduler: Any | None = None,
    distributed: bool = False,
    progress: bool = False,
    desc: str = "train (cached features)",
) -> dict[str, float]:
    """A head-only epoch on cached features: the head (Dropout + Linear) on (B, C) feature batches.

    Under DDP pass the head wrapped in DistributedDataParallel: it averages the gradients.
    """
    place = Placement.of(placement)
    head.train()
    start = time.perf_counter()
    total_loss, count, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
    bar = progress_bar(progress, iterable=batches, desc=desc, leave=False)
    for step, batch in enumerate(bar):
        rows = torch.as_tensor(list(batch))
        features = place.tensor(cache.features[rows])  # (B, C)
        targets = place.tensor(torch.from_numpy(cache.dataset.targets[rows.numpy()]))  # (B, 10)
        loss = loss_fn(head(features), targets)
        value = _stop_if_not_finite(loss, distributed, desc, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        total_loss += value * len(rows)
        count += len(rows)
        bar.set_postfix(loss=f"{total_loss / count:.4f}", refresh=False)
    bar.close()
    return _epoch_stats(total_loss, count, start, lr, distributed, place.device)

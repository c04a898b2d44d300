"""Two-phase NIMA transfer learning with the EMD loss (Talebi & Milanfar, 2018, Sec. 3).

Phase 1 trains the new head (Dropout + Linear) on a frozen ImageNet backbone; phase 2 trains all
layers with a lower learning rate. Plain functions in the torchvision-references style:
:func:`train_one_epoch`, :func:`evaluate`, and :func:`fit`, which runs a whole training into a
run directory::

    RUN_DIR/config.yaml                     resolved configuration
    RUN_DIR/history.csv                     one row per epoch (HISTORY_COLUMNS)
    RUN_DIR/checkpoints/{last,best}.pt      self-describing (beholder.models.checkpoint)
    RUN_DIR/training.png                    loss curves, phase boundary marked
    RUN_DIR/summary.json                    best epoch, best val EMD, time, images seen

Reproducibility: each epoch seeds torch, numpy and random from ``(seed, epoch, rank)``, draws its
undersampled subset from ``(seed, epoch)`` and seeds each image's augmentation from
``(seed, epoch, image)``; ``last.pt`` carries model, optimizer, scheduler, grad scaler and RNG
states, so ``fit(..., resume=True)`` continues as if never stopped.

Distributed: under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) the model is wrapped in
DistributedDataParallel (gloo on CPU, nccl on CUDA), batches are split by a DistributedSampler,
validation predictions are gathered, and only rank 0 writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from beholder import __version__, metrics
from beholder.config import TrainConfig, config_from_dict, diff_configs, save_config, to_dict
from beholder.data.dataset import EpochSampler, RatingDataset, read_manifest, seed_worker, undersample
from beholder.errors import ConfigError
from beholder.losses import EMDLoss
from beholder.models.checkpoint import read_checkpoint, save_checkpoint
from beholder.models.nima import NIMA, Architecture, build_nima
from beholder.preprocessing import build_eval_transform, build_train_transform

log = logging.getLogger(__name__)

HISTORY_COLUMNS = [
    "epoch",
    "phase",
    "lr",
    "train_loss",
    "val_loss",
    "val_srcc",
    "val_accuracy",
    "seconds",
    "images_per_second",
]

#: Config keys that may change between a run and its resume: they do not change the results.
RUNTIME_KEYS = frozenset({"device", "data.num_workers", "progress", "distributed_backend"})


# ---------------------------------------------------------------------------------------------
# distributed setup


@dataclass
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(backend: str = "auto") -> DistInfo:
    """Join the process group torchrun describes in ``RANK``/``WORLD_SIZE``; a no-op without them.

    ``backend='auto'`` picks nccl when CUDA is available and gloo otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    owns = not dist.is_initialized()
    if owns:
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    log.info("distributed: rank %d of %d (local rank %d, %s)", rank, world_size, local_rank, backend)
    return DistInfo(rank, world_size, local_rank, backend, owns)


def teardown_distributed(info: DistInfo) -> None:
    """Leave the process group if :func:`setup_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(spec: str, info: Optional[DistInfo] = None) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    info = info or DistInfo()
    if spec == "auto":
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"config device: {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("config device: CUDA requested but not available")
        if device.index is None:
            device = torch.device(f"cuda:{info.local_rank}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("config device: MPS requested but not available")
    return device


def autocast_dtype(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``amp`` on ``device``, or None for full fp32 (always on CPU/MPS)."""
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    return torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()


def _unwrap(model: nn.Module) -> NIMA:
    return getattr(model, "module", model)


# ---------------------------------------------------------------------------------------------
# model, phases, optimizers


def resolve_backbone_weights(config: TrainConfig) -> Tuple[Optional[Path], bool, Dict[str, Any]]:
    """``model.backbone_weights`` -> (local file or None, timm_pretrained, provenance dict).

    Accepts a registered name (``keras-mobilenet-v1-1.0-imagenet``; resolved through
    ``BEHOLDER_WEIGHTS_PATH``, the cache, then a download), a file path, ``timm`` or None.
    """
    from beholder.models.registry import BACKBONE_WEIGHTS
    from beholder.weights import resolve_weights, sha256_file

    value = config.model.backbone_weights
    if value is None:
        return None, False, {"backbone_weights": None}
    if value == "timm":
        if not config.model.backbone.startswith("timm/"):
            raise ConfigError("model.backbone_weights=timm needs a timm backbone (model.backbone=timm/NAME)")
        return None, True, {"backbone_weights": "timm pretrained"}
    if value in BACKBONE_WEIGHTS:
        spec = BACKBONE_WEIGHTS[value]
        path = resolve_weights(spec)
        return path, False, {"backbone_weights": value, **spec.to_dict()}
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.backbone_weights {value!r} is neither a registered name ({', '.join(BACKBONE_WEIGHTS)}), "
            "'timm', null, nor an existing file"
        )
    return path, False, {"backbone_weights": str(path), "sha256": sha256_file(path)}


def build_model(config: TrainConfig, *, load_weights: bool = True) -> Tuple[NIMA, Dict[str, Any]]:
    """The NIMA model to train and its provenance; preprocessing follows ``config.data``.

    The model's :class:`~beholder.preprocessing.Preprocessing` (saved in every checkpoint) is the
    backbone's default with ``image_size``/``crop``/``interpolation`` from the config, so a
    checkpoint is scored exactly as it was validated (resize, centre crop).
    """
    path, timm_pretrained, provenance = (None, False, {})
    if load_weights:
        path, timm_pretrained, provenance = resolve_backbone_weights(config)
    architecture = Architecture(
        backbone=config.model.backbone, alpha=config.model.alpha, dropout=config.model.dropout
    )
    model = build_nima(architecture, backbone_weights=path, timm_pretrained=timm_pretrained)
    changes: Dict[str, Any] = {}
    if config.data.image_size:
        changes["resize"] = (config.data.image_size, config.data.image_size)
    if config.data.crop:
        changes["crop"] = config.data.crop
    if config.data.interpolation:
        changes["interpolation"] = config.data.interpolation
    model.preprocessing = dataclasses.replace(model.preprocessing, **changes)
    provenance = {"trained_with": f"beholder {__version__} train", **provenance}
    return model, provenance


def freeze_backbone(model: nn.Module) -> None:
    """Phase 1: no gradients for the backbone and BatchNorm (the whole backbone) in eval mode.

    ``model.train()`` resets the mode, so :func:`train_one_epoch` re-applies it every epoch.
    """
    nima = _unwrap(model)
    for parameter in nima.backbone.parameters():
        parameter.requires_grad_(False)
    nima.backbone.eval()


def unfreeze_backbone(model: nn.Module) -> None:
    """Phase 2: the backbone trains again (gradients; BatchNorm follows the model's mode)."""
    nima = _unwrap(model)
    for parameter in nima.backbone.parameters():
        parameter.requires_grad_(True)
    nima.backbone.train(nima.training)


def backbone_frozen(model: nn.Module) -> bool:
    return not any(p.requires_grad for p in _unwrap(model).backbone.parameters())


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, keeping a frozen backbone (and its BatchNorm statistics) in eval mode."""
    model.train()
    if backbone_frozen(model):
        _unwrap(model).backbone.eval()


class KerasTimeDecay:
    """Keras' legacy ``decay``: the rate factor ``1 / (1 + decay * step)`` for LambdaLR, per batch."""

    def __init__(self, decay: float):
        self.decay = decay

    def __call__(self, step: int) -> float:
        return 1.0 / (1.0 + self.decay * step)


def build_optimizer(config: TrainConfig, model: nn.Module, phase: int) -> torch.optim.Optimizer:
    """Adam(W) over the trainable parameters only: the head in phase 1; head + backbone in phase 2.

    In phase 2 the backbone may have its own rate (``phase2.backbone_lr``).
    """
    nima = _unwrap(model)
    settings = config.phase1 if phase == 1 else config.phase2
    groups: List[Dict[str, Any]] = [
        {"params": list(nima.head.parameters()), "lr": settings.lr, "name": "head"}
    ]
    if phase == 2:
        groups.append(
            {
                "params": [p for p in nima.backbone.parameters() if p.requires_grad],
                "lr": settings.backbone_lr or settings.lr,
                "name": "backbone",
            }
        )
    opt = config.optimizer
    cls = torch.optim.Adam if opt.name == "adam" else torch.optim.AdamW
    return cls(
        groups, lr=settings.lr, betas=(opt.beta1, opt.beta2), eps=opt.eps, weight_decay=opt.weight_decay
    )


def build_scheduler(optimizer: torch.optim.Optimizer, decay: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Keras-style time decay, stepped after every batch (a constant rate when ``decay`` is 0)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, KerasTimeDecay(decay))


# ---------------------------------------------------------------------------------------------
# one epoch


def _all_reduce_sum(values: Sequence[float], device: torch.device) -> List[float]:
    tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    *,
    scheduler: Optional[Any] = None,
    scaler: Optional[torch.amp.GradScaler] = None,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    distributed: bool = False,
    progress: bool = False,
    desc: str = "train",
) -> Dict[str, float]:
    """One pass over ``loader`` ((images (B,3,H,W), targets (B,10)) batches); the scheduler steps per batch.

    Returns ``loss`` (mean EMD over the epoch's images, all processes), ``images`` (all
    processes), ``seconds``, ``images_per_second`` and ``lr`` (the head's rate at the last step).
    """
    set_train_mode(model)
    start = time.perf_counter()
    total_loss, count, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
    bar = tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for images, targets in bar:
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)  # (B, 10)
        with _autocast(device, amp_dtype):
            logits = model(images)  # (B, 10)
        loss = loss_fn(logits, targets)  # float32 inside EMDLoss
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
        batch = images.shape[0]
        total_loss += loss.item() * batch
        count += batch
        bar.set_postfix(loss=f"{total_loss / count:.4f}", refresh=False)
    bar.close()
    return _epoch_stats(total_loss, count, start, lr, distributed, device)


def _epoch_stats(
    total_loss: float, count: int, start: float, lr: float, distributed: bool, device: torch.device
) -> Dict[str, float]:
    """Loss summed over all ranks, throughput and last learning rate of one training epoch."""
    if distributed:
        total_loss, count = _all_reduce_sum([total_loss, count], device)
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
    device: torch.device,
    *,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    progress: bool = False,
    desc: str = "val",
) -> Tuple[np.ndarray, np.ndarray]:
    """(predicted probabilities (N, 10), targets (N, 10)) over ``loader``, model in eval mode."""
    model.eval()
    predictions, truths = [], []
    for images, targets in tqdm(loader, desc=desc, disable=not progress, leave=False, dynamic_ncols=True):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp_dtype):
            logits = model(images)  # (B, 10)
        predictions.append(torch.softmax(logits.float(), dim=-1).cpu().numpy())
        truths.append(targets.numpy())
    if not predictions:
        return np.zeros((0, 10), np.float32), np.zeros((0, 10), np.float32)
    return np.concatenate(predictions), np.concatenate(truths)


def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    *,
    amp_dtype: Optional[torch.dtype] = None,
    channels_last: bool = False,
    distributed: bool = False,
    progress: bool = False,
    desc: str = "val",
) -> Dict[str, float]:
    """Validation metrics: ``loss`` (the EMD loss, = ``emd``), ``srcc_mean``, ``accuracy`` (at 5), ...

    Under DDP each process predicts its shard and the predictions are gathered, so every
    process returns the metrics of the whole split.
    """
    predicted, truth = predict(
        _unwrap(model),
        loader,
        device,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        progress=progress,
        desc=desc,
    )
    if distributed:
        gathered: List[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (predicted, truth))
        predicted = np.concatenate([p for p, _ in gathered])
        truth = np.concatenate([t for _, t in gathered])
    result = metrics.summarize(truth, predicted)
    result["loss"] = result["emd"]
    return result


# ---------------------------------------------------------------------------------------------
# phase-1 feature cache


class FeatureCache:
    """Backbone features of training images, computed once each with the evaluation transform.

    Phase 1 leaves the backbone untouched, so its pooled features (B, C) can be computed once and
    the head trained on them: far fewer FLOPs per epoch, but every epoch sees the same centre
    crop of each image (no random crops or flips), which is weaker augmentation.
    """

    def __init__(self, dataset: RatingDataset, num_features: int):
        self.dataset = dataset
        self.features = torch.zeros(len(dataset), num_features)  # (N, C), CPU
        self.present = torch.zeros(len(dataset), dtype=torch.bool)

    def ensure(
        self,
        model: nn.Module,
        indices: Sequence[int],
        device: torch.device,
        *,
        batch_size: int,
        num_workers: int = 0,
        amp_dtype: Optional[torch.dtype] = None,
        channels_last: bool = False,
        progress: bool = False,
    ) -> int:
        """Compute the features of ``indices`` not cached yet; returns how many were computed."""
        missing = [int(i) for i in indices if not self.present[int(i)]]
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
        backbone = _unwrap(model).backbone
        backbone.eval()
        rows = torch.as_tensor(missing)
        offset = 0
        with torch.inference_mode():
            for images, _ in tqdm(
                loader, desc="features", disable=not progress, leave=False, dynamic_ncols=True
            ):
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with _autocast(device, amp_dtype):
                    features = backbone(images)  # (B, C)
                batch_rows = rows[offset : offset + images.shape[0]]
                self.features[batch_rows] = features.float().cpu()
                self.present[batch_rows] = True
                offset += images.shape[0]
        return len(missing)


def train_head_one_epoch(
    model: nn.Module,
    cache: FeatureCache,
    batches: Sequence[Sequence[int]],
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    device: torch.device,
    *,
    scheduler: Optional[Any] = None,
    distributed: bool = False,
    progress: bool = False,
    desc: str = "train (cached features)",
) -> Dict[str, float]:
    """Phase 1 on cached features: the head (Dropout + Linear) on (B, C) feature batches.

    Under DDP the head's gradients are averaged across processes by hand (the DDP wrapper is
    bypassed, since the backbone is not run).
    """
    head = _unwrap(model).head
    head.train()
    world = dist.get_world_size() if distributed else 1
    start = time.perf_counter()
    total_loss, count, lr = 0.0, 0, optimizer.param_groups[0]["lr"]
    bar = tqdm(batches, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for batch in bar:
        rows = torch.as_tensor(list(batch))
        features = cache.features[rows].to(device, non_blocking=True)  # (B, C)
        targets = torch.from_numpy(cache.dataset.targets[rows.numpy()]).to(device)  # (B, 10)
        loss = loss_fn(head(features), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if distributed:
            for parameter in head.parameters():
                dist.all_reduce(parameter.grad)
                parameter.grad /= world
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(rows)
        count += len(rows)
        bar.set_postfix(loss=f"{total_loss / count:.4f}", refresh=False)
    bar.close()
    return _epoch_stats(total_loss, count, start, lr, distributed, device)


# ---------------------------------------------------------------------------------------------
# seeding and RNG state


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A 32-bit seed for one epoch of one process."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """Every RNG's state as plain data (tensors, lists, numbers), so checkpoints load with weights_only."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": [version, list(python_state), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    version, python_state, gauss_next = state["python"]
    random.setstate((version, tuple(python_state), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# artefacts


def write_history(rows: Sequence[Dict[str, Any]], path: Union[str, Path]) -> None:
    """history.csv, written whole each time (temporary file, then rename)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)


def plot_history(rows: Sequence[Dict[str, Any]], path: Union[str, Path]) -> None:
    """training.png: train/val EMD per epoch and val SRCC, with the phase 1 -> 2 boundary marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend state in a library

    epochs = [r["epoch"] for r in rows]
    figure = Figure(figsize=(9, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, srcc_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train EMD")
    loss_axes.plot(epochs, [r["val_loss"] for r in rows], "s-", label="val EMD")
    loss_axes.set(xlabel="epoch", ylabel="EMD loss", title="Loss")
    srcc_axes.plot(epochs, [r["val_srcc"] for r in rows], "s-", color="tab:green", label="val SRCC")
    srcc_axes.set(xlabel="epoch", ylabel="SRCC (mean score)", title="Validation SRCC")
    phase1 = [r["epoch"] for r in rows if r["phase"] == 1]
    phase2 = [r["epoch"] for r in rows if r["phase"] == 2]
    if phase1 and phase2:
        boundary = max(phase1) + 0.5
        for axes in (loss_axes, srcc_axes):
            axes.axvline(boundary, color="grey", linestyle="--", linewidth=1, label="phase 1 | phase 2")
    for axes in (loss_axes, srcc_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    temporary = Path(path).with_name(Path(path).name + ".tmp.png")
    figure.savefig(temporary)
    temporary.replace(path)


def _write_json(data: Dict[str, Any], path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    temporary.replace(path)


def _format_row(row: Dict[str, Any], total_epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{total_epochs} phase {row['phase']}: lr {row['lr']:.2e} "
        f"train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
        f"val_srcc {row['val_srcc']:.3f} val_acc {row['val_accuracy']:.3f} "
        f"({row['seconds']:.1f} s, {row['images_per_second']:.1f} img/s)"
    )


# ---------------------------------------------------------------------------------------------
# fit


def fit(
    config: TrainConfig,
    data_dir: Union[str, Path],
    out_dir: Union[str, Path],
    resume: bool = False,
    *,
    on_epoch_end: Optional[Callable[[Dict[str, Any], str], None]] = None,
) -> Dict[str, Any]:
    """Train NIMA in two phases on a prepared directory and write the run directory.

    Args:
        config: the resolved configuration (see :mod:`beholder.config`).
        data_dir: a directory prepared by ``beholder ava prepare`` (``manifest.parquet``).
        out_dir: the run directory (created).
        resume: continue from ``out_dir/checkpoints/last.pt``; the config must match the run's
            except for :data:`RUNTIME_KEYS`.
        on_epoch_end: called on rank 0 with each history row and its one-line summary.

    Returns:
        the summary (also written to ``summary.json``).
    """
    config.validate()
    info = setup_distributed(config.distributed_backend)
    try:
        return _fit(config, Path(data_dir), Path(out_dir), resume, info, on_epoch_end)
    finally:
        teardown_distributed(info)


def _check_resume(config: TrainConfig, payload: Dict[str, Any], path: Path) -> None:
    saved = config_from_dict(payload.get("config") or {})
    changed = {k: v for k, v in diff_configs(saved, config).items() if k not in RUNTIME_KEYS}
    if changed:
        listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(f"--resume with a config that differs from the run in {path}: {listing}")


def _fit(
    config: TrainConfig,
    data_dir: Path,
    out_dir: Path,
    resume: bool,
    info: DistInfo,
    on_epoch_end: Optional[Callable[[Dict[str, Any], str], None]],
) -> Dict[str, Any]:
    checkpoints = out_dir / "checkpoints"
    last_path, best_path = checkpoints / "last.pt", checkpoints / "best.pt"
    payload: Optional[Dict[str, Any]] = None
    if resume:
        if not last_path.is_file():
            raise ConfigError(f"nothing to resume: {last_path} does not exist")
        payload = read_checkpoint(last_path)
        _check_resume(config, payload, last_path)
    elif last_path.exists():
        raise ConfigError(f"{out_dir} already holds a run ({last_path}); use --resume or another --out")

    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(config.seed)
    device = resolve_device(config.device, info)
    amp_dtype = autocast_dtype(config.amp, device)
    channels_last = config.channels_last
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
    progress = config.progress and info.is_main

    # Data: the manifest is trusted; empty splits are a configuration problem.
    manifest = read_manifest(data_dir)
    train_frame = manifest[manifest["split"] == config.data.train_split]
    val_frame = manifest[manifest["split"] == config.data.val_split]
    for name, frame in ((config.data.train_split, train_frame), (config.data.val_split, val_frame)):
        if frame.empty:
            raise ConfigError(f"{data_dir}: the manifest has no {name!r} rows")

    # Model: rank 0 resolves (maybe downloads) the starting weights first, the others then find them.
    if info.distributed and not info.is_main:
        dist.barrier()
    model, provenance = build_model(config, load_weights=payload is None)
    if info.distributed and info.is_main:
        dist.barrier()
    if payload is not None:
        model.load_state_dict(payload["model"])
        provenance = payload.get("provenance", provenance)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    pre = model.preprocessing

    train_set = RatingDataset(
        train_frame,
        build_train_transform(pre, hflip=config.data.hflip),
        use_cache=config.data.use_cache,
        draft_size=pre.draft_size(),
    )
    val_set = RatingDataset(
        val_frame, build_eval_transform(pre), use_cache=config.data.use_cache, draft_size=pre.draft_size()
    )
    workers = config.data.num_workers
    loader_options: Dict[str, Any] = {
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "worker_init_fn": seed_worker,
        "pin_memory": device.type == "cuda",
    }
    sampler = EpochSampler(
        len(train_set),
        seed=config.seed,
        num_replicas=info.world_size,
        rank=info.rank,
        batch_size=config.batch_size,
    )
    # Each loader draws its workers' base seed from its own generator, not the global RNG: a
    # persistent loader draws only when first iterated, so a resumed run would otherwise shift
    # the dropout masks of the epoch it resumes at.
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(config.seed),
        **loader_options,
    )
    val_shard = list(range(info.rank, len(val_set), info.world_size))
    val_loader = DataLoader(
        val_set,
        batch_size=config.eval_batch_size or config.batch_size,
        sampler=val_shard,
        generator=torch.Generator().manual_seed(config.seed),
        **loader_options,
    )
    cache = None
    if config.feature_cache and config.phase1.epochs > 0:
        cache_set = RatingDataset(
            train_frame,
            build_eval_transform(pre),
            use_cache=config.data.use_cache,
            draft_size=pre.draft_size(),
        )
        cache = FeatureCache(cache_set, model.num_features)

    # State, fresh or from last.pt.
    history: List[Dict[str, Any]] = []
    best_emd, best_epoch, images_seen, done = math.inf, None, 0, 0
    if payload is not None:
        history = list(payload.get("history", []))
        best_emd = payload.get("best_val_emd", math.inf)
        best_epoch = payload.get("best_epoch")
        images_seen = payload.get("images_seen", 0)
        done = int(payload["epoch"])
        if payload.get("rng") is not None:
            set_rng_state(payload["rng"])
        log.info("resuming %s after epoch %d (phase %s)", out_dir, done, payload.get("phase"))

    if info.is_main:
        checkpoints.mkdir(parents=True, exist_ok=True)
        for stale in checkpoints.glob("*.tmp"):  # left by a run killed while saving
            stale.unlink()
        save_config(config, out_dir / "config.yaml")
        if history:
            write_history(history, out_dir / "history.csv")

    epochs1, total = config.phase1.epochs, config.phase1.epochs + config.phase2.epochs
    loss_fn = EMDLoss()
    train_model: nn.Module = model
    optimizer = scheduler = scaler = None
    current_phase = None
    for epoch in range(done + 1, total + 1):
        phase = 1 if epoch <= epochs1 else 2
        settings = config.phase1 if phase == 1 else config.phase2
        if phase != current_phase:
            (freeze_backbone if phase == 1 else unfreeze_backbone)(model)
            train_model = model
            if info.distributed:
                train_model = nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None
                )
            optimizer = build_optimizer(config, model, phase)
            scheduler = build_scheduler(optimizer, settings.decay)
            scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
            if payload is not None and payload.get("phase") == phase and current_phase is None:
                # Continuing inside the phase the checkpoint was written in: same optimizer steps.
                optimizer.load_state_dict(payload["optimizer"])
                scheduler.load_state_dict(payload["scheduler"])
                if payload.get("scaler"):
                    scaler.load_state_dict(payload["scaler"])
            current_phase = phase
            log.info(
                "phase %d: %s, lr %g, decay %g, %d trainable parameters",
                phase,
                "head only (backbone frozen)" if phase == 1 else "all layers",
                settings.lr,
                settings.decay,
                sum(p.numel() for p in model.parameters() if p.requires_grad),
            )

        started = time.perf_counter()
        seed_everything(epoch_seed(config.seed, epoch, info.rank))
        subset_seed = [config.seed, epoch if config.data.resample_each_epoch else 0]
        subset = undersample(
            train_set.means, config.data.undersample_per_bin, config.data.bins, seed=subset_seed
        )
        sampler.set_epoch(epoch, subset)
        desc = f"epoch {epoch}/{total} phase {phase}"
        if phase == 1 and cache is not None:
            batches = [[i for i, _ in chunk] for chunk in _chunks(list(sampler), config.batch_size)]
            cache.ensure(
                model,
                [i for batch in batches for i in batch],
                device,
                batch_size=config.eval_batch_size or config.batch_size,
                num_workers=workers,
                amp_dtype=amp_dtype,
                channels_last=channels_last,
                progress=progress,
            )
            stats = train_head_one_epoch(
                model,
                cache,
                batches,
                optimizer,
                loss_fn,
                device,
                scheduler=scheduler,
                distributed=info.distributed,
                progress=progress,
                desc=desc + " (cached features)",
            )
            # Extraction belongs to this epoch's cost.
            stats["seconds"] = time.perf_counter() - started
            stats["images_per_second"] = stats["images"] / stats["seconds"]
        else:
            stats = train_one_epoch(
                train_model,
                train_loader,
                optimizer,
                loss_fn,
                device,
                scheduler=scheduler,
                scaler=scaler,
                amp_dtype=amp_dtype,
                channels_last=channels_last,
                distributed=info.distributed,
                progress=progress,
                desc=desc,
            )
        if info.distributed:
            # DDP syncs buffers at the start of each forward, so after the last step every rank
            # holds its own BatchNorm statistics; validate (and save) rank 0's everywhere.
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        val = evaluate(
            model,
            val_loader,
            device,
            amp_dtype=amp_dtype,
            channels_last=channels_last,
            distributed=info.distributed,
            progress=progress,
            desc=desc + " val",
        )
        images_seen += stats["images"]
        row = {
            "epoch": epoch,
            "phase": phase,
            "lr": stats["lr"],
            "train_loss": stats["loss"],
            "val_loss": val["loss"],
            "val_srcc": val["srcc_mean"],
            "val_accuracy": val["accuracy"],
            "seconds": time.perf_counter() - started,
            "images_per_second": stats["images_per_second"],
        }
        history.append(row)
        improved = val["emd"] < best_emd
        if improved:
            best_emd, best_epoch = val["emd"], epoch
        line = _format_row(row, total) + (" *best*" if improved else "")
        log.info("%s", line)
        if info.is_main:
            common = {
                "provenance": provenance,
                "epoch": epoch,
                "phase": phase,
                "config": to_dict(config),
                "metrics": val,
                "history": history,
                "best_val_emd": best_emd,
                "best_epoch": best_epoch,
                "images_seen": images_seen,
            }
            if improved:
                save_checkpoint(best_path, model, **common)
            # last.pt before history.csv: a history row on disk always has its checkpoint.
            save_checkpoint(
                last_path,
                model,
                **common,
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(),
                scaler=scaler.state_dict() if scaler.is_enabled() else None,
                rng=rng_state(),
                sampler={"seed": config.seed, "next_epoch": epoch + 1},
            )
            write_history(history, out_dir / "history.csv")
            plot_history(history, out_dir / "training.png")
            log.debug("rank %d wrote checkpoints and history for epoch %d", info.rank, epoch)
            if on_epoch_end is not None:
                on_epoch_end(row, line)

    best_row = next((r for r in history if r["epoch"] == best_epoch), None)
    summary = {
        "best_epoch": best_epoch,
        "best_val_emd": best_emd if best_epoch is not None else None,
        "best_val_srcc": best_row["val_srcc"] if best_row else None,
        "best_val_accuracy": best_row["val_accuracy"] if best_row else None,
        "epochs": len(history),
        "total_seconds": float(sum(r["seconds"] for r in history)),
        "images_seen": int(images_seen),
        "world_size": info.world_size,
        "device": str(device),
        "best_checkpoint": str(best_path),
        "last_checkpoint": str(last_path),
    }
    if info.is_main:
        if history and not (out_dir / "training.png").is_file():
            plot_history(history, out_dir / "training.png")
        _write_json(summary, out_dir / "summary.json")
        log.debug("rank %d wrote summary.json", info.rank)
    return summary


def _chunks(items: List[Tuple[int, int]], size: int) -> List[List[Tuple[int, int]]]:
    return [items[i : i + size] for i in range(0, len(items), size)]

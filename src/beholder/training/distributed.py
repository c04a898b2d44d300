"""Processes and devices: the torchrun process group, the device, and where tensors go.

:class:`Placement` is the one home of "move a batch to the device, in channels_last, under
autocast"; every loop (training, validation, feature extraction) goes through it.
"""

from __future__ import annotations

import logging
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from beholder.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
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


def resolve_device(spec: str, info: DistInfo | None = None) -> torch.device:
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


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or None for full fp32 (always on CPU/MPS)."""
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "bf16" or (amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


@dataclass(frozen=True)
class Placement:
    """Where a loop runs: the device, the autocast dtype (None: fp32) and the memory format."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @classmethod
    def of(cls, where: Placement | torch.device | str) -> Placement:
        """A Placement as given, or fp32 NCHW on a device."""
        return where if isinstance(where, Placement) else cls(torch.device(where))

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images on the device, in the model's memory format."""
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def tensor(self, values: torch.Tensor) -> torch.Tensor:
        return values.to(self.device, non_blocking=True)

    def autocast(self) -> AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def place_model(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over every process."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather_rows(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array concatenated over every process, in rank order."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, arrays)
    return tuple(np.concatenate([part[i] for part in gathered]) for i in range(len(arrays)))


def broadcast_buffers(model: nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm statistics)."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel, which averages its gradients over the processes."""
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None
    )

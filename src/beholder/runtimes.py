"""Inference runtimes: run a NIMA model on a preprocessed batch and return probabilities.

A runtime is a callable ``(batch: float32 array or tensor of shape (B, 3, H, W)) -> (B, 10)
probabilities as a numpy array``. The scorer, the evaluator and the HTTP service only talk to
this interface, so a faster engine slots in without touching them.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable, Dict, Optional, Union

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
    """
    fused = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = [name for name, _ in module.named_children()]
        for first, second in zip(names, names[1:]):
            conv, bn = getattr(module, first), getattr(module, second)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
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


#: name -> factory(model, device) for every runtime this installation supports.
RUNTIMES: Dict[str, Callable[..., Callable[[Batch], np.ndarray]]] = {"torch": TorchRuntime}


def available_runtimes() -> list:
    return list(RUNTIMES)


def create_runtime(name: str, model: NIMA, device: Optional[str] = None) -> Callable[[Batch], np.ndarray]:
    """Build the runtime called ``name`` ('torch', or any registered in :data:`RUNTIMES`)."""
    if name == "auto":
        name = "torch"
    if name not in RUNTIMES:
        raise ConfigError(f"unknown or unavailable runtime {name!r}; available here: {', '.join(RUNTIMES)}")
    return RUNTIMES[name](model, device=device)

"""Training phases as data: what each one trains, with which optimizer and schedule.

A phase is a :class:`~beholder.config.PhaseConfig` (``trainable: head|all``, epochs, rates) and
its place in the run (:class:`Phase`); nothing turns a phase number back into its config.
``trainable: head`` freezes the backbone (NIMA's transfer learning, phase 1); ``all`` trains
every layer, with an optional separate backbone rate (phase 2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from beholder.models.checkpoint import unwrap

if TYPE_CHECKING:
    from beholder.config import OptimizerConfig, PhaseConfig, TrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    """One phase of a run: ``number`` (1-based, as in history.csv), its config section and epochs."""

    number: int
    name: str
    settings: PhaseConfig
    first_epoch: int
    last_epoch: int

    @property
    def head_only(self) -> bool:
        return self.settings.trainable == "head"

    def describe(self) -> str:
        return "head only (backbone frozen)" if self.head_only else "all layers"


def plan_phases(config: TrainConfig) -> list[Phase]:
    """The run's phases with their epoch ranges; phases with 0 epochs are left out."""
    phases, done = [], 0
    for number, (name, settings) in enumerate(config.phases(), 1):
        if settings.epochs > 0:
            phases.append(Phase(number, name, settings, done + 1, done + settings.epochs))
        done += settings.epochs
    return phases


def freeze_backbone(model: nn.Module) -> None:
    """No gradients for the backbone and BatchNorm (the whole backbone) in eval mode.

    ``model.train()`` resets the mode, so :func:`set_train_mode` re-applies it every epoch.
    """
    nima = unwrap(model)
    for parameter in nima.backbone.parameters():
        parameter.requires_grad_(False)
    nima.backbone.eval()


def unfreeze_backbone(model: nn.Module) -> None:
    """The backbone trains again (gradients; BatchNorm follows the model's mode)."""
    nima = unwrap(model)
    for parameter in nima.backbone.parameters():
        parameter.requires_grad_(True)
    nima.backbone.train(nima.training)


def set_trainable(model: nn.Module, settings: PhaseConfig) -> None:
    """Freeze or unfreeze the backbone as the phase's ``trainable`` says."""
    (freeze_backbone if settings.trainable == "head" else unfreeze_backbone)(model)


def backbone_frozen(model: nn.Module) -> bool:
    return not any(p.requires_grad for p in unwrap(model).backbone.parameters())


def set_train_mode(model: nn.Module) -> None:
    """``model.train()``, keeping a frozen backbone (and its BatchNorm statistics) in eval mode."""
    model.train()
    if backbone_frozen(model):
        unwrap(model).backbone.eval()


class KerasTimeDecay:
    """Keras' legacy ``decay``: the rate factor ``1 / (1 + decay * step)`` for LambdaLR, per batch."""

    def __init__(self, decay: float):
        self.decay = decay

    def __call__(self, step: int) -> float:
        return 1.0 / (1.0 + self.decay * step)


def build_optimizer(
    optimizer: OptimizerConfig, model: nn.Module, settings: PhaseConfig
) -> torch.optim.Optimizer:
    """Adam(W) over the phase's trainable parameters only: the head, plus the backbone for ``all``.

    With ``trainable: all`` the backbone may have its own rate (``backbone_lr``).
    """
    nima = unwrap(model)
    groups: list[dict[str, Any]] = [
        {"params": list(nima.head.parameters()), "lr": settings.lr, "name": "head"}
    ]
    if settings.trainable == "all":
        groups.append(
            {
                "params": [p for p in nima.backbone.parameters() if p.requires_grad],
                "lr": settings.backbone_lr or settings.lr,
                "name": "backbone",
            }
        )
    cls = torch.optim.Adam if optimizer.name == "adam" else torch.optim.AdamW
    return cls(
        groups,
        lr=settings.lr,
        betas=(optimizer.beta1, optimizer.beta2),
        eps=optimizer.eps,
        weight_decay=optimizer.weight_decay,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, decay: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Keras-style time decay, stepped after every batch (a constant rate when ``decay`` is 0)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, KerasTimeDecay(decay))

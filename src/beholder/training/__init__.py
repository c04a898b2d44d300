"""Two-phase NIMA transfer learning with the EMD loss (Talebi & Milanfar, 2018, Sec. 3).

Phase 1 trains the new head (Dropout + Linear) on a frozen ImageNet backbone; phase 2 trains all
layers with a lower learning rate. The modules, top down:

* :mod:`~beholder.training.fit`: :func:`fit`, a whole run into a run directory, phase by phase;
* :mod:`~beholder.training.setup`: the run's files, the resume checks and its data;
* :mod:`~beholder.training.phases`: what a phase trains (``trainable: head|all``), optimizer, schedule;
* :mod:`~beholder.training.loop`: :func:`train_one_epoch`, :func:`validate`, the feature cache;
* :mod:`~beholder.training.distributed`: process group, device, :class:`Placement`;
* :mod:`~beholder.training.artifacts`: history.csv, training.png, summary.json;
* :mod:`~beholder.training.rng`: seeds and RNG states as plain data.

The model itself comes from :func:`beholder.models.factory.create_training_model`.
"""

from __future__ import annotations

from beholder.training.artifacts import HISTORY_COLUMNS, plot_history, write_history
from beholder.training.distributed import (
    DistInfo,
    Placement,
    autocast_dtype,
    resolve_device,
    setup_distributed,
    teardown_distributed,
)
from beholder.training.fit import fit
from beholder.training.loop import (
    FeatureCache,
    TrainingDivergedError,
    predict,
    train_head_one_epoch,
    train_one_epoch,
    validate,
)
from beholder.training.phases import (
    build_optimizer,
    build_scheduler,
    freeze_backbone,
    plan_phases,
    set_trainable,
    unfreeze_backbone,
)
from beholder.training.rng import rng_state, set_rng_state
from beholder.training.setup import RUNTIME_KEYS

__all__ = [
    "HISTORY_COLUMNS",
    "RUNTIME_KEYS",
    "DistInfo",
    "FeatureCache",
    "Placement",
    "TrainingDivergedError",
    "autocast_dtype",
    "build_optimizer",
    "build_scheduler",
    "fit",
    "freeze_backbone",
    "plan_phases",
    "plot_history",
    "predict",
    "resolve_device",
    "rng_state",
    "set_rng_state",
    "set_trainable",
    "setup_distributed",
    "teardown_distributed",
    "train_head_one_epoch",
    "train_one_epoch",
    "unfreeze_backbone",
    "validate",
    "write_history",
]

"""Beholder: quantify image aesthetics with NIMA (Talebi & Milanfar, 2018).

Public API (imported lazily so that ``import beholder`` stays cheap and torch-free)::

    from beholder import Scorer, create_model, list_models
    scorer = Scorer.from_pretrained("nima-mobilenet-idealo")
    results = scorer.score(["photo.jpg"])
"""

from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "Scorer": "beholder.inference",
    "ScoreResult": "beholder.inference",
    "create_model": "beholder.models",
    "list_models": "beholder.models",
    "score_table": "beholder.tables",
}

__all__ = ["ScoreResult", "Scorer", "__version__", "create_model", "list_models", "score_table"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'beholder' has no attribute {name!r}")

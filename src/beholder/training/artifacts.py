"""What a run leaves besides checkpoints: history.csv, training.png, summary.json, the epoch line."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from beholder.files import PathLike, atomic_write, write_json

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


def write_history(rows: Sequence[dict[str, Any]], path: PathLike) -> None:
    """history.csv, written whole each time (atomically)."""

    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def plot_history(rows: Sequence[dict[str, Any]], path: PathLike) -> None:
    """training.png: train/val EMD per epoch and val SRCC, with each phase boundary marked."""
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
    for before, after in zip(rows, rows[1:]):
        if before["phase"] != after["phase"]:
            for axes in (loss_axes, srcc_axes):
                axes.axvline(
                    before["epoch"] + 0.5,
                    color="grey",
                    linestyle="--",
                    linewidth=1,
                    label=f"phase {before['phase']} | phase {after['phase']}",
                )
    for axes in (loss_axes, srcc_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(path, lambda temporary: figure.savefig(temporary, format="png"))


def format_row(row: dict[str, Any], total_epochs: int) -> str:
    """The one line printed per epoch."""
    return (
        f"epoch {row['epoch']}/{total_epochs} phase {row['phase']}: lr {row['lr']:.2e} "
        f"train_loss {row['train_loss']:.4f} val_loss {row['val_loss']:.4f} "
        f"val_srcc {row['val_srcc']:.3f} val_acc {row['val_accuracy']:.3f} "
        f"({row['seconds']:.1f} s, {row['images_per_second']:.1f} img/s)"
    )


def build_summary(
    history: Sequence[dict[str, Any]],
    *,
    best_epoch: int | None,
    best_val_emd: float,
    images_seen: int,
    world_size: int,
    device: str,
    checkpoints: dict[str, Path],
    provenance: dict[str, Any],
    stopped: str | None = None,
) -> dict[str, Any]:
    """summary.json's content. ``best_checkpoint`` is None while no epoch has a best.pt."""
    best_row = next((r for r in history if r["epoch"] == best_epoch), None)
    return {
        "best_epoch": best_epoch,
        "best_val_emd": best_val_emd if best_epoch is not None else None,
        "best_val_srcc": best_row["val_srcc"] if best_row else None,
        "best_val_accuracy": best_row["val_accuracy"] if best_row else None,
        "epochs": len(history),
        "total_seconds": float(sum(r["seconds"] for r in history)),
        "images_seen": int(images_seen),
        "world_size": world_size,
        "device": device,
        "best_checkpoint": str(checkpoints["best"]) if best_epoch is not None else None,
        "last_checkpoint": str(checkpoints["last"]) if history else None,
        "init": provenance.get("init"),
        "stopped": stopped,
    }


def write_summary(summary: dict[str, Any], path: PathLike) -> None:
    """summary.json as strict JSON (a NaN or infinity becomes null)."""
    write_json(path, summary)

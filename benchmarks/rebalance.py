"""Does oversampling rare ratings (``data.rebalance``) help the tails? Same recipe with and without it.

A generated set whose quality signal is known (a photo-like scene's overall brightness sets its
true mean score) and whose true means follow AVA's shape: quartiles near 4.9 / 5.4 / 5.9 and thin
tails (a few percent below 3.5 and above 7.2; a Student t with 4 degrees of freedom). Each
photo's ratings are a discretised Gaussian (std 1.4) around its mean. It is prepared with
``beholder prepare --labels`` (a CSV with p1..p10 and a split column), then trained twice per seed
with the same budget: ``nima_mobilenet`` and ``nima_mobilenet_rebalanced``, both shrunk to a
width-0.25 MobileNet on small images. The table gives, on held-out test photos, the MAE of the
mean score in each tail and in the middle, and the overall EMD; then the mean over seeds of
"rebalanced minus plain" (negative: rebalancing is better).

    BEHOLDER_WEIGHTS_PATH=DIR_WITH_mobilenet_2_5_224_tf_no_top.h5 python benchmarks/rebalance.py
    python benchmarks/rebalance.py --seeds 0 1 2 --train 1600 --phase2 2     # a larger budget
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from beholder import metrics
from beholder.config import load_config
from beholder.data.dataset import RatingDataset
from beholder.data.labels import prepare_labels
from beholder.data.manifest import load_manifest
from beholder.models import load_checkpoint
from beholder.preprocessing import build_eval_transform
from beholder.ratings import SCORES
from beholder.synthetic import photo_like
from beholder.training import fit, predict

#: The seed's rates are set for 14 epochs of 14,000 images; this budget is a few hundred steps, so
#: both recipes get higher rates and a lighter dropout (the same for both: only rebalancing differs).
BUDGET_RATES = ["model.dropout=0.3", "phase1.lr=0.01", "phase2.lr=3e-4"]
RATING_STD = 1.4
TAILS = (3.5, 7.2)


def true_means(n: int, rng: np.random.Generator) -> np.ndarray:
    """AVA-shaped means: 5.4 + 0.675 * t(4) (quartiles 4.9 / 5.4 / 5.9), within 1.5 .. 9.3."""
    return np.clip(5.4 + 0.675 * rng.standard_t(4, size=n), 1.5, 9.3)


def rating_distribution(mean: float) -> np.ndarray:
    p = np.exp(-0.5 * ((SCORES - mean) / RATING_STD) ** 2)
    return p / p.sum()


def scene(mean: float, size: int, seed: int) -> Image.Image:
    """A photo-like scene whose average grey level encodes ``mean`` (texture and edges kept)."""
    pixels = np.asarray(photo_like(size, size, seed), dtype=np.float32)
    level = 25 + 200 * (mean - 1.5) / 7.8
    pixels = (pixels - pixels.mean()) * 0.5 + level
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_dataset(root: Path, counts: dict[str, int], size: int, cache: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (root / "photos").mkdir(parents=True, exist_ok=True)
    rows, index = [], 0
    for split, count in counts.items():
        for mean in true_means(count, rng):
            name = f"photos/{index:05d}.jpg"
            scene(float(mean), size, seed * 100_000 + index).save(root / name, quality=92)
            p = rating_distribution(float(mean))
            rows.append({"path": name, "split": split, **{f"p{i}": p[i - 1] for i in range(1, 11)}})
            index += 1
    pd.DataFrame(rows).to_csv(root / "ratings.csv", index=False)
    prepare_labels(root / "ratings.csv", root / "prepared", image_size=cache, min_side=16, progress=False)
    return root / "prepared"


def held_out_figures(checkpoint: Path, prepared: Path) -> dict[str, float]:
    model, _ = load_checkpoint(checkpoint)
    test = load_manifest(prepared, splits="test")
    dataset = RatingDataset(test, build_eval_transform(model.preprocessing))
    predicted, truth = predict(model, DataLoader(dataset, batch_size=64), torch.device("cpu"))
    true_mean = metrics.distribution_mean(truth)
    tails = metrics.tail_metrics(true_mean, predicted, true_p=truth, thresholds=TAILS)
    return {
        "emd": metrics.emd(truth, predicted),
        "mae": float(np.abs(metrics.distribution_mean(predicted) - true_mean).mean()),
        **{f"{name}_mae": values["mae_mean"] for name, values in tails.items()},
        **{f"{name}_n": values["n"] for name, values in tails.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--train", type=int, default=1600, help="training photos")
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--test", type=int, default=1000, help="held-out photos (tails: a few % each)")
    parser.add_argument("--size", type=int, default=64, help="side of the generated photos")
    parser.add_argument("--image-size", type=int, default=40, help="cache and training resize")
    parser.add_argument("--crop", type=int, default=32)
    parser.add_argument("--per-bin", type=int, default=150, help="data.undersample_per_bin (AVA: 2000)")
    parser.add_argument("--phase1", type=int, default=8, help="head-only epochs (feature cache)")
    parser.add_argument("--phase2", type=int, default=3, help="all-layer epochs")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", type=Path, default=None, help="keep the data and runs here")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides for both recipes (defaults: the tiny budget's rates, see BUDGET_RATES)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="rebalance-"))
    started = time.perf_counter()
    prepared = make_dataset(
        work / "data", {"train": args.train, "val": args.val, "test": args.test}, args.size, args.image_size
    )
    budget = [
        "model.alpha=0.25",
        "model.backbone_weights=keras-mobilenet-v1-0.25-imagenet",
        f"data.image_size={args.image_size}",
        f"data.crop={args.crop}",
        f"data.undersample_per_bin={args.per_bin}",
        "data.num_workers=0",
        "feature_cache=true",
        f"phase1.epochs={args.phase1}",
        f"phase2.epochs={args.phase2}",
        "batch_size=32",
        "device=cpu",
        "progress=false",
        *BUDGET_RATES,
        *args.overrides,
    ]
    print(
        f"data: {args.train} train / {args.val} val / {args.test} test photos ({time.perf_counter() - started:.0f} s)"
    )
    results = []
    for seed in args.seeds:
        for recipe in ("nima_mobilenet", "nima_mobilenet_rebalanced"):
            run_started = time.perf_counter()
            config = load_config(recipe, [*budget, f"seed={seed}"])
            summary = fit(config, prepared, work / f"{recipe}-{seed}")
            figures = held_out_figures(Path(summary["best_checkpoint"]), prepared)
            results.append(
                {"seed": seed, "recipe": recipe, **figures, "seconds": time.perf_counter() - run_started}
            )
            print(
                f"seed {seed} {recipe:<26} lower-tail MAE {figures['lower_mae']:.3f} (n {figures['lower_n']})  "
                f"middle {figures['middle_mae']:.3f}  upper-tail {figures['upper_mae']:.3f} (n {figures['upper_n']})  "
                f"MAE {figures['mae']:.3f}  EMD {figures['emd']:.4f}  ({results[-1]['seconds']:.0f} s)",
                flush=True,
            )
    table = pd.DataFrame(results)
    wide = table.pivot(index="seed", columns="recipe")
    print("\nrebalanced minus plain, per seed (negative: rebalancing is better)")
    for column in ("lower_mae", "upper_mae", "middle_mae", "mae", "emd"):
        delta = wide[column]["nima_mobilenet_rebalanced"] - wide[column]["nima_mobilenet"]
        cells = "  ".join(f"{value:+.4f}" for value in delta)
        print(f"  {column:<11} {cells}   mean {delta.mean():+.4f}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; runs in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training throughput of Beholder's NIMA loops, each against a baseline measured in the same run.

1. Phase 2 (all layers): ``beholder.training.train_one_epoch`` as ``beholder train`` runs it
   (channels_last, plus bf16/fp16 autocast on CUDA) against a plain fp32, NCHW loop.
2. Phase 1 (head only): the frozen-backbone loop against the feature cache (backbone features
   computed once, then head steps on cached features), as a speed-up over ``--epochs`` phase-1
   epochs including the one-time extraction.

Inputs are random tensors already in memory: this measures the model, not JPEG decoding.

    python benchmarks/train_throughput.py                      # small CPU defaults
    python benchmarks/train_throughput.py --device cuda --batch-size 96 --steps 50
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from beholder.config import TrainConfig, load_config
from beholder.losses import EMDLoss
from beholder.models.factory import create_training_model
from beholder.training import (
    FeatureCache,
    Placement,
    autocast_dtype,
    build_optimizer,
    build_scheduler,
    freeze_backbone,
    train_head_one_epoch,
    train_one_epoch,
    unfreeze_backbone,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], None], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def make_batches(batch: int, size: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator) * 2 - 1  # Keras range [-1, 1]
    targets = torch.softmax(torch.randn(batch, 10, generator=generator), dim=-1)  # (B, 10)
    return [(images, targets)] * count


class _Targets(torch.utils.data.Dataset):
    """Stand-in for a RatingDataset: FeatureCache only needs len() and ``targets``."""

    def __init__(self, n: int):
        self.targets = torch.softmax(torch.randn(n, 10), dim=-1).numpy()

    def __len__(self) -> int:
        return len(self.targets)


def _model(args):
    config = load_config(None, [*args.overrides, f"model.alpha={args.alpha}", "model.backbone_weights=null"])
    return config, create_training_model(config, load_weights=False)[0]


def phase2_images_per_second(args, device, *, channels_last: bool, amp_dtype: torch.dtype | None) -> float:
    config, model = _model(args)
    place = Placement(device, amp_dtype, channels_last)
    place.place_model(model)
    unfreeze_backbone(model)
    optimizer = build_optimizer(config.optimizer, model, config.phase2)
    scheduler = build_scheduler(optimizer, config.phase2.decay)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    options = dict(scheduler=scheduler, scaler=scaler)
    warm = make_batches(args.batch_size, args.image_size, args.warmup)
    train_one_epoch(model, warm, optimizer, EMDLoss(), place, **options)
    batches = make_batches(args.batch_size, args.image_size, args.steps)
    seconds = timed(lambda: train_one_epoch(model, batches, optimizer, EMDLoss(), place, **options), device)
    return args.batch_size * args.steps / seconds


def phase1_figures(
    args, device, amp_dtype: torch.dtype | None, channels_last: bool
) -> tuple[float, float, float]:
    """(frozen-backbone loop img/s, feature extraction img/s, cached-feature head steps img/s)."""
    config, model = _model(args)
    place = Placement(device, amp_dtype, channels_last)
    place.place_model(model)
    freeze_backbone(model)
    optimizer = build_optimizer(config.optimizer, model, config.phase1)
    scheduler = build_scheduler(optimizer, 0.0)
    warm = make_batches(args.batch_size, args.image_size, args.warmup)
    train_one_epoch(model, warm, optimizer, EMDLoss(), place, scheduler=scheduler)
    batches = make_batches(args.batch_size, args.image_size, args.steps)
    frozen = (
        args.batch_size
        * args.steps
        / timed(
            lambda: train_one_epoch(model, batches, optimizer, EMDLoss(), place, scheduler=scheduler), device
        )
    )

    def extract() -> None:
        with torch.inference_mode(), place.autocast():
            for images, _ in batches:
                model.backbone(place.images(images))  # (B, C)

    extract()
    extraction = args.batch_size * args.steps / timed(extract, device)

    n = args.batch_size * args.steps
    cache = FeatureCache(_Targets(n), model.num_features)
    cache.features.normal_()
    cache.present[:] = True
    order = np.arange(n)
    head_batches = [order[i : i + args.batch_size].tolist() for i in range(0, n, args.batch_size)]
    train_head_one_epoch(model.head, cache, head_batches, optimizer, EMDLoss(), place, scheduler=scheduler)
    head = n / timed(
        lambda: train_head_one_epoch(
            model.head, cache, head_batches, optimizer, EMDLoss(), place, scheduler=scheduler
        ),
        device,
    )
    return frozen, extraction, head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default: cpu)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--image-size", type=int, default=224, help="input side (the crop)")
    parser.add_argument("--alpha", type=float, default=1.0, help="Keras MobileNet width")
    parser.add_argument("--epochs", type=int, default=5, help="phase-1 epochs for the feature-cache speed-up")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=1, help="best of this many measurements (noisy hosts)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. model.backbone=timm/resnet18",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_dtype = autocast_dtype("auto", device)
    amp_name = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]

    channels_last = TrainConfig().channels_last  # what `beholder train` uses by default
    print(
        f"device {device}, alpha {args.alpha}, {args.image_size} px, batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, {torch.get_num_threads()} threads, "
        f"best of {max(1, args.repeats)}"
    )

    def phase2(last: bool, dtype: torch.dtype | None) -> float:
        runs = [
            phase2_images_per_second(args, device, channels_last=last, amp_dtype=dtype)
            for _ in range(repeats)
        ]
        return max(runs)

    repeats = max(1, args.repeats)
    baseline = phase2(False, None)
    print(f"phase 2 training, baseline fp32 eager NCHW:        {baseline:9.1f} img/s")
    variants = [("channels_last", True, None)]
    if amp_dtype is not None:
        variants += [
            (f"amp {amp_name}", False, amp_dtype),
            (f"channels_last + amp {amp_name}", True, amp_dtype),
        ]
    for name, last, dtype in variants:
        ips = phase2(last, dtype)
        default = " (beholder's default here)" if (last, dtype) == (channels_last, amp_dtype) else ""
        print(f"phase 2 training, {name:<32} {ips:9.1f} img/s  x{ips / baseline:.2f}{default}")
    if (channels_last, amp_dtype) == (False, None):
        print("  (beholder's default here is the baseline: fp32, NCHW)")
    runs = [phase1_figures(args, device, amp_dtype, channels_last) for _ in range(repeats)]
    frozen, extraction, head = (max(figures) for figures in zip(*runs))
    per_epoch_plain = 1.0 / frozen  # seconds per image per epoch
    with_cache = (1.0 / extraction + args.epochs / head) / args.epochs
    print(f"phase 1 training, baseline frozen-backbone loop:   {frozen:9.1f} img/s")
    print(f"phase 1 feature cache: extraction {extraction:.1f} img/s once, head steps {head:.1f} img/s")
    print(
        f"phase 1 feature-cache speed-up over {args.epochs} epochs (extraction included): "
        f"x{per_epoch_plain / with_cache:.2f} ({1 / with_cache:.1f} img/s per epoch on average)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

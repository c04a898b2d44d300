"""The Earth Mover's Distance loss of NIMA (Talebi & Milanfar, 2018, Eq. 1), with r = 2.

For ordered classes (scores 1..10) with equal spacing, EMD is a distance between the cumulative
distributions: ``EMD(p, q) = (mean_k |CDF_p(k) - CDF_q(k)|^r)^(1/r)``. It is computed per sample and
then averaged over the batch; taking the root after averaging over the batch would be a different
(and smaller) quantity.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def emd(p: torch.Tensor, q: torch.Tensor, r: float = 2.0) -> torch.Tensor:
    """Per-sample EMD between probability distributions.

    Args:
        p, q: (B, K) probabilities over K ordered bins (rows sum to 1).
        r: the norm (2 in the paper).
    Returns:
        (B,) distances.
    """
    if p.shape != q.shape:
        raise ValueError(f"shape mismatch: {tuple(p.shape)} vs {tuple(q.shape)}")
    cdf_diff = torch.cumsum(p, dim=-1) - torch.cumsum(q, dim=-1)  # (B, K)
    return cdf_diff.abs().pow(r).mean(dim=-1).pow(1.0 / r)  # (B,)


class EMDLoss(nn.Module):
    """EMD between ``softmax(logits)`` and target distributions, averaged over the batch.

    Args:
        r: the norm (2 in the paper).
    Forward:
        logits: (B, K) raw model outputs. target: (B, K) probabilities.
    Returns:
        scalar loss.
    """

    def __init__(self, r: float = 2.0):
        super().__init__()
        self.r = r

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float32 softmax: under autocast, fp16 cumulative sums lose the small differences EMD measures.
        probabilities = F.softmax(logits.float(), dim=-1)  # (B, K)
        return emd(probabilities, target.float(), r=self.r).mean()

"""Class-balanced cross-entropy of the source segmentation heads.

See docs/implementation-notes.md, section 5.1 (#segmentation-loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["balanced_cross_entropy"]


def balanced_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Average, over the classes present in ``target``, of the per-class mean cross-entropy.

    The authors' code ("BalancedBCELoss") is a softmax CE with weights 1 / (N_c + 1e-6) recomputed from each
    batch's label map; PyTorch's weighted mean makes that equal (up to the 1e-6) to this quantity, which
    is computed exactly here. Classes absent from the batch get no weight; rare classes are strongly
    up-weighted. Vectorised with ``scatter_add`` (no boolean indexing, no host synchronisation).

    Args:
        logits: B x K x H x W unnormalised scores.
        target: B x H x W class indices in [0, K).
    """
    if logits.dim() != target.dim() + 1 or logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    k = logits.shape[1]
    ce = F.cross_entropy(logits.float(), target, reduction="none").flatten()
    idx = target.flatten()
    sums = torch.zeros(k, dtype=ce.dtype, device=ce.device).scatter_add_(0, idx, ce)
    counts = torch.zeros(k, dtype=ce.dtype, device=ce.device).scatter_add_(0, idx, torch.ones_like(ce))
    present = (counts > 0).to(ce.dtype)
    per_class = sums / counts.clamp_min(1.0)
    return (per_class * present).sum() / present.sum().clamp_min(1.0)

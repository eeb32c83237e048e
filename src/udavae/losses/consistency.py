"""Consistency between the predictions on two views of the same crops (GIN-IPA, Ouyang et al., IEEE TMI 2023).

GIN-IPA asks the segmenter to give the same class probabilities on a random-convolution (GIN) view and on an
interventional (IPA) view of a crop. We use the symmetric Kullback-Leibler divergence
``(KL(p || q) + KL(q || p)) / 2`` per pixel, averaged over pixels and crops; it is 0 exactly when both views get
the same probabilities.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["symmetric_kl"]


def symmetric_kl(logits_a: Tensor, logits_b: Tensor) -> Tensor:
    """Mean per-pixel symmetric KL divergence between ``softmax(logits_a)`` and ``softmax(logits_b)`` (B x K x ...)."""
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"views differ in shape: {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    la, lb = F.log_softmax(logits_a.float(), dim=1), F.log_softmax(logits_b.float(), dim=1)
    pa, pb = la.exp(), lb.exp()
    return 0.5 * ((pa * (la - lb)).sum(dim=1) + (pb * (lb - la)).sum(dim=1)).mean()

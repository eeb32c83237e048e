"""Binary cross-entropy reconstruction loss (Lu et al., CVPRW 2022, eq. 6); images are in [0, 1].

See docs/implementation-notes.md, sections 4 (#reconstruction) and 5.2 (#reconstruction-kl).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["reconstruction_bce"]


def reconstruction_bce(logits: Tensor, image: Tensor) -> Tensor:
    """Mean-over-pixels BCE between ``sigmoid(logits)`` and the image in [0, 1], computed from the logits.

    The decoders return logits and this loss applies the sigmoid itself (``binary_cross_entropy_with_logits``
    in float32), because a sigmoid evaluated in bfloat16 rounds to exactly 1.0 for inputs above about 6:
    a BCE on such a probability has an infinite ``1 / (1 - r)`` in its backward pass and turns the whole
    step's gradient into NaN. On logits the loss and its gradient ``sigmoid(l) - x`` are finite in any
    precision. In float32 the value equals ``F.binary_cross_entropy(sigmoid(logits), image)`` up to
    rounding (that function additionally clamps its log terms at -100, reached only for |logit| > 100).
    """
    if logits.shape != image.shape:
        raise ValueError(f"reconstruction {tuple(logits.shape)} and image {tuple(image.shape)} differ in shape")
    return F.binary_cross_entropy_with_logits(logits.float(), image.float())

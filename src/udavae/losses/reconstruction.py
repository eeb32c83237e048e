"""Binary cross-entropy reconstruction loss (deck eq. 6); images are in [0, 1]."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["reconstruction_bce"]

_LOG_FLOOR = -100.0  # PyTorch's binary_cross_entropy clamps log terms here, so does this


def reconstruction_bce(recon: Tensor, image: Tensor) -> Tensor:
    """Mean-over-pixels BCE between a sigmoid reconstruction and the image, both in [0, 1].

    Written out (with PyTorch's log clamp at -100) instead of calling ``F.binary_cross_entropy``, which
    refuses to run inside a CUDA autocast region; inputs are cast to float32 first, so the value equals
    ``F.binary_cross_entropy(recon, image)`` and is safe under any autocast setting.
    """
    if recon.shape != image.shape:
        raise ValueError(f"reconstruction {tuple(recon.shape)} and image {tuple(image.shape)} differ in shape")
    r = recon.float()
    x = image.float()
    log_r = torch.log(r).clamp_min(_LOG_FLOOR)
    log_1mr = torch.log1p(-r).clamp_min(_LOG_FLOOR)
    return -(x * log_r + (1.0 - x) * log_1mr).mean()

"""KL divergence of the diagonal Gaussian posteriors to N(0, I) (deck eq. 5)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["kl_divergence"]


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """Mean over all elements of 1/2 (mu^2 + sigma^2 - log sigma^2 - 1).

    A mean, not a sum over latent dimensions, as the reference code; the KL weight absorbs the scale.
    Computed in float32 so it is safe under autocast.
    """
    mu = mu.float()
    logvar = logvar.float()
    return 0.5 * torch.mean(mu.pow(2) + logvar.exp() - logvar - 1.0)

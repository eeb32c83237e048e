"""SLAug's saliency-balancing fusion (Su et al., AAAI 2023): the gradient of the segmentation loss with respect
to the global view decides, region by region, how much of the global (GLA) and of the class-level (LLA) view
the training image takes.

``saliency_map``: per pixel, the root mean square over channels of the input gradient; averaged on a coarse
``grid x grid`` grid, brought back to the crop size by bilinear interpolation (the public code smooths with a
quadratic B-spline kernel first; bilinear interpolation of the coarse grid is our simpler smooth upsampling)
and rescaled to [0, 1] per crop. ``fuse``: ``gla * s + lla * (1 - s)``. Salient regions (where the network is
most sensitive) keep the milder global view; the others take the stronger class-level one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fuse", "input_gradient", "saliency_map", "training_pass"]


def saliency_map(gradient: Tensor, grid: int = 3, eps: float = 1e-20) -> Tensor:
    """B x C x H x W input gradient -> B x 1 x H x W saliency in [0, 1] (coarse, smooth)."""
    b, _, h, w = gradient.shape
    g = gradient.float().pow(2).mean(dim=1, keepdim=True).sqrt()
    coarse = F.adaptive_avg_pool2d(g, grid)
    s = (
        F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
        if grid > 1
        else coarse.expand(b, 1, h, w)
    )
    flat = s.reshape(b, -1)
    lo, hi = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - lo + eps) / (hi - lo + eps)).reshape(b, 1, h, w)


def fuse(gla: Tensor, lla: Tensor, saliency: Tensor) -> Tensor:
    """Saliency-balanced fusion ``gla * s + lla * (1 - s)``: s = 1 gives ``gla``, s = 0 gives ``lla``."""
    return gla * saliency + lla * (1.0 - saliency)


def input_gradient(net: torch.nn.Module, image: Tensor, label: Tensor) -> Tensor:
    """Gradient of the class-balanced cross-entropy of ``net``'s prediction w.r.t. ``image`` only.

    The network's parameters get no gradient (``torch.autograd.grad`` on the input alone), so this pass does not
    change the method's update; its cost is one forward and one input-only backward pass.
    """
    from udavae.losses import balanced_cross_entropy

    x = image.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = balanced_cross_entropy(net(x).logits, label)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def training_pass(
    net: torch.nn.Module, image: Tensor, loss_fn: Callable[[Any], Tensor]
) -> tuple[Tensor, Tensor, list[Tensor | None]]:
    """One training pass on ``image``: the loss ``loss_fn(net(image))`` and its gradients w.r.t. the image and
    every parameter.

    SLAug's public code trains on the global view in the same backward pass that gives its saliency; this
    returns both gradients (``None`` for a parameter the loss does not reach) and leaves ``.grad`` untouched,
    so the caller decides when the parameter gradients join the update.
    """
    x = image.detach().requires_grad_(True)
    params = [p for p in net.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = loss_fn(net(x))
        grad_x, *grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
    return loss.detach(), grad_x, grads

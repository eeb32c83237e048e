"""GIN-IPA (Ouyang et al., "Causality-inspired Single-source Domain Generalization for Medical Image
Segmentation", IEEE TMI 2023): random shallow convolution networks as intensity/texture augmentation (GIN) and
interventional pseudo-correlation augmentation (IPA), batched on the device.

GIN: every crop gets its own freshly drawn network of ``layers`` convolutions (kernel 1 or 3 at random, weights
and biases ~ N(0, 1), ``channels`` intermediate channels, leaky ReLU 0.2 between layers, one output channel),
run as one grouped convolution over the batch. The output is mixed with the input, ``a * gin + (1 - a) * x``
with ``a ~ U(0, 1)``, and brought back to the input's Frobenius norm, as in the paper; we then min-max rescale
each crop to [0, 1], the range every udavae network reads.

IPA: two GIN views of the same crop blended through a random smooth field ``m`` in [0, 1] (a ``grid x grid``
control grid of uniform values, bicubic upsampling, clipped): ``m * v1 + (1 - m) * v2``. The label is unchanged;
the spurious correlation between local texture and label is broken.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gin_views", "ipa_blend", "random_field", "random_gin"]


def random_gin(x: Tensor, generator: torch.Generator, layers: int = 4, channels: int = 2) -> Tensor:
    """One random-convolution view of each crop of ``x`` (B x 1 x H x W in [0, 1]); same shape, in [0, 1]."""
    b, c, h, w = x.shape
    out = x.reshape(1, b * c, h, w)
    cin = c
    for i in range(layers):
        cout = c if i == layers - 1 else channels
        k = int(torch.randint(0, 2, (1,), generator=generator, device=generator.device).item()) * 2 + 1
        weight = torch.randn(b * cout, cin, k, k, generator=generator, device=x.device, dtype=x.dtype)
        bias = torch.randn(b * cout, generator=generator, device=x.device, dtype=x.dtype)
        out = F.conv2d(out, weight, bias, padding=k // 2, groups=b)
        if i < layers - 1:
            out = F.leaky_relu(out, 0.2)
        cin = cout
    out = out.reshape(b, c, h, w)
    alpha = torch.rand(b, 1, 1, 1, generator=generator, device=x.device, dtype=x.dtype)
    out = alpha * out + (1 - alpha) * x
    norm_in = x.flatten(1).norm(dim=1).view(b, 1, 1, 1)
    out = out / out.flatten(1).norm(dim=1).clamp_min(1e-8).view(b, 1, 1, 1) * norm_in
    flat = out.flatten(1)
    lo, hi = flat.min(dim=1).values.view(b, 1, 1, 1), flat.max(dim=1).values.view(b, 1, 1, 1)
    return (out - lo) / (hi - lo).clamp_min(1e-8)


def random_field(shape: tuple[int, int, int, int], generator: torch.Generator, grid: int = 4) -> Tensor:
    """A smooth random blending field in [0, 1] of ``shape`` (B x 1 x H x W)."""
    b, _, h, w = shape
    control = torch.rand(b, 1, grid, grid, generator=generator, device=generator.device)
    return F.interpolate(control, size=(h, w), mode="bicubic", align_corners=True).clamp(0.0, 1.0)


def ipa_blend(view_a: Tensor, view_b: Tensor, field: Tensor) -> Tensor:
    """IPA: ``field * view_a + (1 - field) * view_b``."""
    return field * view_a + (1.0 - field) * view_b


def gin_views(
    x: Tensor, generator: torch.Generator, layers: int = 4, channels: int = 2, grid: int = 4
) -> tuple[Tensor, Tensor]:
    """A GIN view and an IPA view (two further GIN views blended by a random field) of every crop."""
    first = random_gin(x, generator, layers, channels)
    a, b = random_gin(x, generator, layers, channels), random_gin(x, generator, layers, channels)
    return first, ipa_blend(a, b, random_field(tuple(x.shape), generator, grid).to(x.dtype))

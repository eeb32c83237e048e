"""KL divergence of the diagonal Gaussian posteriors to N(0, I) (Lu et al., CVPRW 2022, eq. 5).

See docs/implementation-notes.md, section 5.2 (#reconstruction-kl).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["kl_divergence"]


#: Elements per chunk of the CPU forward sums: a chunk's float32 temporaries stay in cache (2x faster than
#: whole-tensor passes on the 2-core machine we measured on), and per-chunk sums add up in float64.
CPU_CHUNK = 1 << 18


def _acc(t: Tensor) -> Tensor:
    """Float32 (float64 stays float64, for gradcheck): the precision the sums are taken in."""
    return t if t.dtype == torch.float64 else t.float()


class _KLMean(torch.autograd.Function):
    """Fused KL with its analytic gradient.

    Autograd through the element-wise formula would keep and walk five full-size intermediates per latent
    (about 1 s of a bf16 paper-size step on 2 CPU cores); the gradient is simple enough to write down:
    dKL/dmu = mu / N and dKL/dlogvar = (exp(logvar) - 1) / (2 N).
    """

    @staticmethod
    def forward(ctx: FunctionCtx, mu: Tensor, logvar: Tensor) -> Tensor:
        ctx.save_for_backward(mu, logvar)
        flat_mu, flat_lv = mu.reshape(-1), logvar.reshape(-1)
        n = flat_mu.numel()
        chunk = CPU_CHUNK if mu.device.type == "cpu" else n  # one pass of big kernels on a GPU
        total = torch.zeros((), dtype=torch.float64, device=mu.device)
        for i in range(0, n, chunk):
            m, lv = _acc(flat_mu[i : i + chunk]), _acc(flat_lv[i : i + chunk])
            # exp(lv) - lv - 1 as expm1(lv) - lv: no cancellation for lv near 0
            total += torch.dot(m, m) + torch.sum(torch.expm1(lv).sub_(lv))
        return (0.5 * total / n).to(torch.float64 if mu.dtype == torch.float64 else torch.float32)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        mu, logvar = ctx.saved_tensors  # type: ignore[attr-defined]
        need_mu, need_lv = ctx.needs_input_grad  # type: ignore[attr-defined]
        scale = grad / mu.numel()
        g_mu = mu * scale.to(mu.dtype) if need_mu else None
        # expm1, not exp - 1: in bfloat16 the latter loses every digit for logvar near 0
        g_lv = torch.expm1(logvar).mul_((0.5 * scale).to(logvar.dtype)) if need_lv else None
        return g_mu, g_lv


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """Mean over all elements of 1/2 (mu^2 + sigma^2 - log sigma^2 - 1).

    A mean, not a sum over latent dimensions, as the authors' code; the KL weight absorbs the scale.
    The sums are taken in float32 (a float32 scalar is returned), so it is safe under autocast; the
    gradient comes back in the inputs' dtype.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar shapes differ: {tuple(mu.shape)} vs {tuple(logvar.shape)}")
    if mu.numel() == 0:
        raise ValueError("kl_divergence of an empty tensor")
    return _KLMean.apply(mu, logvar)

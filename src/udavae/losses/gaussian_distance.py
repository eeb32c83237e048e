"""Gaussian-kernel domain distance between the source and target posteriors (Wu & Zhuang, IEEE TMI 2021).

With m = AvgPool(mu) and v = AvgPool(exp(logvar)) / pool^2 (the variance of a mean of pool^2
independent Gaussians), each sample flattened to D dimensions,

    K(p, q) = sum_i sum_j sum_d (v^p_id + v^q_jd)^(-1/2) exp(-(m^p_id - m^q_jd)^2 / (2 (v^p_id + v^q_jd)))
    D = K(a, a) + K(b, b) - 2 K(a, b)

which is sqrt(2 pi) B^2 times the squared L2 distance between the per-dimension marginals of the two
batch mixtures (a V-statistic: self pairs included, no 1/B^2), as the authors' code computes it
(docs/implementation-notes.md, section 6, #gaussian-distance). A naive vectorisation keeps B x B x D
tensors for backward (B = 12, D = 102,400 at 160: 59 M floats per intermediate), so the kernel sums
are computed by a custom autograd function that walks over chunks of rows and accumulates the
analytic gradient during the forward pass; only four B x D gradient buffers are kept for backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["gaussian_kernel_distance", "gaussian_kernel_distance_flat"]

#: Upper bound on the elements of one chunk's c x B x D temporaries.
CHUNK_ELEMENTS = 2**22


def _kernel_sum(
    m_p: Tensor,
    v_p: Tensor,
    m_q: Tensor,
    v_q: Tensor,
    coef: float,
    grads: list[Tensor] | None,
    gp: tuple[int, int],
    gq: tuple[int, int],
) -> Tensor:
    """coef * K(p, q) in float64; if ``grads`` is given, add coef * dK/d(inputs) into it in place.

    ``gp`` / ``gq`` index the (mean, variance) gradient buffers of p and q (they may coincide).
    """
    bq, d = m_q.shape
    step = max(1, CHUNK_ELEMENTS // max(1, bq * d))
    total = torch.zeros((), dtype=torch.float64, device=m_p.device)
    for start in range(0, m_p.shape[0], step):
        stop = min(start + step, m_p.shape[0])
        delta = m_p[start:stop, None, :] - m_q[None]
        inv = 1.0 / (v_p[start:stop, None, :] + v_q[None])
        sq = delta * delta * inv
        k = inv.sqrt() * torch.exp(-0.5 * sq)
        total = total + k.sum(dtype=torch.float64)
        if grads is not None:
            g_delta = -(k * delta * inv)  # dk / d(m_p - m_q)
            g_s = 0.5 * k * (sq - 1.0) * inv  # dk / d(v_p + v_q)
            grads[gp[0]][start:stop] += coef * g_delta.sum(1)
            grads[gp[1]][start:stop] += coef * g_s.sum(1)
            grads[gq[0]] -= coef * g_delta.sum(0)
            grads[gq[1]] += coef * g_s.sum(0)
    return coef * total


def _distance(m_a: Tensor, v_a: Tensor, m_b: Tensor, v_b: Tensor, grads: list[Tensor] | None) -> Tensor:
    """K(a, a) + K(b, b) - 2 K(a, b), accumulating its gradient into ``grads`` when given."""
    total = _kernel_sum(m_a, v_a, m_a, v_a, 1.0, grads, (0, 1), (0, 1))
    total = total + _kernel_sum(m_b, v_b, m_b, v_b, 1.0, grads, (2, 3), (2, 3))
    total = total + _kernel_sum(m_a, v_a, m_b, v_b, -2.0, grads, (0, 1), (2, 3))
    return total.to(m_a.dtype)


class _GaussianKernelDistance(torch.autograd.Function):
    """D(a, b) on pooled, flattened (B x D) means and variances with a chunked analytic gradient."""

    @staticmethod
    def forward(ctx: FunctionCtx, m_a: Tensor, v_a: Tensor, m_b: Tensor, v_b: Tensor) -> Tensor:
        need = any(ctx.needs_input_grad)  # type: ignore[attr-defined]
        grads = [torch.zeros_like(t) for t in (m_a, v_a, m_b, v_b)] if need else None
        value = _distance(m_a, v_a, m_b, v_b, grads)
        if grads is not None:
            ctx.save_for_backward(*grads)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors  # type: ignore[attr-defined]
        return tuple(g * grad_out if need else None for g, need in zip(saved, ctx.needs_input_grad))  # type: ignore[attr-defined]


def _f32(t: Tensor) -> Tensor:
    """Float32, or float64 if already (gradcheck); never a reduced precision."""
    return t if t.dtype == torch.float64 else t.float()


def gaussian_kernel_distance_flat(m_a: Tensor, v_a: Tensor, m_b: Tensor, v_b: Tensor) -> Tensor:
    """D(a, b) on already pooled and flattened means / variances (B_a x D and B_b x D)."""
    if m_a.dim() != 2 or m_a.shape != v_a.shape or m_b.shape != v_b.shape or m_a.shape[1] != m_b.shape[1]:
        raise ValueError(
            f"expected B x D means/variances with the same D, got {tuple(m_a.shape)}, {tuple(v_a.shape)}, "
            f"{tuple(m_b.shape)}, {tuple(v_b.shape)}"
        )
    args = (_f32(m_a), _f32(v_a), _f32(m_b), _f32(v_b))
    if torch.is_grad_enabled() and any(t.requires_grad for t in args):
        return _GaussianKernelDistance.apply(*args)
    return _distance(*args, None)  # no gradient wanted (e.g. under no_grad): skip its accumulation


def gaussian_kernel_distance(mu_a: Tensor, logvar_a: Tensor, mu_b: Tensor, logvar_b: Tensor, pool: int = 4) -> Tensor:
    """Gaussian-kernel distance between two batches of B x C x H x W posteriors (the formula above, exactly).

    Args:
        mu_a / logvar_a: source posterior mean and log-variance.
        mu_b / logvar_b: target posterior mean and log-variance (same C, H, W; batch may differ).
        pool: average-pooling window (and stride) applied before the kernel; H and W must be multiples.

    Returns:
        A scalar float32 tensor (float64 for float64 inputs), safe under autocast.
    """
    if mu_a.shape[1:] != mu_b.shape[1:] or mu_a.shape != logvar_a.shape or mu_b.shape != logvar_b.shape:
        raise ValueError(f"posterior shapes differ: {tuple(mu_a.shape)} vs {tuple(mu_b.shape)}")
    h, w = mu_a.shape[-2:]
    if pool < 1 or h % pool or w % pool:
        raise ValueError(f"latent size {h}x{w} is not divisible by the distance pooling window {pool}")

    def pooled(mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        # Pooled in the inputs' dtype (the pooling accumulates in float32 even for bfloat16) and only then
        # cast: casting the full-size maps first cost about 1 s of a bf16 paper-size CPU step.
        m = _f32(F.avg_pool2d(mu, pool))
        v = _f32(F.avg_pool2d(torch.exp(logvar), pool)) / (pool * pool)
        return m.flatten(1), v.flatten(1)

    return gaussian_kernel_distance_flat(*pooled(mu_a, logvar_a), *pooled(mu_b, logvar_b))

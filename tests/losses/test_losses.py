"""Loss functions: closed forms, brute-force references, gradients, autocast safety."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import udavae.losses.characteristic as cf_mod
import udavae.losses.gaussian_distance as gd_mod
from udavae.losses import (
    balanced_cross_entropy,
    cf_distance,
    gaussian_kernel_distance,
    gaussian_kernel_distance_flat,
    jsd_mi,
    kl_divergence,
    reconstruction_bce,
)


def test_kl_matches_closed_form() -> None:
    mu = torch.tensor([[0.0, 0.5], [-1.0, 0.2]])
    logvar = torch.tensor([[0.0, -0.5], [0.3, 1.0]])
    terms = [0.5 * (m * m + math.exp(lv) - lv - 1.0) for m, lv in zip(mu.flatten().tolist(), logvar.flatten().tolist())]
    assert kl_divergence(mu, logvar).item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    assert kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0


def test_kl_fused_gradient_matches_autograd_of_the_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    import udavae.losses.kl as kl_module

    g = torch.Generator().manual_seed(3)
    mu = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    lv = (0.5 * torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)).requires_grad_()
    whole = kl_divergence(mu, lv).item()
    monkeypatch.setattr(kl_module, "CPU_CHUNK", 7)  # 96 elements in uneven chunks: same sum
    assert kl_divergence(mu, lv).item() == pytest.approx(whole, rel=1e-12)
    assert torch.autograd.gradcheck(kl_divergence, (mu, lv))
    w = torch.tensor(0.7, dtype=torch.float64)
    (w * kl_divergence(mu, lv)).backward()
    mu2, lv2 = mu.detach().clone().requires_grad_(), lv.detach().clone().requires_grad_()
    (w * 0.5 * torch.mean(mu2**2 + lv2.exp() - lv2 - 1.0)).backward()
    torch.testing.assert_close(mu.grad, mu2.grad)
    torch.testing.assert_close(lv.grad, lv2.grad)
    # bfloat16 inputs: float32 value and bfloat16 gradients within bfloat16 rounding of the float32 ones
    mb, lb = mu.detach().bfloat16().requires_grad_(), lv.detach().bfloat16().requires_grad_()
    out = kl_divergence(mb, lb)
    out.backward()
    assert out.dtype == torch.float32 and mb.grad.dtype == torch.bfloat16
    ref_m, ref_l = mb.detach().double().requires_grad_(), lb.detach().double().requires_grad_()
    ref = kl_divergence(ref_m, ref_l)
    ref.backward()
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(mb.grad.double(), ref_m.grad, rtol=1e-2, atol=1e-5)
    torch.testing.assert_close(lb.grad.double(), ref_l.grad, rtol=1e-2, atol=1e-5)
    with pytest.raises(ValueError, match="shapes differ"):
        kl_divergence(torch.zeros(2, 3), torch.zeros(3, 2))


def test_reconstruction_bce_equals_torch_bce_of_the_sigmoid() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    x = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    expected = F.binary_cross_entropy(torch.sigmoid(logits), x).item()
    assert reconstruction_bce(logits.float(), x.float()).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        reconstruction_bce(logits, x[:, :, :4])


def test_reconstruction_bce_gradient_is_finite_where_a_bf16_sigmoid_saturates() -> None:
    """bf16 sigmoid(8) is exactly 1.0; the loss on logits still has the gradient (sigmoid(l) - x) / N."""
    assert torch.sigmoid(torch.tensor(8.0).bfloat16()).item() == 1.0  # the trap this design avoids
    logits = torch.tensor([[[[8.0, 0.0], [-9.0, 30.0]]]], requires_grad=True)
    x = torch.full_like(logits, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = reconstruction_bce(logits.bfloat16(), x)
    loss.backward()
    expected = (torch.sigmoid(logits.detach().bfloat16().float()) - 0.5) / 4
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad, expected, rtol=1e-2, atol=1e-6)  # grad passes the bf16 cast


def test_balanced_ce_is_mean_of_per_class_means() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 5, 5, generator=g)
    target = torch.randint(0, 3, (2, 5, 5), generator=g)  # class 3 absent
    target[0, 0, 0] = 2
    ce = F.cross_entropy(logits, target, reduction="none")
    per_class = [ce[target == c].mean().item() for c in range(4) if (target == c).any()]
    assert len(per_class) == 3
    expected = sum(per_class) / len(per_class)
    assert balanced_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # Equals the reference's 1/(N_c + 1e-6)-weighted CE up to that epsilon.
    counts = torch.bincount(target.flatten(), minlength=4).float()
    ref = F.cross_entropy(logits, target, weight=1.0 / (counts + 1e-6))
    assert balanced_cross_entropy(logits, target).item() == pytest.approx(ref.item(), rel=1e-5)


def _naive_distance(mu_a, lv_a, mu_b, lv_b, pool):
    def prep(mu, lv):
        m = F.avg_pool2d(mu, pool).flatten(1)
        v = (F.avg_pool2d(lv.exp(), pool) / pool**2).flatten(1)
        return m, v

    (ma, va), (mb, vb) = prep(mu_a, lv_a), prep(mu_b, lv_b)

    def k(mp, vp, mq, vq):
        total = 0.0
        for i in range(mp.shape[0]):
            for j in range(mq.shape[0]):
                s = vp[i] + vq[j]
                total = total + (s.rsqrt() * torch.exp(-((mp[i] - mq[j]) ** 2) / (2 * s))).sum()
        return total

    return k(ma, va, ma, va) + k(mb, vb, mb, vb) - 2 * k(ma, va, mb, vb)


def test_gaussian_distance_matches_pair_loop_and_basic_properties() -> None:
    g = torch.Generator().manual_seed(2)
    mu_a, mu_b = torch.randn(3, 2, 8, 8, generator=g), torch.randn(2, 2, 8, 8, generator=g)
    lv_a, lv_b = torch.rand(3, 2, 8, 8, generator=g) - 0.5, torch.rand(2, 2, 8, 8, generator=g) - 0.5
    got = gaussian_kernel_distance(mu_a, lv_a, mu_b, lv_b, pool=4)
    want = _naive_distance(mu_a.double(), lv_a.double(), mu_b.double(), lv_b.double(), 4)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    with torch.no_grad():  # the plain (no gradient accumulation) path gives the same value
        assert gaussian_kernel_distance(mu_a.requires_grad_(), lv_a, mu_b, lv_b).item() == pytest.approx(
            got.item(), rel=1e-6
        )
    assert gaussian_kernel_distance(mu_a, lv_a, mu_a, lv_a, pool=2).abs().item() < 1e-3
    near = gaussian_kernel_distance(mu_a, lv_a, mu_a + 0.1, lv_a, pool=2)
    far = gaussian_kernel_distance(mu_a, lv_a, mu_a + 1.0, lv_a, pool=2)
    assert 0 < near.item() < far.item()


def test_gaussian_distance_gradcheck_and_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(3)
    ins = [torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    lvs = [0.5 * torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    args = [ins[0], lvs[0], ins[1], lvs[1]]
    for t in args:
        t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *a: gaussian_kernel_distance(*a, pool=2), args, fast_mode=True)
    f64 = {"dtype": torch.float64, "generator": g}
    flat = [
        torch.randn(3, 5, **f64),
        torch.rand(3, 5, **f64) + 0.1,
        torch.randn(2, 5, **f64),
        torch.rand(2, 5, **f64) + 0.1,
    ]
    flat = [t.requires_grad_(True) for t in flat]
    assert torch.autograd.gradcheck(gaussian_kernel_distance_flat, flat)
    whole = gaussian_kernel_distance_flat(*flat)
    grads = torch.autograd.grad(whole, flat)
    monkeypatch.setattr(gd_mod, "CHUNK_ELEMENTS", 7)  # one row per chunk
    assert torch.autograd.gradcheck(gaussian_kernel_distance_flat, flat)
    chunked = gaussian_kernel_distance_flat(*flat)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-12)
    for a, b in zip(grads, torch.autograd.grad(chunked, flat)):
        torch.testing.assert_close(a, b)


def test_cf_distance_point_masses_and_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    band, a, b = 3.0, 0.2, 0.9
    x = torch.tensor([[a]], dtype=torch.float64)
    y = torch.tensor([[b]], dtype=torch.float64)
    delta = b - a
    assert cf_distance(x, y, band).item() == pytest.approx(4 * band - 4 * math.sin(band * delta) / delta)
    g = torch.Generator().manual_seed(4)
    s = torch.randn(6, 3, generator=g, dtype=torch.float64)
    assert cf_distance(s, s, band).item() == pytest.approx(0.0, abs=1e-12)
    xs = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ys = torch.randn(7, 3, generator=g, dtype=torch.float64) + 0.5
    whole = cf_distance(xs, ys, band)
    (g_whole,) = torch.autograd.grad(whole, xs)
    assert whole.item() > 0
    monkeypatch.setattr(cf_mod, "CHUNK_ELEMENTS", 30)  # forces checkpointed chunks
    chunked = cf_distance(xs, ys, band)
    (g_chunk,) = torch.autograd.grad(chunked, xs)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-12)
    torch.testing.assert_close(g_chunk, g_whole)


def test_jsd_mi_at_zero_is_minus_two_ln_two() -> None:
    z = torch.zeros(4, 1)
    assert jsd_mi(z, z).item() == pytest.approx(-2 * math.log(2), rel=1e-6)
    assert jsd_mi(torch.full((4, 1), 20.0), torch.full((4, 1), -20.0)).item() == pytest.approx(0.0, abs=1e-6)


def test_losses_are_float32_under_autocast() -> None:
    g = torch.Generator().manual_seed(5)
    mu = torch.randn(2, 3, 8, 8, generator=g).bfloat16()
    lv = (0.5 * torch.randn(2, 3, 8, 8, generator=g)).bfloat16()
    img = torch.rand(2, 1, 8, 8, generator=g)
    rec = torch.randn(2, 1, 8, 8, generator=g).bfloat16()
    logits = torch.randn(2, 4, 8, 8, generator=g).bfloat16()
    target = torch.randint(0, 4, (2, 8, 8), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [
            kl_divergence(mu, lv),
            reconstruction_bce(rec, img),
            balanced_cross_entropy(logits, target),
            gaussian_kernel_distance(mu, lv, mu + 0.1, lv, pool=2),
            cf_distance(mu.flatten(1).T, mu.flatten(1).T + 0.1, 5.0),
            jsd_mi(logits, logits),
        ]
    for out in outs:
        assert out.dtype == torch.float32 and torch.isfinite(out)
    # the bf16 inputs are pooled before the float32 cast: the distance stays within bf16 rounding of fp32's
    d32 = gaussian_kernel_distance(mu.float(), lv.float(), mu.float() + 0.1, lv.float(), pool=2)
    assert outs[3].item() == pytest.approx(d32.item(), rel=2e-2)
    assert outs[0].item() == pytest.approx(kl_divergence(mu.float(), lv.float()).item(), rel=1e-5)

"""Methods: presets build and train, loss terms are weighted and all reach the encoder, SMIE wiring."""

from __future__ import annotations

import pytest
import torch

from udavae.methods import UDAMethod, build_method
from udavae.methods.presets import PRESETS, build_config
from udavae.models.complexity import synthetic_batch

TINY = {"model.base_width": 4, "model.recon_width": 8, "data.crop": 32, "optim.batch_size": 2}


def _method(preset: str, **extra: object) -> UDAMethod:
    torch.manual_seed(0)
    return build_method(build_config(preset, "tiny", {**TINY, **extra}), 4)


def _batches(crop: int = 32, b: int = 2, seed: int = 0) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    return synthetic_batch(b, crop, 4, "cpu"), synthetic_batch(b, crop, 4, "cpu", labelled=False)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_builds_and_steps(preset: str) -> None:
    method = _method(preset)
    opts = method.configure_optimizers(method.cfg.optim)
    assert ("critic" in opts) == getattr(method.cfg.method, "uses_mi", False)
    src, tgt = _batches()
    losses = method(src, tgt)
    total = losses.pop("total")
    assert torch.isfinite(total)
    torch.testing.assert_close(total, torch.stack(list(losses.values())).sum())
    before = method.net.encoder[0][0].weight.detach().clone()
    total.backward()
    for opt in opts.values():
        opt.step()
    assert not torch.equal(before, method.net.encoder[0][0].weight)


def test_loss_terms_per_kind() -> None:
    src, tgt = _batches()
    seg = {"seg_full", "seg_fusion", "seg_half", "seg_quarter"}
    vae = {f"{k}_{d}_{s}" for k in ("recon", "kl") for d in ("src", "tgt") for s in ("full", "half", "quarter")}
    assert set(_method("noadapt")(src, None)) == seg | {"total"}
    assert set(_method("uda-vae")(src, tgt)) == seg | vae | {"dist_full", "dist_half", "dist_quarter", "total"}
    assert set(_method("udavae++")(src, tgt)) == (
        seg | vae | {"dist_full", "dist_half", "dist_quarter"} | {"mi_src", "mi_tgt", "total"}
    )
    assert set(_method("cfdnet")(src, tgt)) == seg | vae | {"cf", "mean_full", "mean_half", "mean_quarter", "total"}
    with pytest.raises(ValueError, match="needs a target batch"):
        _method("uda-vae")(src, None)


def test_terms_are_weighted() -> None:
    method = _method("udavae++").eval()  # eval: z = mu and no dropout, so two passes agree
    src, tgt = _batches()
    with torch.no_grad():
        torch.manual_seed(0)  # same prior-critic reference samples in both passes
        base = method(src, tgt)
        w = method.cfg.method.weights
        w.seg, w.recon, w.kl, w.dist, w.mi = 2 * w.seg, 3 * w.recon, 4 * w.kl, (0.0, 0.0, 0.0), 0.5 * w.mi
        torch.manual_seed(0)
        scaled = method(src, tgt)
    # The BatchNorm decoders use running statistics in eval mode, unchanged between the two passes.
    torch.testing.assert_close(scaled["seg_full"], 2 * base["seg_full"])
    torch.testing.assert_close(scaled["recon_tgt_half"], 3 * base["recon_tgt_half"])
    torch.testing.assert_close(scaled["kl_src_quarter"], 4 * base["kl_src_quarter"])
    torch.testing.assert_close(scaled["mi_tgt"], 0.5 * base["mi_tgt"])
    assert scaled["dist_full"].item() == 0.0


@pytest.mark.parametrize("preset", ["udavae++", "cfdnet"])
def test_every_term_reaches_the_first_encoder_conv(preset: str) -> None:
    method = _method(preset)
    src, tgt = _batches()
    losses = method(src, tgt)
    first = method.net.encoder[0][0].weight
    for name, term in losses.items():
        if name == "total":
            continue
        (grad,) = torch.autograd.grad(term, first, retain_graph=True)
        assert grad.abs().sum() > 0, f"{name} does not reach the encoder"


def test_target_smie_gets_target_reconstructions() -> None:
    """Unlike the published code, every scale of the target critic sees target reconstructions."""
    method = _method("udavae++")
    outputs: dict[str, torch.Tensor] = {}
    for key, dec in method.decoders.items():
        dec.register_forward_hook(lambda m, a, o, k=key: outputs.__setitem__(k, o))
    seen: dict[str, tuple] = {}
    for dom, critic in method.critics.items():
        critic.register_forward_pre_hook(lambda m, a, d=dom: seen.__setitem__(d, a))
    method(*_batches())
    for dom in ("src", "tgt"):
        y, m = seen[dom]
        for i, s in enumerate(("full", "half", "quarter")):  # the critic sees the image, sigmoid of the logits
            torch.testing.assert_close(m[i], torch.sigmoid(outputs[f"{dom}_{s}"]), rtol=0, atol=0)


def test_parameter_groups_and_reconstruct() -> None:
    method = _method("udavae++")
    main = {id(p) for p in method.main_parameters()}
    critic = {id(p) for p in method.critic_parameters()}
    assert main.isdisjoint(critic) and len(main | critic) == len(list(method.parameters()))
    assert critic == {id(p) for p in method.critics.parameters()}
    src, tgt = _batches()
    for batch, dom in ((src, "source"), (tgt, "target")):
        rec = method.reconstruct(batch, dom)
        assert rec.shape == (2, 1, 32, 32) and rec.min() > 0 and rec.max() < 1 and not rec.requires_grad
    assert _method("noadapt").reconstruct(src, "source") is None
    assert list(_method("uda-vae").critic_parameters()) == []


def test_total_loss_falls_on_a_fixed_batch() -> None:
    method = _method("udavae++", **{"model.base_width": 8, "model.recon_width": 16})
    opts = method.configure_optimizers(method.cfg.optim)
    src, tgt = _batches(b=2, seed=1)
    totals = []
    for _ in range(30):
        for opt in opts.values():
            opt.zero_grad()
        total = method(src, tgt)["total"]
        total.backward()
        for name in ("critic", "main"):  # reference step order
            if name in opts:
                opts[name].step()
        totals.append(total.item())
    assert sum(totals[-3:]) / 3 < 0.8 * sum(totals[:3]) / 3


@pytest.mark.parametrize("crop", [64, 96])
def test_smie_method_at_other_crops(crop: int) -> None:
    method = _method("udavae++", **{"data.crop": crop})
    losses = method(*_batches(crop=crop))
    assert torch.isfinite(losses["mi_src"]) and torch.isfinite(losses["mi_tgt"])


def test_bf16_autocast_step_tracks_fp32() -> None:
    """bf16 autocast changes rounding, not the objective: same loss to ~1%, gradients aligned.

    At random initialisation on noise images the weight gradients are sums with heavy cancellation, so bf16
    moves them visibly: cosine about 0.89 to the fp32 gradient here, against about 0.15 between two fp32
    steps that differ only in their latent noise.
    """
    from udavae.engine.runtime import autocast

    cfg = build_config("udavae++", "tiny", {"runtime.device": "cpu"})
    torch.manual_seed(0)
    method = build_method(cfg, 4)
    src = synthetic_batch(2, cfg.data.crop, 4, "cpu")
    tgt = synthetic_batch(2, cfg.data.crop, 4, "cpu", labelled=False)
    results = []
    for amp in ("none", "bf16"):
        method.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # same latent noise and dropout masks
        with autocast(torch.device("cpu"), amp):
            total = method(src, tgt)["total"]
        total.backward()
        grad = torch.cat([p.grad.flatten() for p in method.net.parameters() if p.grad is not None])
        results.append((total.detach(), grad))
    (l32, g32), (l16, g16) = results
    assert l16.dtype == torch.float32
    assert l16.item() == pytest.approx(l32.item(), rel=2e-2)
    assert torch.nn.functional.cosine_similarity(g32, g16, dim=0).item() > 0.75


def test_train_cli_precision_flags() -> None:
    from udavae.cli import build_parser
    from udavae.cli.train_cmd import config_from_args

    parser = build_parser()
    cfg = config_from_args(parser.parse_args(["train", "--dataset", "d", "--out", "o", "--amp", "bf16", "--compile"]))
    assert cfg.runtime.amp == "bf16" and cfg.runtime.compile is True
    cfg = config_from_args(parser.parse_args(["train", "--dataset", "d", "--out", "o"]))
    assert cfg.runtime.amp == "none" and cfg.runtime.compile is False
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--dataset", "d", "--out", "o", "--amp", "fp8"])


@pytest.mark.parametrize("preset", ["uda-vae", "udavae++", "cfdnet"])
def test_bf16_step_with_saturated_reconstructions_has_finite_gradients(preset: str) -> None:
    """A reconstruction logit above ~6 rounds to exactly 1.0 through a bf16 sigmoid; the step must stay finite.

    This is what stopped ``--amp bf16`` training on CUDA: a saturated pixel made the BCE's backward
    ``0 * inf = NaN``, which poisoned every weight through the shared encoder.
    """
    from udavae.engine.runtime import autocast

    method = _method(preset)
    last_convs = {
        k: [m for m in dec.modules() if isinstance(m, torch.nn.Conv2d)][-1] for k, dec in method.decoders.items()
    }
    with torch.no_grad():
        for conv in last_convs.values():
            conv.bias.fill_(12.0)  # every reconstruction pixel far into the saturated range
    src, tgt = _batches()
    with autocast(torch.device("cpu"), "bf16"):
        losses = method(src, tgt)
    losses["total"].backward()
    assert all(torch.isfinite(v) for v in losses.values())
    bad = [n for n, p in method.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"
    # the reconstruction term still pushes the saturated logits down (towards images in [0, 1])
    assert last_convs["tgt_full"].bias.grad.item() > 0

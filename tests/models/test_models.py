"""Networks: exact parameter counts, output shapes, wiring, sampling, SMIE, complexity counting."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from udavae.cli import main
from udavae.config import ModelConfig
from udavae.methods.complexity import measure
from udavae.methods.presets import build_config
from udavae.models.complexity import count_parameters
from udavae.models.recon import ReconDecoder
from udavae.models.smie import SMIE
from udavae.models.unet_vae import UNetVAE


def _on_meta(factory):
    with torch.device("meta"):
        return factory()


@pytest.mark.parametrize(
    ("wiring", "head", "expected"),
    [
        ("skip", "gate", 31_860_383),  # HEAD network2.py / VarDA
        ("concat", "conv", 32_634_524),  # network_wo_A.py
        ("concat", "gate", 31_860_383),  # 2022 network2.py: shared ConvT, same count as skip
    ],
)
def test_paper_width_parameter_counts(wiring: str, head: str, expected: int) -> None:
    cfg = ModelConfig(base_width=64, depth=5, wiring=wiring, mean_head=head)
    assert count_parameters(_on_meta(lambda: UNetVAE(cfg, 4))) == expected


def test_recon_decoder_and_smie_parameter_counts() -> None:
    assert [count_parameters(ReconDecoder(c, 4, 128)) for c in (64, 128, 256)] == [365_665, 439_393, 586_849]
    smie = _on_meta(lambda: SMIE(4, 160))
    # The reference's modules minus their unused layers (3,423,128 - 129,120; 318,360 - 55,360).
    assert count_parameters(smie.global_critic) == 3_294_008
    assert count_parameters(smie.local_critic) == 263_000
    assert count_parameters(smie.prior_critic) == 476_014
    assert smie.global_critic.fc[0].in_features == 25_600
    assert (smie.local_critic.y_branch[-1].in_features, smie.local_critic.y_branch[-1].out_features) == (6_400, 32)
    assert smie.prior_critic.body[2].in_features == 1_600


@pytest.mark.parametrize("wiring", ["skip", "concat"])
@pytest.mark.parametrize("size", [160, 192])
def test_output_shapes(wiring: str, size: int) -> None:
    net = UNetVAE(ModelConfig(base_width=4, wiring=wiring, mean_head="conv" if wiring == "concat" else "gate"), 4)
    out = net(torch.rand(2, 1, size, size))
    assert out.logits.shape == (2, 4, size, size)
    for i, ch in enumerate((4, 8, 16)):
        s = size // 2**i
        assert out.seg_logits[i].shape == (2, 4, s, s)
        for t in (out.mu[i], out.logvar[i], out.z[i]):
            assert t.shape == (2, ch, s, s)
        assert out.mu[i].abs().max() <= 1 and out.logvar[i].abs().max() <= 1  # tanh-bounded


@pytest.mark.parametrize("depth", [3, 4, 6])
def test_other_depths(depth: int) -> None:
    net = UNetVAE(ModelConfig(base_width=2, depth=depth), 3)
    size = 2 ** (depth - 1) * 2
    out = net(torch.rand(1, 1, size, size))
    assert out.logits.shape == (1, 3, size, size)
    assert [z.shape[1] for z in out.z] == [2, 4, 8]


def test_bad_input_size_raises() -> None:
    net = UNetVAE(ModelConfig(base_width=2), 4)
    with pytest.raises(ValueError, match="divisible by the network stride 16"):
        net(torch.rand(1, 1, 150, 160))


def test_sampling_modes_and_init() -> None:
    torch.manual_seed(0)
    net = UNetVAE(ModelConfig(base_width=4, dropout=0.0), 4)
    x = torch.rand(2, 1, 32, 32)
    net.eval()
    out = net(x)
    assert all(z is mu for z, mu in zip(out.z, out.mu))
    mc = net(x, sample=True)  # Monte-Carlo sampling at evaluation
    assert not torch.equal(mc.z[0], mc.mu[0])
    net.train()
    assert not torch.equal(net(x).z[2], net(x).mu[2])
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(torch.all(m.bias == 0.01) for m in convs)


def test_concat_wiring_ignores_fine_encoder_skips() -> None:
    """In concat wiring the full-scale stage sees ConvT(z), ConvT(h), not the encoder skip."""
    torch.manual_seed(0)
    for wiring in ("skip", "concat"):
        net = UNetVAE(ModelConfig(base_width=4, wiring=wiring, dropout=0.0), 4).eval()
        seen: dict[str, torch.Tensor] = {}
        net.decoder[0].register_forward_pre_hook(lambda m, a, s=seen: s.__setitem__("stage", a[0]))
        net.encoder[0].register_forward_hook(lambda m, a, o, s=seen: s.__setitem__("skip", o))
        net(torch.rand(1, 1, 32, 32))
        assert torch.equal(seen["stage"][:, 4:], seen["skip"]) == (wiring == "skip")


@pytest.mark.parametrize("crop", [64, 96])
def test_smie_other_crops_and_initial_value(crop: int) -> None:
    torch.manual_seed(0)
    smie = SMIE(4, crop)
    y = tuple(torch.randn(4, 4, crop // 2**i, crop // 2**i) for i in range(3))
    m = tuple(torch.rand(4, 1, crop // 2**i, crop // 2**i) for i in range(3))
    out = smie(y, m)
    assert set(out) == {"global", "local", "prior", "loss"}
    # Critics near zero at initialisation: each estimate near -2 ln 2, loss near 1.6 * 2 ln 2 = 2.218.
    assert out["loss"].item() == pytest.approx(1.6 * 2 * math.log(2), abs=0.1)
    with pytest.raises(ValueError, match="expects scale 0 maps"):
        smie(tuple(t[..., :-4, :-4] for t in y), m)


def test_smie_negatives_roll_and_options() -> None:
    smie = SMIE(2, 16, use_local=False, use_prior=False, prior="normal")
    calls: list[torch.Tensor] = []
    real = smie.global_critic.forward
    smie.global_critic.forward = lambda yh, mh: (calls.append(mh), real(yh, mh))[1]  # type: ignore[method-assign]
    y = tuple(torch.randn(3, 2, 16 // 2**i, 16 // 2**i) for i in range(3))
    m = tuple(torch.rand(3, 1, 16 // 2**i, 16 // 2**i) for i in range(3))
    out = smie(y, m)
    assert set(out) == {"global", "loss"}
    torch.testing.assert_close(calls[1], calls[0][[1, 2, 0]])  # sample i paired with sample i+1
    assert out["loss"].item() == pytest.approx(-0.5 * out["global"].item())
    normal = SMIE(2, 16, use_global=False, use_local=False, prior="normal")
    assert set(normal(y, m)) == {"prior", "loss"}
    with pytest.raises(ValueError):
        SMIE(2, 18)


def test_meta_flop_count_equals_real_run() -> None:
    cfg = build_config(
        "udavae++", "tiny", {"model.base_width": 4, "model.recon_width": 8, "data.crop": 32, "optim.batch_size": 2}
    )
    meta = measure(cfg, 4, infer_size=32, device="meta")
    real = measure(cfg, 4, infer_size=32, device="cpu")
    assert (meta.step_flops, meta.inference_flops) == (real.step_flops, real.inference_flops)
    assert meta.trained_params == real.trained_params == meta.net_params + meta.decoder_params + meta.critic_params


def test_model_info_paper_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "info", "--preset", "udavae++"]) == 0
    text = capsys.readouterr().out
    assert "32,634,524" in text
    assert "5.726 TFLOP" in text  # reference: 5.726 TFLOP (REFERENCE_SPEC s9)
    assert "74.8 GFLOP" in text


def test_skip_gate_step_flops_match_reference() -> None:
    cfg = build_config("udavae++", "paper", {"model.wiring": "skip", "model.mean_head": "gate"})
    c = measure(cfg, 4)
    assert c.net_params == 31_860_383
    assert c.step_flops == pytest.approx(5.258e12, rel=1e-3)
    assert c.phase_flops == {"training": c.step_flops}  # one phase: the run is 30 epochs x 130 equal steps
    assert c.run_flops == 30 * 130 * c.step_flops
    assert c.inference_flops == pytest.approx(65.4e9, rel=1e-3)

"""PnP-AdaNet: options, critic inputs, the phase schedule, alternating updates, resume, and the CLI end to end.

Tiny shapes throughout (width 4, 32x32 crops, batch 2); the conftest sets one intra-op thread.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from udavae.methods import build_method
from udavae.methods.pnp_adanet import FEATURES, PnPAdaNet, PnPAdaNetOptions
from udavae.methods.presets import build_config
from udavae.models.complexity import synthetic_batch
from udavae.models.feature_critic import ConvCritic, grid_channels, to_grid

#: Two steps per epoch, phase 2 from step 2, no critic warm-up, two critic updates per step.
TINY = {
    "model.base_width": 4,
    "data.crop": 32,
    "optim.batch_size": 2,
    "optim.iters_per_epoch": 2,
    "optim.epochs": 3,
    "method.pretrain_epochs": 1,
    "method.critic_warmup": 0.0,
    "method.critic_iters": 2,
}
NULL = contextlib.nullcontext


def _method(**extra: object) -> PnPAdaNet:
    torch.manual_seed(0)
    method = build_method(build_config("pnp-adanet", "tiny", {**TINY, **extra}), 4)
    assert isinstance(method, PnPAdaNet)
    return method.train()


def _batches(seed: int = 0, b: int = 2, crop: int = 32) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    return synthetic_batch(b, crop, 4, "cpu"), synthetic_batch(b, crop, 4, "cpu", labelled=False)


def _snapshot(params) -> list[torch.Tensor]:  # noqa: ANN001
    return [p.detach().clone() for p in params]


def _same(a: list[torch.Tensor], b) -> bool:  # noqa: ANN001
    return all(torch.equal(x, y.detach()) for x, y in zip(a, b, strict=True))


def _higher(method: PnPAdaNet) -> list[torch.nn.Parameter]:
    dam = {id(p) for p in method.adaptation_parameters()}
    return [p for p in method.net.parameters() if id(p) not in dam]


def _steps(method: PnPAdaNet, opts: dict, steps: range, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    src, tgt = _batches(seed)
    out = []
    for s in steps:
        torch.manual_seed(1000 + s)  # dropout and latent noise
        out.append(method.training_step(method, src, tgt, opts, NULL, step=s))
    return out


# ----------------------------------------------------------------- options


def test_options_defaults_and_validation() -> None:
    cfg = build_config("pnp-adanet", "tiny")
    me = cfg.method
    assert isinstance(me, PnPAdaNetOptions) and (cfg.model.wiring, cfg.model.mean_head) == ("skip", "gate")
    assert me.feature_taps == FEATURES and me.resolved_pretrain_epochs(cfg.optim.epochs) == 1
    assert me.resolved_pretrain_epochs(12) == 6 and me.resolved_pretrain_epochs(30) == 15
    assert "DAM=encoder levels 0-3" in me.describe() and "loss=wgan" in me.describe()
    bad = [
        ({"method.features": "dam,foo"}, "method.features"),
        ({"method.features": "dam,dam"}, "method.features"),
        ({"method.adapt_levels": 5}, "method.adapt_levels=5"),
        ({"method.adapt_levels": 0}, "method.adapt_levels=0"),
        ({"method.gan": "lsgan"}, "method.gan='lsgan'"),
        ({"method.clip": 0}, "method.clip"),
        ({"method.critic_iters": 0}, "method.critic_iters"),
        ({"method.pretrain_epochs": 2}, "at least one epoch in each phase"),
        ({"method.pretrain_epochs": 0}, "at least one epoch in each phase"),
        ({"optim.epochs": 1}, "at least one epoch in each phase"),
        ({"method.adapt_lr": 0}, "adapt_lr"),
    ]
    for over, message in bad:
        with pytest.raises(ValueError, match=message.replace("*", r"\*")):
            build_config("pnp-adanet", "tiny", over)
    build_config(
        "pnp-adanet",
        "tiny",
        {"method.features": "bottleneck", "method.mask_critic": False, "method.gan": "gan", "method.clip": 0},
    )


# ----------------------------------------------------------------- shapes


def test_to_grid_is_lossless_and_sizes_the_critic() -> None:
    x = torch.randn(2, 8, 16, 16)
    down = to_grid(x, 0, 2)
    assert down.shape == (2, 8 * 16, 4, 4) == (2, grid_channels(8, 0, 2), 4, 4)
    assert torch.equal(to_grid(down, 2, 0), x)  # unshuffle then shuffle: the same values
    assert to_grid(torch.randn(1, 32, 2, 2), 4, 2).shape == (1, grid_channels(32, 4, 2), 8, 8) == (1, 2, 8, 8)
    assert to_grid(torch.randn(1, 3, 2, 2), 3, 2).shape == (1, grid_channels(3, 3, 2), 4, 4) == (1, 3, 4, 4)
    assert ConvCritic(5, (4, 8), stem=6)(torch.randn(3, 5, 12, 12)).shape == (3,)


def test_shapes_of_taps_critic_inputs_and_scores() -> None:
    method = _method()
    src, tgt = _batches()
    out, taps = method.run_with_taps(method.net, tgt["image"][0])
    w = 4
    assert taps["dam"].shape == (2, 8 * w, 4, 4)  # encoder level 3 (1/8)
    assert taps["bottleneck"].shape == (2, 16 * w, 2, 2)  # level 4 (1/16)
    assert taps["decoder"].shape == (2, 8 * w, 4, 4)  # first decoder stage (1/8)
    feature, mask = method.critic_inputs(out, taps)
    # dam 32->8, bottleneck 64->4, decoder 32->8, latent 16 at 1/4, output 4*16: on the 8x8 (1/4) grid
    assert feature.shape == (2, 8 + 4 + 8 + 16 + 64, 8, 8) and mask.shape == (2, 4, 32, 32)
    assert method.critics["feature"](feature).shape == (2,) and method.critics["mask"](mask).shape == (2,)
    assert method._taps is None  # the hooks store nothing outside run_with_taps
    method.freeze_source()
    terms = method(src, tgt, stage="adapt")
    assert set(terms) == {"adv_feature", "adv_mask", "total", "_feature_src", "_feature_tgt", "_mask_src", "_mask_tgt"}
    assert terms["_feature_src"].shape == feature.shape and not terms["_feature_tgt"].requires_grad
    only = _method(**{"method.features": "bottleneck,latent", "method.mask_critic": False})
    only.freeze_source()
    terms = only(src, tgt, stage="adapt")
    assert terms["_feature_src"].shape == (2, 4 + 16, 8, 8) and "adv_mask" not in terms


# ----------------------------------------------------------------- terms


@pytest.mark.parametrize("gan", ["wgan", "gan"])
def test_terms_are_finite_and_weighted(gan: str) -> None:
    method = _method(**{"method.gan": gan}).eval()  # eval: no dropout, z = mu, so two passes agree
    method.freeze_source()
    src, tgt = _batches()
    with torch.no_grad():
        seg = method(src, tgt)
        adapt = method(src, tgt, stage="adapt")
        inputs = {k[1:]: v for k, v in adapt.items() if k.startswith("_")}
        critic = method.critic_terms(**inputs)
        w = method.options.weights
        w.seg, w.adv, w.mask = 2 * w.seg, 3 * w.adv, 5 * w.mask
        seg2 = method(src, tgt)
        adapt2 = method(src, tgt, stage="adapt")
        critic2 = method.critic_terms(**inputs)
    assert set(seg) == {"seg_full", "seg_fusion", "seg_half", "seg_quarter", "total"}
    assert set(critic) == {"critic_feature", "critic_mask"}
    for terms in (seg, adapt, critic):
        assert all(torch.isfinite(v).all() for v in terms.values())
    for k in ("seg_full", "seg_fusion", "seg_half", "seg_quarter"):
        torch.testing.assert_close(seg2[k], 2 * seg[k])
    torch.testing.assert_close(adapt2["adv_feature"], 3 * adapt["adv_feature"])
    torch.testing.assert_close(adapt2["adv_mask"], 5 * adapt["adv_mask"])
    torch.testing.assert_close(critic2["critic_feature"], 3 * critic["critic_feature"])
    torch.testing.assert_close(critic2["critic_mask"], 5 * critic["critic_mask"])
    torch.testing.assert_close(adapt["total"], adapt["adv_feature"] + adapt["adv_mask"])
    if gan == "wgan":  # the generator and critic terms are the weighted score means of the critics
        d_tgt = method.critics["feature"](inputs["feature_tgt"])
        d_src = method.critics["feature"](inputs["feature_src"])
        torch.testing.assert_close(adapt["adv_feature"], -w.adv / 3 * d_tgt.mean())
        torch.testing.assert_close(critic["critic_feature"], w.adv / 3 * (d_tgt.mean() - d_src.mean()))
        assert all(p.abs().max() <= method.options.clip for p in method.critics.parameters())


def test_every_step_logs_the_same_keys() -> None:
    method = _method(**{"method.critic_warmup": 0.5})  # step 2: warm-up, step 3: adaptation
    opts = method.configure_optimizers(method.cfg.optim)
    logs = _steps(method, opts, range(4))
    keys = {
        "seg_full",
        "seg_fusion",
        "seg_half",
        "seg_quarter",
        "adv_feature",
        "adv_mask",
        "critic_feature",
        "critic_mask",
        "total",
    }
    assert all(set(log) == keys for log in logs)
    assert all(torch.isfinite(v) for log in logs for v in log.values())
    assert logs[0]["adv_feature"] == 0 and logs[0]["critic_feature"] == 0 and logs[0]["seg_full"] > 0
    assert logs[3]["seg_full"] == 0 and logs[3]["adv_feature"] != 0 and logs[3]["critic_feature"] != 0
    for log in logs:
        torch.testing.assert_close(log["total"], torch.stack([v for k, v in log.items() if k != "total"]).sum())


# ----------------------------------------------------------------- phases


def test_phase_one_is_the_noadapt_step() -> None:
    """Same initial network, same batch, same noise: one phase-1 step trains exactly as NoAdapt."""
    method = _method()
    torch.manual_seed(0)
    net_keys = {k: v for k, v in TINY.items() if not k.startswith("method.")}  # noadapt has no PnP options
    ref = build_method(build_config("noadapt", "tiny", net_keys), 4).train()
    assert _same(_snapshot(ref.net.parameters()), method.net.parameters())
    src, tgt = _batches()
    for m in (method, ref):
        opts = m.configure_optimizers(m.cfg.optim)
        torch.manual_seed(7)
        m.training_step(m, src, tgt if m is method else None, opts, NULL, step=0)
    assert _same(_snapshot(ref.net.parameters()), method.net.parameters())


def test_phase_switch_freezes_the_source_and_adapts_only_the_early_layers() -> None:
    method = _method()
    opts = method.configure_optimizers(method.cfg.optim)
    assert method.switch_step == 2 and method.warmup_steps == 0
    _steps(method, opts, range(2))
    assert not method.source_ready and not bool(method.source_frozen)
    at_switch = _snapshot(method.net.parameters())
    higher, dam = _snapshot(_higher(method)), _snapshot(method.adaptation_parameters())
    critics = _snapshot(method.critics.parameters())
    _steps(method, opts, range(2, 5))
    assert method.source_ready and bool(method.source_frozen)
    assert _same(at_switch, method.source_net.parameters())  # the copy is the network at the switch
    assert all(not p.requires_grad for p in method.source_net.parameters())
    assert _same(higher, _higher(method))  # frozen higher layers
    changed = [not torch.equal(a, b) for a, b in zip(dam, method.adaptation_parameters())]
    assert sum(changed) >= len(changed) // 2  # conv weights move (biases before instance norm get ~0 gradient)
    assert not _same(critics, method.critics.parameters())


def test_warmup_trains_only_the_critics() -> None:
    method = _method(**{"method.critic_warmup": 1.0})  # steps 2 and 3
    opts = method.configure_optimizers(method.cfg.optim)
    _steps(method, opts, range(2))
    dam, critics = _snapshot(method.adaptation_parameters()), _snapshot(method.critics.parameters())
    _steps(method, opts, range(2, 4))
    assert _same(dam, method.adaptation_parameters()) and not _same(critics, method.critics.parameters())
    _steps(method, opts, range(4, 5))
    assert not _same(dam, method.adaptation_parameters())


def test_adversarial_updates_alternate() -> None:
    """The DAM step leaves the critics alone and the critic step leaves every network parameter alone."""
    method = _method()
    opts = method.configure_optimizers(method.cfg.optim)
    method.freeze_source()
    src, tgt = _batches()
    out = method(src, tgt, stage="adapt")
    net, critics, dam = (
        _snapshot(method.net.parameters()),
        _snapshot(method.critics.parameters()),
        _snapshot(method.adaptation_parameters()),
    )
    method.adaptation_update(out["total"], opts["adapt"])
    assert _same(critics, method.critics.parameters()) and not _same(dam, method.adaptation_parameters())
    assert all(p.grad is None for p in method.parameters())
    net = _snapshot(method.net.parameters())
    inputs = {k[1:]: v for k, v in out.items() if k.startswith("_")}
    method.critic_update(inputs, opts["disc"], NULL)
    assert _same(net, method.net.parameters()) and not _same(critics, method.critics.parameters())
    assert all(p.abs().max() <= method.options.clip for p in method.critics.parameters())
    # and a whole phase-2 step runs them in that order: the DAM against the critic so far, then the critic
    calls: list[str] = []
    adapt, critic = method.adaptation_update, method.critic_update
    method.adaptation_update = lambda *a: (calls.append("adapt"), adapt(*a))[1]  # type: ignore[method-assign]
    method.critic_update = lambda *a: (calls.append("critic"), critic(*a))[1]  # type: ignore[method-assign]
    _steps(method, opts, range(2, 3))
    assert calls == ["adapt", "critic"]


def test_phase_one_steps_reduce_the_segmentation_loss() -> None:
    method = _method(**{"model.base_width": 8, "optim.epochs": 40, "method.pretrain_epochs": 30})
    opts = method.configure_optimizers(method.cfg.optim)
    totals = [float(log["total"]) for log in _steps(method, opts, range(30), seed=1)]
    assert not method.source_ready
    assert sum(totals[-3:]) / 3 < 0.8 * sum(totals[:3]) / 3


def test_phase_two_learning_rates_start_at_their_own_rate() -> None:
    method = _method(**{"optim.epochs": 6, "method.pretrain_epochs": 2})
    opts = method.configure_optimizers(method.cfg.optim)
    decay, me = method.cfg.optim.lr_decay, method.options
    assert opts["segmenter"].param_groups[0]["base_lr"] == method.cfg.optim.lr
    assert isinstance(opts["adapt"], torch.optim.RMSprop) and isinstance(opts["disc"], torch.optim.RMSprop)
    for name, lr in (("adapt", me.adapt_lr), ("disc", me.critic_lr)):
        assert opts[name].param_groups[0]["base_lr"] * decay**2 == pytest.approx(lr)  # the trainer's rate at epoch 2
    assert {id(p) for p in opts["adapt"].param_groups[0]["params"]} == {id(p) for p in method.adaptation_parameters()}
    assert {id(p) for p in opts["disc"].param_groups[0]["params"]} == {id(p) for p in method.critics.parameters()}


# ----------------------------------------------------------------- resume


def test_state_dict_round_trip_mid_phase_two_gives_identical_steps() -> None:
    a = _method()
    opts_a = a.configure_optimizers(a.cfg.optim)
    _steps(a, opts_a, range(4))  # switch at step 2: two phase-2 steps done
    state = {
        "method": {k: v.clone() for k, v in a.state_dict().items()},
        "optimizers": copy.deepcopy({k: o.state_dict() for k, o in opts_a.items()}),
    }  # as torch.save does
    torch.manual_seed(123)
    b = build_method(build_config("pnp-adanet", "tiny", TINY), 4).train()  # other initial weights
    assert isinstance(b, PnPAdaNet) and not b.source_ready
    b.load_state_dict(state["method"])
    assert b.source_ready
    opts_b = b.configure_optimizers(b.cfg.optim)
    for k, o in opts_b.items():
        o.load_state_dict(state["optimizers"][k])
    logs_a, logs_b = _steps(a, opts_a, range(4, 6)), _steps(b, opts_b, range(4, 6))
    for la, lb in zip(logs_a, logs_b):
        assert all(torch.equal(la[k], lb[k]) for k in la)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_trainer_resume_in_phase_two_is_exact(tmp_path: Path) -> None:
    from udavae.data.synthetic import generate_dataset
    from udavae.engine.model_folder import checkpoint_path, load_checkpoint
    from udavae.engine.trainer import Trainer

    data = tmp_path / "data"
    generate_dataset(data, n_source=2, n_target=2, size=32, slices=2, seed=1, n_val=1)
    over = {**TINY, "data.dataset": str(data), "data.jitter": 0, "runtime.device": "cpu", "data.num_workers": 0}
    Trainer(build_config("pnp-adanet", "tiny", over), tmp_path / "straight").fit()
    Trainer(build_config("pnp-adanet", "tiny", {**over, "optim.epochs": 2}), tmp_path / "resumed").fit()
    assert bool(load_checkpoint(checkpoint_path(tmp_path / "resumed", "last"))["method"]["source_frozen"])
    Trainer(build_config("pnp-adanet", "tiny", over), tmp_path / "resumed", resume=True).fit()
    a = load_checkpoint(checkpoint_path(tmp_path / "straight", "last"))
    b = load_checkpoint(checkpoint_path(tmp_path / "resumed", "last"))
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), k
    rows = [json.loads(x) for x in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["loss/adv_feature"] == 0 and rows[1]["loss/seg_full"] == 0 and rows[2]["loss/adv_feature"] != 0
    assert rows[1]["lr/adapt"] == pytest.approx(3e-4)  # the phase-2 rate restarts at the switch


def test_refuses_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    method = _method()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    with pytest.raises(NotImplementedError, match="DDP"):
        _steps(method, method.configure_optimizers(method.cfg.optim), range(1))


# ----------------------------------------------------------------- CLI


def test_model_info(capsys: pytest.CaptureFixture[str]) -> None:
    from udavae.cli import main

    assert main(["model", "info", "--preset", "pnp-adanet", "--profile", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "kind=pnp_adanet" in out and "DAM=encoder levels 0-3" in out and "training step" in out
    assert "training step, phase 1" in out and "training step, phase 2, adaptation" in out


def test_flops_per_phase_and_run() -> None:
    """Each phase is counted at its own cost; the run weighs each by its number of steps (hand-computed)."""
    from udavae.methods.complexity import measure

    cfg = build_config(
        "pnp-adanet",
        "tiny",
        {
            **TINY,
            "method.critic_warmup": 0.5,
            "optim.epochs": 4,
            "optim.iters_per_epoch": 4,
            "method.pretrain_epochs": 2,
        },
    )
    c = measure(cfg, 4)
    names = list(c.phase_flops)
    assert names == ["phase 1, source segmenter", "phase 2 warm-up, critics only", "phase 2, adaptation"]
    seg, warm, adapt = c.phase_flops.values()
    # phase 1 = 8 steps, warm-up = 0.5 x 4 = 2 steps, adaptation = the other 6 of 16
    assert c.run_flops == 8 * seg + 2 * warm + 6 * adapt
    assert c.step_flops == seg and warm < adapt  # the same forwards and critic steps, plus the DAM backward
    noadapt = measure(build_config("noadapt", "tiny", {k: v for k, v in TINY.items() if not k.startswith("method")}), 4)
    assert seg == noadapt.step_flops  # phase 1 is NoAdapt's step


def test_train_and_evaluate_end_to_end(tmp_path: Path) -> None:
    """``udavae train`` through both phases (phase 2 from epoch 2) on synthetic data, then ``udavae evaluate``."""
    from udavae.cli import main
    from udavae.data.synthetic import generate_dataset
    from udavae.engine.model_folder import load_checkpoint

    data, run = tmp_path / "data", tmp_path / "run"
    generate_dataset(data, n_source=4, n_target=5, size=64, slices=4, seed=1, n_val=2)
    args = [
        "train",
        "--dataset",
        str(data),
        "--out",
        str(run),
        "--preset",
        "pnp-adanet",
        "--profile",
        "tiny",
        "--device",
        "cpu",
        "--seed",
        "3",
        "--epochs",
        "2",
        "--iters-per-epoch",
        "2",
        "--batch-size",
        "2",
        "model.base_width=4",
        "data.crop=48",
        "data.jitter=8",
        "method.pretrain_epochs=1",
        "method.critic_warmup=0",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "udavae", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "UDAVAE_NO_MALLOC_TUNING": "1"},
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["loss/seg_full"] > 0 and rows[0]["loss/adv_feature"] == 0
    assert rows[1]["loss/seg_full"] == 0 and rows[1]["loss/adv_feature"] != 0 and rows[1]["loss/critic_mask"] != 0
    assert all("val/dice_mean" in r for r in rows)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert bool(last["method"]["source_frozen"]) and set(last["optimizers"]) == {"segmenter", "adapt", "disc"}
    out = tmp_path / "ev"
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "test" and summary["n_cases"] == 3

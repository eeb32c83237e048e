"""Methods own their step: the default hooks are the published step, per-group learning rates, and resume.

``UDAMethod.configure_optimizers`` / ``training_step`` replaced the trainer's single backward of one total; the
default must train exactly as before (same weights after N steps, bit for bit), the per-epoch decay must scale
each param group's own base rate, and checkpoints written before (optimiser states without ``base_lr``) must
resume at the right rate.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from udavae.engine.step import load_optimizer_state, optimisation_step
from udavae.engine.trainer import Trainer
from udavae.methods import UDAMethod, build_method
from udavae.methods.presets import build_config
from udavae.models.complexity import synthetic_batch

TINY = {"model.base_width": 4, "model.recon_width": 8, "data.crop": 32, "optim.batch_size": 2}
PRESETS = ("noadapt", "uda-vae", "cfdnet", "udavae++")
N_STEPS = 3


def _method(preset: str) -> UDAMethod:
    torch.manual_seed(0)
    return build_method(build_config(preset, "tiny", TINY), 4)


def _batches(needs_target: bool) -> list[tuple[dict, dict | None]]:
    torch.manual_seed(1)
    return [
        (synthetic_batch(2, 32, 4, "cpu"), synthetic_batch(2, 32, 4, "cpu", labelled=False) if needs_target else None)
        for _ in range(N_STEPS)
    ]


def _published_step(method: UDAMethod) -> list[dict[str, torch.Tensor]]:
    """The step as the trainer ran it before the hooks, inline: fp32, Adam per parameter set, one backward of
    the total, the critic optimiser first."""
    lr, wd = method.cfg.optim.lr, method.cfg.optim.weight_decay
    opts = {"main": torch.optim.Adam(list(method.main_parameters()), lr=lr, weight_decay=wd)}
    critic = list(method.critic_parameters())
    if critic:
        opts["critic"] = torch.optim.Adam(critic, lr=lr, weight_decay=wd)
    out = []
    for i, (src, tgt) in enumerate(_batches(method.needs_target)):
        torch.manual_seed(100 + i)  # latent noise, dropout, prior-critic samples
        losses = method(src, tgt)
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        for name in ("critic", "main"):
            if name in opts:
                opts[name].step()
        out.append({k: v.detach().clone() for k, v in losses.items()})
    return out


@pytest.mark.parametrize("preset", PRESETS)
def test_default_hooks_train_exactly_as_the_published_step(preset: str) -> None:
    before, after = _method(preset), _method(preset)
    expected = _published_step(before)
    opts = after.configure_optimizers(after.cfg.optim)
    assert set(opts) == ({"main", "critic"} if preset == "udavae++" else {"main"})
    got = []
    for i, (src, tgt) in enumerate(_batches(after.needs_target)):
        torch.manual_seed(100 + i)
        losses = after.training_step(after, src, tgt, opts, contextlib.nullcontext, step=i)
        got.append({k: v.detach().clone() for k, v in losses.items()})
    for e, g in zip(expected, got):
        assert set(e) == set(g) and all(torch.equal(e[k], g[k]) for k in e)
    ref, new = before.state_dict(), after.state_dict()
    assert set(ref) == set(new)
    unequal = [k for k in ref if not torch.equal(ref[k], new[k])]
    assert unequal == []
    assert not torch.equal(ref["net.encoder.0.0.weight"], _method(preset).state_dict()["net.encoder.0.0.weight"])


def test_the_engine_step_delegates_to_the_method(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer's (and the benchmarks') step calls the hook with the wrapped module, autocast and the step."""
    method = _method("uda-vae")
    seen: dict = {}

    def spy(forward, source, target, optimizers, autocast_ctx, *, step=0):  # noqa: ANN001, ANN202
        seen.update(forward=forward, optimizers=optimizers, step=step)
        with autocast_ctx():
            seen["dtype"] = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        return {"total": torch.zeros(())}

    monkeypatch.setattr(method, "training_step", spy)
    wrapper = torch.nn.Identity()
    opts = method.configure_optimizers(method.cfg.optim)
    src, tgt = _batches(True)[0]
    optimisation_step(method, opts, src, tgt, torch.device("cpu"), "bf16", forward=wrapper, step=7)
    assert seen == {"forward": wrapper, "optimizers": opts, "step": 7, "dtype": torch.bfloat16}
    optimisation_step(method, opts, src, tgt, torch.device("cpu"), "none")
    assert seen["forward"] is method and seen["dtype"] is None and seen["step"] == 0


def test_flop_counter_counts_the_methods_own_step(monkeypatch: pytest.MonkeyPatch) -> None:
    from udavae.methods.complexity import training_step_flops
    from udavae.methods.vae import VAEMethod

    calls = []
    original = VAEMethod.training_step

    def counted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(sorted(args[3]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VAEMethod, "training_step", counted)
    assert training_step_flops(_method("udavae++"), 2, 32) > 0
    assert calls == [["critic", "main"]]


class _TwoRates(UDAMethod):
    """An adversarial-style method: a generator and a discriminator optimiser at their own rates."""

    kind = "noadapt"  # reuses the NoAdapt options; never registered
    needs_target = False

    def __init__(self, cfg, num_classes: int) -> None:  # noqa: ANN001
        super().__init__(cfg, num_classes)
        self.critics = torch.nn.ModuleDict({"disc": torch.nn.Linear(2, 1)})

    def configure_optimizers(self, optim_cfg, fused: bool = False):  # noqa: ANN001, ANN201
        from udavae.methods.base import adam

        gen = adam(self.main_parameters(), optim_cfg.lr, optim_cfg.weight_decay)
        disc = torch.optim.SGD([{"params": self.critics.parameters(), "lr": 4 * optim_cfg.lr}])  # no base_lr
        return {"gen": gen, "disc": disc}


def test_each_param_group_decays_from_its_own_base_rate() -> None:
    from udavae.engine.step import remember_base_lr
    from udavae.methods.noadapt import NoAdaptOptions

    cfg = build_config("noadapt", "tiny", TINY)
    assert isinstance(cfg.method, NoAdaptOptions)
    method = _TwoRates(cfg, 4)
    opts = method.configure_optimizers(cfg.optim)
    remember_base_lr(opts)  # what the trainer does for optimisers without base_lr
    fake = SimpleNamespace(cfg=cfg, epoch=2, optimizers=opts)
    rates = Trainer._set_lr(fake)  # type: ignore[arg-type]
    decay = cfg.optim.lr_decay**2
    assert opts["gen"].param_groups[0]["lr"] == cfg.optim.lr * decay
    assert opts["disc"].param_groups[0]["lr"] == 4 * cfg.optim.lr * decay
    assert rates == {"lr": cfg.optim.lr * decay, "lr/disc": 4 * cfg.optim.lr * decay}
    # the default optimisers log one rate, as before
    default = _method("udavae++").configure_optimizers(cfg.optim)
    assert Trainer._set_lr(SimpleNamespace(cfg=cfg, epoch=1, optimizers=default)) == {  # type: ignore[arg-type]
        "lr": cfg.optim.lr * cfg.optim.lr_decay
    }


def test_optimizer_state_without_base_lr_loads_with_the_configured_rate() -> None:
    method = _method("udavae++")
    opts = method.configure_optimizers(method.cfg.optim)
    src, tgt = _batches(True)[0]
    method.training_step(method, src, tgt, opts, contextlib.nullcontext)
    old = {k: o.state_dict() for k, o in opts.items()}
    for sd in old.values():  # as written before the hooks: no base_lr, the decayed lr of epoch 3
        for g in sd["param_groups"]:
            del g["base_lr"]
            g["lr"] = 0.5
    fresh = _method("udavae++")
    new = fresh.configure_optimizers(fresh.cfg.optim)
    for k, o in new.items():
        load_optimizer_state(o, old[k])
        assert [g["base_lr"] for g in o.param_groups] == [fresh.cfg.optim.lr]
        assert all(torch.equal(a["exp_avg"], b["exp_avg"]) for a, b in zip(o.state.values(), opts[k].state.values()))


def _old_checkpoint(run: Path) -> None:
    """Rewrite ``last.pt`` as the code before the hooks wrote it: no base_lr, every kind's options in the config."""
    from udavae.engine.model_folder import checkpoint_path, load_checkpoint, save_checkpoint

    path = checkpoint_path(run, "last")
    state = load_checkpoint(path)
    for sd in state["optimizers"].values():
        for g in sd["param_groups"]:
            del g["base_lr"]
    state["config"]["method"].update(
        {
            "mi_global": False,
            "mi_local": False,
            "mi_prior": False,
            "mi_alpha": 0.5,
            "mi_beta": 1.0,
            "mi_gamma": 0.1,
            "prior": "uniform",
            "dist_pool": 4,
            "cf_band": 100.0,
            "cf_pool": 20,
        }
    )
    state["config"]["method"]["weights"].update(
        {"recon": 10.0, "kl": 1.0, "dist": [0.001, 0.001, 0.0001], "mi": 100.0, "cf": 1e-5, "mean_match": 1000.0}
    )
    save_checkpoint(path, state)


def test_resume_from_a_checkpoint_written_before_the_hooks(tmp_path: Path) -> None:
    from udavae.data.synthetic import generate_dataset

    data, run = tmp_path / "data", tmp_path / "run"
    generate_dataset(data, n_source=2, n_target=2, size=32, slices=2, seed=1, n_val=1)
    over = {
        **TINY,
        "data.dataset": str(data),
        "data.jitter": 0,
        "runtime.device": "cpu",
        "optim.iters_per_epoch": 1,
        "optim.epochs": 1,
        "data.num_workers": 0,
    }
    Trainer(build_config("noadapt", "tiny", over), run).fit()
    _old_checkpoint(run)
    cfg = build_config("noadapt", "tiny", {**over, "optim.epochs": 2})
    trainer = Trainer(cfg, run, resume=True)
    assert trainer.optimizers["main"].param_groups[0]["base_lr"] == cfg.optim.lr
    trainer.fit()
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [cfg.optim.lr, cfg.optim.lr * cfg.optim.lr_decay]


@pytest.mark.parametrize(
    ("preset", "refused"), [("udavae++", False), ("noadapt", False), ("sifa", True), ("pnp-adanet", True)]
)
def test_methods_with_several_backward_passes_refuse_ddp(
    preset: str, refused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One shared check (called by the trainer before wrapping in DDP) for every method that cannot use DDP."""
    import torch.distributed as dist

    method = _method(preset)
    method.refuse_distributed(method)  # one process: always allowed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    if refused:
        with pytest.raises(NotImplementedError, match=f"method kind '{method.kind}' does not support multi-process"):
            method.refuse_distributed(method)
    else:
        method.refuse_distributed(method)


def test_step_flops_count_the_batch_level_augmentation() -> None:
    """SLAug = the global view's pass (one fwd+bwd of B crops, which also gives the saliency) + the step on the
    fused B crops = 2x noadapt's step; slaug_views=fused = 2x; stacked (the step on GLA + fused, 2B) = 3x;
    GIN-IPA's view pairs = 2x (its random convolutions are not counted)."""
    from udavae.methods.complexity import measure
    from udavae.methods.presets import build_config

    def flops(preset: str, **over: object) -> int:
        return measure(build_config(preset, "tiny", dict(over)), 4).step_flops

    base = flops("noadapt")
    # + the first convolution's gradient w.r.t. the input, which only the saliency pass computes:
    # 2 FLOP x (4 crops x 64 x 64 px) x (1 x 8 channels x 3 x 3)
    first_conv_input_grad = 2 * 4 * 64 * 64 * 8 * 9
    assert flops("slaug") == 2 * base + first_conv_input_grad
    assert flops("slaug", **{"augment.slaug_views": "stacked"}) == 3 * base + first_conv_input_grad
    assert flops("slaug", **{"augment.slaug_views": "fused"}) == 2 * base + first_conv_input_grad
    assert flops("gin-ipa") == 2 * base
    assert flops("noadapt-aug") == base

"""SIFA: shapes, weighted terms, per-part gradients, alternating updates, pool, checkpoints, CLI end to end."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from udavae.cli import main
from udavae.methods import build_method
from udavae.methods.presets import build_config
from udavae.methods.sifa import SIFAMethod, SIFAWeights, sifa_task_loss
from udavae.models.complexity import synthetic_batch
from udavae.models.gan import ImageGenerator, ImagePool, LatentDecoder, PatchDiscriminator

TINY = {"model.base_width": 4, "data.crop": 32, "optim.batch_size": 2}
GEN_TERMS = {
    "seg_fusion",
    "seg_quarter",
    "cyc_source",
    "cyc_target",
    "adv_target_image",
    "adv_source_image",
    "adv_source_aux",
    "adv_pred_fusion",
    "adv_pred_quarter",
}
DISC_TERMS = {"disc_target_image", "disc_source_image", "disc_source_aux", "disc_pred_fusion", "disc_pred_quarter"}


def _method(**extra: object) -> SIFAMethod:
    torch.manual_seed(0)
    method = build_method(build_config("sifa", "tiny", {**TINY, **extra}), 4)
    assert isinstance(method, SIFAMethod)
    return method


def _batches(crop: int = 32, b: int = 2, seed: int = 0) -> tuple[dict, dict]:
    torch.manual_seed(seed)
    return synthetic_batch(b, crop, 4, "cpu"), synthetic_batch(b, crop, 4, "cpu", labelled=False)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_preset_and_parts() -> None:
    method = _method()
    me = method.options
    assert (method.cfg.model.wiring, method.cfg.model.mean_head, me.weights.seg) == ("skip", "gate", 1.0)
    assert me.widths(method.cfg) == (2, 4)  # base_width 4: generator base/2, critics base
    assert set(method.critics) == {"target_image", "source_image", "pred_fusion", "pred_quarter"}
    opts = method.configure_optimizers(method.cfg.optim)
    assert list(opts) == ["seg", "gen", "disc"]
    groups = {k: {id(p) for g in o.param_groups for p in g["params"]} for k, o in opts.items()}
    assert groups["seg"] == {id(p) for p in method.net.parameters()}
    assert groups["disc"] == {id(p) for p in method.critics.parameters()}
    assert sum(map(len, groups.values())) == len(list(method.parameters()))  # disjoint and complete
    assert opts["gen"].param_groups[0]["betas"] == (0.5, 0.999) and opts["gen"].param_groups[0]["base_lr"] == 2e-4
    assert opts["seg"].param_groups[0]["lr"] == method.cfg.optim.lr
    for key, bad in (
        ("method.weights.cycle", -1.0),
        ("method.gan_beta1", 1.0),
        ("data.crop", 30),
        ("method.pool_size", -1),
    ):
        with pytest.raises(ValueError, match=key.split(".")[-1]):
            build_config("sifa", "tiny", {key: bad})


def test_shapes_of_every_output() -> None:
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    g = ImageGenerator(2, blocks=2)
    assert g(x).shape == x.shape and g(x).abs().max() < 1
    u = LatentDecoder(16, 2, blocks=1, upsamplings=2)
    assert u(torch.rand(3, 16, 8, 8), x).shape == x.shape
    d = PatchDiscriminator(4, 4, out_channels=2)
    assert d(torch.rand(3, 4, 32, 32)).shape == (3, 2, 7, 7)
    assert d(torch.rand(3, 4, 8, 8)).shape == (3, 2, 4, 4)  # works down to the 1/4 scale of small crops

    method = _method()
    src, tgt = _batches()
    terms = method(src, tgt, keep=True)
    assert set(terms) == GEN_TERMS | {"total"} and all(t.shape == () for t in terms.values())
    kept = method._critic_inputs
    assert kept is not None and not any(v.requires_grad for v in kept.values())
    for name in ("real_source", "real_target", "fake_target", "fake_source", "cycle_source"):
        assert kept[name].shape == (2, 1, 32, 32), name
        assert kept[name].min() >= -1 and kept[name].max() <= 1
    for name in ("pred_fusion_real", "pred_fusion_fake", "pred_quarter_real", "pred_quarter_fake"):
        assert kept[name].shape == (2, 4, 32, 32), name
    assert set(method.critic_terms(kept)) == DISC_TERMS
    for batch, dom in ((src, "source"), (tgt, "target")):
        rec = method.reconstruct(batch, dom)
        assert rec.shape == (2, 1, 32, 32) and rec.min() > 0 and rec.max() < 1 and not rec.requires_grad
    with pytest.raises(ValueError, match="needs a target batch"):
        method(src, None)


def test_every_term_is_finite_and_scaled_by_its_weight() -> None:
    method = _method().eval()  # no dropout: two passes agree
    src, tgt = _batches()
    with torch.no_grad():
        base = method(src, tgt)
        w = method.options.weights
        names = [f for f in vars(w) if f != "encoder"]
        for f in names:
            setattr(w, f, 2 * getattr(w, f))
        w.seg_source = 0.5
        scaled = method(src, tgt)
    assert all(torch.isfinite(v) for v in base.values())
    for k in GEN_TERMS:
        torch.testing.assert_close(scaled[k], 2 * base[k], msg=k)
    assert "seg_source" not in base and torch.isfinite(scaled["seg_source"])
    torch.testing.assert_close(scaled["total"], torch.stack([v for k, v in scaled.items() if k != "total"]).sum())
    # the encoder factor scales the cycle and source-adversarial terms in the segmenter's objective only
    gen, seg = method.objectives(scaled)
    w.encoder *= 3
    gen3, seg3 = method.objectives(scaled)
    shared = scaled["cyc_source"] + scaled["cyc_target"] + scaled["adv_source_image"]
    torch.testing.assert_close(gen3, gen)
    torch.testing.assert_close(seg3 - seg, 2 * 0.1 * shared)


def test_task_loss_matches_its_definition() -> None:
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    p, g = logits.softmax(1), torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    w = 1 - g.sum((0, 2, 3)) / g.sum()
    ce = -(w[None, :, None, None] * g * p.log()).sum(1).mean()
    dice = (2 * (p * g).sum((0, 2, 3)) / ((p * p).sum((0, 2, 3)) + g.sum((0, 2, 3)) + 1e-7)).mean()
    torch.testing.assert_close(sifa_task_loss(logits, labels), ce + 1 - dice)


def test_each_part_gets_the_gradient_of_its_own_objective() -> None:
    """G_t, U and E+C are stepped with exactly the gradients of the authors' three objectives."""
    method = _method(**{"model.dropout": 0.0})
    src, tgt = _batches()
    opts = method.configure_optimizers(method.cfg.optim)
    grads: dict[str, dict[str, torch.Tensor]] = {}
    owners = {id(p): n for n, p in method.named_parameters()}
    for name in ("gen", "seg"):
        original = opts[name].step

        def capture(*a, _name=name, _original=original, **k):  # noqa: ANN002, ANN003, ANN202
            grads[_name] = {
                owners[id(p)]: p.grad.clone()
                for g in opts[_name].param_groups
                for p in g["params"]
                if p.grad is not None
            }
            return _original(*a, **k)

        opts[name].step = capture
    reference = _method(**{"model.dropout": 0.0})
    t = reference(src, tgt)
    w = reference.options.weights
    objectives = {
        "generator.": t["cyc_source"] + t["cyc_target"] + t["adv_target_image"],
        "decoder.": t["cyc_source"] + t["cyc_target"] + t["adv_source_image"],
        "net.": (
            t["seg_fusion"]
            + t["seg_quarter"]
            + t["adv_source_aux"]
            + t["adv_pred_fusion"]
            + t["adv_pred_quarter"]
            + w.encoder * (t["cyc_source"] + t["cyc_target"] + t["adv_source_image"])
        ),
    }
    method.training_step(method, src, tgt, opts, contextlib.nullcontext)
    got = {**grads["gen"], **grads["seg"]}
    for prefix, objective in objectives.items():
        params = [(n, p) for n, p in reference.named_parameters() if n.startswith(prefix)]
        expected = torch.autograd.grad(objective, [p for _, p in params], retain_graph=True, allow_unused=True)
        for (n, _), e in zip(params, expected):
            if e is None:  # the log-variance heads: z = mu, never used
                assert n not in got and ".logvar." in n, n
            else:
                torch.testing.assert_close(got[n], e, rtol=1e-4, atol=1e-6, msg=n)


def test_updates_alternate() -> None:
    """The generator side never moves a critic; the critics' step moves nothing else."""
    method = _method()
    opts = method.configure_optimizers(method.cfg.optim)
    src, tgt = _batches()
    seen: dict[str, dict] = {}
    gen_side = torch.nn.ModuleList([method.net, method.generator, method.decoder])
    for name in opts:
        original = opts[name].step

        def spy(*a, _name=name, _original=original, **k):  # noqa: ANN002, ANN003, ANN202
            seen[_name] = {
                "critic_grads": [p.grad for p in method.critics.parameters()],
                "before": (_snapshot(gen_side), _snapshot(method.critics)),
            }
            out = _original(*a, **k)
            seen[_name]["after"] = (_snapshot(gen_side), _snapshot(method.critics))
            return out

        opts[name].step = spy
    start = (_snapshot(gen_side), _snapshot(method.critics))
    out = method.training_step(method, src, tgt, opts, contextlib.nullcontext)
    assert set(out) == GEN_TERMS | DISC_TERMS | {"total"}
    for name in ("gen", "seg"):  # critics untouched, and without gradients, when the generator side steps
        assert all(g is None for g in seen[name]["critic_grads"]), name
        assert _same(start[1], seen[name]["after"][1]), name
    after_gen = seen["seg"]["after"][0]
    assert not _same(start[0], after_gen)
    gen_after_disc, critics_after_disc = seen["disc"]["after"]
    assert _same(after_gen, gen_after_disc)  # the critics' step leaves G_t, U and the segmenter alone
    assert not _same(start[1], critics_after_disc)
    assert method._critic_inputs is None


def test_segmentation_loss_falls_on_a_fixed_batch() -> None:
    method = _method(**{"model.base_width": 8})
    opts = method.configure_optimizers(method.cfg.optim)
    src, tgt = _batches(seed=1)
    seg = []
    for i in range(20):
        out = method.training_step(method, src, tgt, opts, contextlib.nullcontext, step=i)
        assert all(torch.isfinite(v) for v in out.values())
        seg.append(out["seg_fusion"].item())
    assert sum(seg[-3:]) / 3 < 0.9 * sum(seg[:3]) / 3, seg  # about 0.85 after 20 steps


def test_image_pool() -> None:
    pool = ImagePool(2)
    batches = [torch.full((2, 1, 4, 4), float(i)) for i in range(40)]
    assert torch.equal(pool.query(batches[0]), batches[0]) and torch.equal(pool.query(batches[1]), batches[1])
    torch.manual_seed(0)
    shown = [pool.query(b)[0, 0, 0, 0].item() for b in batches[2:]]
    assert any(s != i + 2 for i, s in enumerate(shown)) and any(s == i + 2 for i, s in enumerate(shown))
    assert all(s <= i + 2 for i, s in enumerate(shown))  # always a batch already generated
    other = torch.zeros(3, 1, 4, 4)
    assert pool.query(other) is not None and len(pool.images) == 2  # another shape bypasses the pool
    state = pool.get_extra_state()
    assert state.shape == (2, 2, 1, 4, 4)
    copy = ImagePool(2)
    copy.set_extra_state(state)
    assert all(torch.equal(a, b) for a, b in zip(pool.images, copy.images))
    assert torch.equal(ImagePool(0).query(batches[3]), batches[3])


def test_checkpoint_round_trip_gives_identical_outputs() -> None:
    method = _method(**{"method.pool_size": 1})
    opts = method.configure_optimizers(method.cfg.optim)
    src, tgt = _batches()
    for i in range(2):
        method.training_step(method, src, tgt, opts, contextlib.nullcontext, step=i)
    buf = io.BytesIO()
    torch.save(method.state_dict(), buf)
    buf.seek(0)
    other = _method(**{"method.pool_size": 1})
    other.load_state_dict(torch.load(buf, weights_only=False))
    assert len(other.pools["target"].images) == 1
    assert torch.equal(other.pools["source"].images[0], method.pools["source"].images[0])
    method.eval()
    other.eval()
    with torch.no_grad():
        a, b = method(src, tgt, keep=True), other(src, tgt, keep=True)
        assert all(torch.equal(a[k], b[k]) for k in a)
        for k, v in method._critic_inputs.items():
            assert torch.equal(v, other._critic_inputs[k]), k
        x = tgt["image"][0]
        assert torch.equal(method.net(x).logits, other.net(x).logits)


def test_ddp_is_refused() -> None:
    method = _method()
    fake_ddp = object.__new__(torch.nn.parallel.DistributedDataParallel)
    with pytest.raises(RuntimeError, match="does not support multi-process"):
        method.training_step(
            fake_ddp, *_batches(), method.configure_optimizers(method.cfg.optim), contextlib.nullcontext
        )


def test_model_info_counts_the_sifa_step(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "info", "--preset", "sifa", "--profile", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "kind=sifa" in out and "critics=4 PatchGAN" in out
    assert "image generator G_t + decoder U" in out and "discriminators (4 PatchGAN)" in out
    step = next(line for line in out.splitlines() if "training step" in line)
    assert float(step.split()[-2]) > 0


def test_weights_dataclass_is_a_segweights() -> None:
    from udavae.methods.base import SegWeights

    assert issubclass(SIFAWeights, SegWeights) and SIFAWeights().seg == 1.0


# ----------------------------------------------------------------- end to end through the CLI

ARGS = [
    "--preset",
    "sifa",
    "--profile",
    "tiny",
    "--device",
    "cpu",
    "--seed",
    "2",
    "--epochs",
    "2",
    "--iters-per-epoch",
    "2",
    "--batch-size",
    "2",
    "model.base_width=4",
    "data.crop=48",
    "data.jitter=8",
    "method.pool_size=2",
]


def _udavae(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "udavae", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "UDAVAE_NO_MALLOC_TUNING": "1", **(env or {})},
        timeout=600,
    )


def test_train_resume_and_evaluate_end_to_end(tmp_path: Path, udavae_killed_after) -> None:
    from udavae.data.synthetic import generate_dataset
    from udavae.engine.model_folder import load_checkpoint

    data = tmp_path / "data"
    generate_dataset(data, n_source=2, n_target=3, size=48, slices=3, seed=1, n_val=1)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    r = _udavae("train", "--dataset", str(data), "--out", str(straight), *ARGS)
    assert r.returncode == 0, r.stderr
    # a hard kill after 3 of 4 steps, then --resume: the same weights, critics and image pools
    r = udavae_killed_after(3, "train", "--dataset", str(data), "--out", str(killed), *ARGS)
    assert r.returncode == 137
    r = _udavae("train", "--dataset", str(data), "--out", str(killed), "--resume", *ARGS)
    assert r.returncode == 0, r.stderr
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert set(a["optimizers"]) == {"seg", "gen", "disc"}
    assert a["method"]["pools.target._extra_state"].shape[0] == 2
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), k
    log = (straight / "log.csv").read_text().splitlines()[0].split(",")
    assert {f"loss/{k}" for k in GEN_TERMS | DISC_TERMS} <= set(log) and {"lr/gen", "lr/disc"} <= set(log)
    r = _udavae("evaluate", str(straight), "--split", "test", "--device", "cpu", "--out", str(tmp_path / "ev"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ev" / "metrics.csv").is_file() and (tmp_path / "ev" / "summary.json").is_file()

"""Runtime switches of issue 'GPU speed': validated options, CPU fallbacks, and the CUDA paths (skipped on CPU)."""

from __future__ import annotations

import pytest
import torch

from udavae.config import RuntimeConfig
from udavae.engine.runtime import (
    compile_module,
    configure_backends,
    effective_compile_mode,
    loader_workers,
    uses_cudagraphs,
    validation_batch,
)
from udavae.methods import build_method
from udavae.methods.presets import build_config
from udavae.models.complexity import synthetic_batch

CPU = torch.device("cpu")
TINY = {"model.base_width": 4, "model.recon_width": 8, "data.crop": 32, "optim.batch_size": 2}
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_fp16_training_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"fp16 is not supported for training.*Use bf16"):
        build_config("udavae++", "tiny", {"runtime.amp": "fp16"})
    with pytest.raises(ValueError, match="runtime.compile_mode='fast' is not one of default, reduce-overhead"):
        build_config("udavae++", "tiny", {"runtime.compile_mode": "fast"})
    with pytest.raises(ValueError, match="runtime.val_batch must be >= 0"):
        build_config("udavae++", "tiny", {"runtime.val_batch": -2})
    with pytest.raises(ValueError, match="data.num_workers must be >= 0, or -1"):
        build_config("udavae++", "tiny", {"data.num_workers": -3})


def test_train_cli_refuses_fp16_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from udavae.cli import main

    assert main(["train", "--dataset", "nowhere", "--out", "nowhere", "--amp", "fp16"]) == 2
    assert "fp16 is not supported for training" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("mode", "on_cpu"),
    [
        ("default", "default"),
        ("reduce-overhead", "default"),
        ("max-autotune", "max-autotune-no-cudagraphs"),
        ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs"),
    ],
)
def test_cuda_graph_modes_fall_back_off_cuda(mode: str, on_cpu: str) -> None:
    rt = RuntimeConfig(compile=True, compile_mode=mode)
    assert effective_compile_mode(rt, CPU) == on_cpu
    assert effective_compile_mode(rt, torch.device("cuda")) == mode
    assert not uses_cudagraphs(rt, CPU)
    assert uses_cudagraphs(rt, torch.device("cuda")) == (mode in ("reduce-overhead", "max-autotune"))
    assert not uses_cudagraphs(RuntimeConfig(compile=False, compile_mode=mode), torch.device("cuda"))


def test_compile_off_returns_the_module_itself() -> None:
    module = torch.nn.Linear(2, 2)
    assert compile_module(module, RuntimeConfig(compile=False, compile_mode="reduce-overhead"), CPU) is module


def test_cpu_keeps_its_defaults() -> None:
    """The CUDA levers leave a CPU run as it was: no cuDNN switch, unfused Adam, no workers, same val batch."""
    before = torch.backends.cudnn.benchmark
    configure_backends(CPU, RuntimeConfig(cudnn_benchmark=not before))
    assert torch.backends.cudnn.benchmark == before
    cfg = build_config("udavae++", "tiny", TINY)
    opts = build_method(cfg, 4).configure_optimizers(cfg.optim, fused=True)
    assert all(not o.defaults.get("fused") for o in opts.values())
    assert loader_workers(-1, CPU) == 0 and loader_workers(3, CPU) == 3
    assert validation_batch(RuntimeConfig(), 12, CPU) == 12
    assert validation_batch(RuntimeConfig(), 2, CPU) == 4
    assert validation_batch(RuntimeConfig(val_batch=7), 12, torch.device("cuda")) == 7
    assert validation_batch(RuntimeConfig(), 12, torch.device("cuda")) == 64
    assert loader_workers(-1, torch.device("cuda")) >= 1 or (torch.multiprocessing.cpu_count() < 2)


@cuda_only
@pytest.mark.parametrize("preset", ["uda-vae", "udavae++", "cfdnet"])
def test_cuda_bf16_steps_stay_finite_and_learn(preset: str) -> None:
    """On a GPU: 20 bf16 steps of each variational preset with fused Adam; loss finite and falling."""
    from udavae.engine.step import optimisation_step

    dev = torch.device("cuda")
    cfg = build_config(preset, "tiny", {**TINY, "optim.lr": 1e-3})
    torch.manual_seed(0)
    method = build_method(cfg, 4).to(dev)
    opts = method.configure_optimizers(cfg.optim, fused=True)
    assert all(o.defaults.get("fused") for o in opts.values())
    src, tgt = synthetic_batch(2, 32, 4, dev), synthetic_batch(2, 32, 4, dev, labelled=False)
    totals = [optimisation_step(method, opts, src, tgt, dev, "bf16")["total"].item() for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-3:]) < sum(totals[:3])


@cuda_only
def test_cuda_graph_compiled_step_matches_eager_loss() -> None:
    """On a GPU: the reduce-overhead (CUDA graph) step runs, and its first loss equals the eager one."""
    from udavae.engine.step import optimisation_step

    dev = torch.device("cuda")
    cfg = build_config("udavae++", "tiny", {**TINY, "runtime.compile": True, "runtime.compile_mode": "reduce-overhead"})
    src, tgt = synthetic_batch(2, 32, 4, dev), synthetic_batch(2, 32, 4, dev, labelled=False)
    losses = []
    for compiled in (False, True):
        torch.manual_seed(0)
        method = build_method(cfg, 4).to(dev).eval()  # eval: no latent noise or dropout
        opts = method.configure_optimizers(cfg.optim, fused=True)
        model = compile_module(method, cfg.runtime, dev) if compiled else method
        out = [
            optimisation_step(method, opts, src, tgt, dev, "none", cudagraphs=compiled, forward=model)["total"].item()
            for _ in range(3)
        ]
        losses.append(out)
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-3)


def test_train_cli_compile_mode_implies_compile() -> None:
    from udavae.cli import build_parser
    from udavae.cli.train_cmd import config_from_args

    parser = build_parser()
    base = ["train", "--dataset", "d", "--out", "o"]
    cfg = config_from_args(parser.parse_args([*base, "--compile-mode", "reduce-overhead"]))
    assert cfg.runtime.compile and cfg.runtime.compile_mode == "reduce-overhead"
    cfg = config_from_args(parser.parse_args([*base, "--compile", "model.base_width=8"]))  # no mode swallowed
    assert cfg.runtime.compile and cfg.runtime.compile_mode == "default" and cfg.model.base_width == 8
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--compile-mode", "fastest"])


def test_bf16_on_a_cpu_without_native_bf16_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    from udavae.engine import runtime

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert "about 12x slower" in runtime.slow_amp_warning(CPU, "bf16")
    assert runtime.slow_amp_warning(CPU, "none") is None
    assert runtime.slow_amp_warning(torch.device("cuda"), "bf16") is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert runtime.slow_amp_warning(CPU, "bf16") is None

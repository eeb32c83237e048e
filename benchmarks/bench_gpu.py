"""GPU training speed of the paper preset, lever by lever, beside the authors' step (a benchmark, not a test).

1. The GPU's own peaks: best-of-N bf16 and TF32 matrix products (8192^3) and 3x3 convolutions.
2. For each variant (fp32/TF32 and bf16, with one speed lever switched on or off; ``VARIANTS``), a fresh
   process times ``--steps`` training steps after ``--warmup`` steps on a synthetic batch of the profile's
   size, exactly the step training runs (``engine.step.optimisation_step``, i.e. the method's own
   ``training_step`` with the optimisers of its ``configure_optimizers``): s/step, images/s (source +
   target crops), TFLOP/s (FLOPs counted on the meta device), its share of the measured peak of the same
   precision, peak GPU memory and the first step's time (cuDNN autotuning, ``torch.compile``, CUDA-graph
   capture). ``*-loader`` variants draw each batch from the training data pipeline (random slices of the
   profile's size, workers and pinned memory as the trainer sets them) instead of one fixed batch.
3. The authors' published step through their harness ``ref_step.py`` (``--reference``), fp32 and bf16.

    python benchmarks/bench_gpu.py [--device cuda] [--variants fp32,bf16,...] [--steps 20] [--warmup 5] \
        [--reference .gpu/reference/ref_step.py] [--json benchmarks/results/gpu_<gpu name>.json]

It also runs on a CPU with a small profile to check the script (``--device cpu --profile tiny``).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import REPO, repo_relative

from udavae.config import parse_overrides
from udavae.data.sampling import SliceCropDataset, make_loader
from udavae.data.volumes import SliceStack
from udavae.engine.runtime import compile_module, configure_backends, loader_workers, uses_cudagraphs
from udavae.engine.step import batch_to_device, optimisation_step
from udavae.fileio import write_json
from udavae.methods import build_method
from udavae.methods.complexity import measure
from udavae.methods.presets import build_config
from udavae.models.complexity import synthetic_batch

BF16 = {"runtime.amp": "bf16"}
#: name -> config overrides on top of the defaults (cuDNN autotuning on, fused Adam on CUDA, no compile).
VARIANTS: dict[str, dict[str, str]] = {
    "fp32": {},
    "fp32-no-cudnn-benchmark": {"runtime.cudnn_benchmark": "false"},
    "fp32-unfused-adam": {"runtime.fused_adam": "false"},
    "fp32-channels-last": {"runtime.channels_last": "true"},
    "fp32-graphs": {"runtime.compile": "true", "runtime.compile_mode": "reduce-overhead"},
    "bf16": BF16,
    "bf16-no-cudnn-benchmark": {**BF16, "runtime.cudnn_benchmark": "false"},
    "bf16-unfused-adam": {**BF16, "runtime.fused_adam": "false"},
    "bf16-channels-last": {**BF16, "runtime.channels_last": "true"},
    "bf16-compile": {**BF16, "runtime.compile": "true"},
    "bf16-graphs": {**BF16, "runtime.compile": "true", "runtime.compile_mode": "reduce-overhead"},
    "bf16-channels-last-graphs": {
        **BF16,
        "runtime.channels_last": "true",
        "runtime.compile": "true",
        "runtime.compile_mode": "reduce-overhead",
    },
    "bf16-autotune": {**BF16, "runtime.compile": "true", "runtime.compile_mode": "max-autotune"},
    "fp32-loader": {"loader": "1"},
    "bf16-loader": {**BF16, "loader": "1"},
}
DEFAULT_VARIANTS = (
    "fp32,fp32-no-cudnn-benchmark,fp32-unfused-adam,fp32-channels-last,fp32-graphs,bf16,"
    "bf16-no-cudnn-benchmark,bf16-unfused-adam,bf16-channels-last,bf16-compile,bf16-graphs,"
    "bf16-channels-last-graphs,fp32-loader,bf16-loader"
)
DEFAULT_REFERENCE = REPO / ".gpu" / "reference" / "ref_step.py"


# --------------------------------------------------------------------------- timing helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sig(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (TFLOP/s span 0.001 on a CPU to ~1000 on a GPU)."""
    return float(f"{x:.{digits}g}")


def _best_tflops(fn, flops: float, device: torch.device, repeats: int = 10) -> float:
    """Best throughput of ``fn()`` over ``repeats`` timed calls after warm-ups (noise only slows a kernel)."""
    for _ in range(3):
        fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return flops / best / 1e12


@torch.no_grad()
def measured_peaks(device: torch.device) -> dict[str, float]:
    """TFLOP/s of a large matrix product and a 3x3 convolution in bf16 and in TF32 (fp32 inputs)."""
    gpu = device.type == "cuda"
    n = 8192 if gpu else 1024
    b, c, s = (64, 256, 64) if gpu else (4, 64, 64)
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    out: dict[str, float] = {}
    try:
        for dtype, tag in ((torch.bfloat16, "bf16"), (torch.float32, "tf32")):
            a, m = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
            out[f"matmul_{tag}_tflops"] = _sig(_best_tflops(lambda a=a, m=m: a @ m, 2 * n**3, device))
            x = torch.randn(b, c, s, s, device=device, dtype=dtype)
            conv = torch.nn.Conv2d(c, c, 3, padding=1).to(device, dtype)
            out[f"conv3x3_{tag}_tflops"] = _sig(
                _best_tflops(lambda x=x, conv=conv: conv(x), 2 * b * c * c * 9 * s * s, device)
            )
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    return out


def _loader_batches(cfg, device: torch.device, labelled: bool):
    """Batches from the training pipeline over random slices of the profile's prepared size."""
    size = cfg.data.size or (192 if cfg.data.crop == 160 else cfg.data.crop + 2 * cfg.data.jitter)
    g = torch.Generator().manual_seed(1 if labelled else 2)
    n = 300
    labels = torch.randint(0, 4, (n, size, size), generator=g, dtype=torch.uint8) if labelled else None
    stack = SliceStack(torch.rand(n, size, size, generator=g), labels, torch.zeros(n, dtype=torch.int64))
    ds = SliceCropDataset(stack, cfg.data.crop, cfg.data.jitter, seed=3 if labelled else 4)
    it = make_loader(
        ds, cfg.optim.batch_size, 0, loader_workers(cfg.data.num_workers, device), pin_memory=device.type == "cuda"
    )
    cl = cfg.runtime.channels_last
    while True:
        yield batch_to_device(next(it), device, cl)


def one_run(
    preset: str, profile: str, variant: str, device_name: str, steps: int, warmup: int, extra: dict[str, str]
) -> dict:
    """Time ``steps`` training steps after ``warmup`` steps in this process."""
    overrides = {**VARIANTS[variant], **extra}
    use_loader = overrides.pop("loader", "0") == "1"
    device = torch.device(device_name)
    cfg = build_config(preset, profile, {"runtime.device": device_name, **overrides})
    configure_backends(device, cfg.runtime)
    torch.manual_seed(0)
    method = build_method(cfg, 4).to(device)
    cl = cfg.runtime.channels_last
    if cl:
        method = method.to(memory_format=torch.channels_last)
    opts = method.configure_optimizers(cfg.optim, fused=cfg.runtime.fused_adam)
    model = compile_module(method, cfg.runtime, device)
    graphs = uses_cudagraphs(cfg.runtime, device)
    b, crop = cfg.optim.batch_size, cfg.data.crop
    if use_loader:
        src_it, tgt_it = _loader_batches(cfg, device, True), _loader_batches(cfg, device, False)
    else:
        fixed = (
            batch_to_device(synthetic_batch(b, crop, 4, "cpu"), device, cl),
            batch_to_device(synthetic_batch(b, crop, 4, "cpu", labelled=False), device, cl),
        )
        src_it, tgt_it = iter(lambda: fixed[0], None), iter(lambda: fixed[1], None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> torch.Tensor:
        losses = optimisation_step(
            method, opts, next(src_it), next(tgt_it), device, cfg.runtime.amp, graphs, forward=model
        )
        return losses["total"].detach().clone()

    t = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - t
    for _ in range(max(0, warmup - 1)):
        step()
    _sync(device)
    t = time.perf_counter()
    totals = [step() for _ in range(steps)]  # no host sync inside the timed loop
    _sync(device)
    s_step = (time.perf_counter() - t) / steps
    cx = measure(cfg, 4)
    mem = (
        torch.cuda.max_memory_allocated(device)
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "variant": variant,
        "overrides": VARIANTS[variant],
        "preset": preset,
        "profile": profile,
        "batch": b,
        "crop": crop,
        "steps_timed": steps,
        "warmup": warmup,
        "s_per_step": round(s_step, 5),
        "images_per_s": round(2 * b / s_step, 1),
        "first_step_s": round(first, 2),
        "step_tflop": round(cx.step_flops / 1e12, 4),
        "achieved_tflops": _sig(cx.step_flops / s_step / 1e12),
        "peak_memory_gib": round(mem / 2**30, 2),
        "last_loss": float(totals[-1]),
        "loss_finite": bool(torch.isfinite(torch.stack(totals)).all()),
    }


def reference_step(script: Path, device: str, batch: int, steps: int, warmup: int, amp: str) -> dict:
    """The authors' step through their harness (one JSON line on stdout), or the reason it did not run."""
    cmd = [
        sys.executable,
        str(script),
        "--device",
        device,
        "--batch",
        str(batch),
        "--steps",
        str(steps),
        "--warmup",
        str(warmup),
        "--amp",
        amp,
        "--quiet",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        return {"amp": amp, "error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["command"] = " ".join(["python", repo_relative(str(script)), *cmd[2:]])
    return res


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _print_row(res: dict, peaks: dict[str, float]) -> None:
    tag = "bf16" if res["overrides"].get("runtime.amp") == "bf16" else "tf32"
    conv_peak = peaks[f"conv3x3_{tag}_tflops"]
    res["share_of_conv_peak"] = _sig(res["achieved_tflops"] / conv_peak, 3) if conv_peak else None
    res["peak_compared_with"] = f"conv3x3_{tag}"
    print(
        f"{res['variant']:<28} {res['s_per_step']:8.4f} s/step {res['images_per_s']:8.1f} images/s "
        f"{res['achieved_tflops']:7.3g} TFLOP/s ({100 * (res['share_of_conv_peak'] or 0):4.1f}% of {tag} conv peak)"
        f"  first step {res['first_step_s']:6.1f} s  peak mem {res['peak_memory_gib']:.2f} GiB"
        + ("" if res["loss_finite"] else "  LOSS NOT FINITE"),
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (cpu: to check the script)")
    ap.add_argument("--preset", default="udavae++")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"comma-separated, from: {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (default 20)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first, the first one timed alone")
    ap.add_argument(
        "--reference",
        default=str(DEFAULT_REFERENCE),
        help="the authors' step harness ref_step.py ('' to skip); default .gpu/reference/ref_step.py",
    )
    ap.add_argument("--json", help="results file (default benchmarks/results/gpu_<gpu name>.json)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant in this process
    ap.add_argument("overrides", nargs="*", help="config key=value overrides added to every variant")
    args = ap.parse_args()
    extra = parse_overrides(args.overrides)
    if args.one:
        print(json.dumps(one_run(args.preset, args.profile, args.one, args.device, args.steps, args.warmup, extra)))
        return
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to PyTorch (use --device cpu to check the script)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu {platform.processor() or ''}"
    peaks = measured_peaks(device)
    print(f"{name}: measured peaks (TFLOP/s): " + ", ".join(f"{k[:-7]} {v}" for k, v in peaks.items()), flush=True)
    cfg = build_config(args.preset, args.profile, {"runtime.device": args.device, **extra})
    results = {
        "gpu": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "command": " ".join(["python", *map(repo_relative, sys.argv)]),
        "measured_peak_tflops": peaks,
        "preset": args.preset,
        "profile": args.profile,
        "batch": cfg.optim.batch_size,
        "crop": cfg.data.crop,
        "training": [],
        "reference": [],
    }
    for variant in variants:
        r = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                variant,
                "--device",
                args.device,
                "--preset",
                args.preset,
                "--profile",
                args.profile,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                *args.overrides,
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode:
            err = (r.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"{variant:<28} FAILED: {err}", flush=True)
            results["training"].append({"variant": variant, "error": err})
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        _print_row(res, peaks)
        results["training"].append(res)
    script = Path(args.reference) if args.reference else None
    if script is not None and script.is_file():
        for amp in ("none", "bf16"):
            ref = reference_step(script, args.device, cfg.optim.batch_size, args.steps, args.warmup, amp)
            results["reference"].append(ref)
            if "error" in ref:
                print(f"authors' step ({amp}): FAILED: {ref['error']}", flush=True)
            else:
                print(
                    f"authors' step ({amp}): {ref['median_s_per_step']:.4f} s/step {ref['images_per_s']:.1f} "
                    f"images/s, peak mem {ref['peak_mem_gib'] or 0:.2f} GiB",
                    flush=True,
                )
    elif script is not None:
        print(f"authors' step skipped: {script} not found (copy ../shared/device/reference there)", flush=True)
    out = Path(args.json) if args.json else REPO / "benchmarks" / "results" / f"gpu_{_slug(name)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, results)
    print(f"wrote {repo_relative(str(out))}")


if __name__ == "__main__":
    main()

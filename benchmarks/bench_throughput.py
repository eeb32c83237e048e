"""Training throughput, peak memory, inference and metric time (a benchmark, not a test).

For each profile (default: paper and cpu, preset udavae++) a fresh subprocess times a few training steps on a
synthetic batch of the profile's size (speed does not depend on the pixel values): s/step, images/s (source +
target crops), peak resident memory, FLOPs per step (counted on the meta device) and the fraction of the
machine's measured fp32 conv / matmul peak. It then times whole-volume inference of one LGE-sized volume
(192x192x15) and the metrics of one patient.

    python benchmarks/bench_throughput.py [--profiles paper,cpu] [--steps 3] [--json benchmarks/results/throughput.json]
    python benchmarks/bench_throughput.py --profiles cpu runtime.amp=bf16 runtime.channels_last=true
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from udavae.config import parse_overrides
from udavae.engine.runtime import autocast, reexec_with_allocator_env
from udavae.methods import build_method, make_optimizers
from udavae.methods.presets import build_config
from udavae.models.complexity import measure, synthetic_batch


def _peak_gflops() -> dict[str, float]:
    """Measured fp32 throughput of a large 3x3 conv (fwd) and a 2048^2 matmul on this machine."""
    x = torch.randn(12, 128, 80, 80)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    flops_conv = 2 * 12 * 128 * 128 * 9 * 80 * 80
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    with torch.no_grad():
        for _ in range(2):
            conv(x), a @ b
        t = time.perf_counter()
        for _ in range(5):
            conv(x)
        conv_s = (time.perf_counter() - t) / 5
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        mm_s = (time.perf_counter() - t) / 5
    return {"conv3x3_gflops": flops_conv / conv_s / 1e9, "matmul_gflops": 2 * 2048**3 / mm_s / 1e9}


def one_profile(preset: str, profile: str, steps: int, overrides: dict[str, str]) -> dict:
    """Time ``steps`` training steps (after one warm-up step) in this process."""
    cfg = build_config(preset, profile, {"runtime.device": "cpu", **overrides})
    torch.manual_seed(0)
    method = build_method(cfg, 4)
    opts = make_optimizers(method, cfg.optim)
    b, crop = cfg.optim.batch_size, cfg.data.crop
    cl = cfg.runtime.channels_last
    if cl:
        method = method.to(memory_format=torch.channels_last)
    src = synthetic_batch(b, crop, 4, "cpu")
    tgt = synthetic_batch(b, crop, 4, "cpu", labelled=False) if method.needs_target else None
    if cl:
        for bt in (src, tgt):
            if bt is not None:
                bt["image"] = [t.contiguous(memory_format=torch.channels_last) for t in bt["image"]]
    dev = torch.device("cpu")
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        with autocast(dev, cfg.runtime.amp):
            losses = method(src, tgt)
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        losses["total"].backward()
        for o in opts.values():
            o.step()
        if i:
            times.append(time.perf_counter() - t)
    s_step = float(np.median(times))
    images = b * (2 if tgt is not None else 1)
    cx = measure(cfg, 4)
    peak = _peak_gflops()
    achieved = cx.step_flops / s_step / 1e9
    return {
        "preset": preset, "profile": profile, "overrides": overrides, "batch": b, "crop": crop,
        "base_width": cfg.model.base_width, "steps_timed": steps, "s_per_step": round(s_step, 3),
        "images_per_s": round(images / s_step, 3), "peak_rss_gib": round(resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "step_tflop": round(cx.step_flops / 1e12, 4), "achieved_gflops": round(achieved, 1),
        **{k: round(v, 1) for k, v in peak.items()},
        "fraction_of_conv_peak": round(achieved / peak["conv3x3_gflops"], 3),
        "fraction_of_matmul_peak": round(achieved / peak["matmul_gflops"], 3),
    }


def inference_and_metrics(profile: str) -> dict:
    """Whole-volume inference of a 192x192x15 volume and the metrics of one patient."""
    from udavae.data.preprocessing import Preprocessing
    from udavae.engine.inference import Predictor
    from udavae.evaluation.metrics import multiclass_metrics

    cfg = build_config("udavae++", profile, {"runtime.device": "cpu"})
    net = build_method(cfg, 4).net.eval()
    prep = Preprocessing(size=(192, 192))
    vol = np.random.default_rng(0).random((192, 192, 15)).astype(np.float32)
    slices, geom = prep.image(vol, (0.76, 0.76, 5.0))
    pred = Predictor(net, prep, torch.device("cpu"), batch_size=16)
    pred.predict(slices[:2], prep.geometry((192, 192, 2), (1, 1, 1)))  # warm-up
    t = time.perf_counter()
    out = pred.predict(slices, geom).classes
    infer_s = time.perf_counter() - t
    gt = np.zeros_like(out)
    gt[60:130, 60:130] = 1
    gt[75:115, 75:115] = 2
    gt[40:70, 100:150] = 3
    out = np.roll(gt, 3, axis=0)
    t = time.perf_counter()
    multiclass_metrics(out, gt, (0.76, 0.76, 5.0), {1: "MYO", 2: "LV", 3: "RV"})
    return {"profile": profile, "inference_s_per_lge_volume": round(infer_s, 3), "volume": "192x192x15",
            "metrics_s_per_patient": round(time.perf_counter() - t, 4)}


def main() -> None:
    reexec_with_allocator_env(sys.argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="udavae++")
    ap.add_argument("--profiles", default="paper,cpu")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one profile in this process
    ap.add_argument("overrides", nargs="*", help="config key=value overrides (e.g. runtime.amp=bf16)")
    args = ap.parse_args()
    over = parse_overrides(args.overrides)
    if args.one:
        print(json.dumps(one_profile(args.preset, args.one, args.steps, over)))
        return
    results = {"hardware": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                            "torch": torch.__version__, "python": platform.python_version()},
               "command": " ".join(["python", *sys.argv]), "training": [], "inference": []}
    for prof in args.profiles.split(","):
        # a fresh process per profile, so peak memory is that profile's own
        r = subprocess.run([sys.executable, __file__, "--one", prof, "--preset", args.preset,
                            "--steps", str(args.steps), *args.overrides], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        results["training"].append(res)
        print(f"{prof:>6}: {res['s_per_step']:.2f} s/step, {res['images_per_s']:.2f} images/s, "
              f"{res['step_tflop']:.3f} TFLOP/step = {res['achieved_gflops']:.0f} GFLOP/s "
              f"({100 * res['fraction_of_conv_peak']:.0f}% of measured conv peak "
              f"{res['conv3x3_gflops']:.0f} GFLOP/s), peak RSS {res['peak_rss_gib']:.2f} GiB")
        inf = inference_and_metrics(prof)
        results["inference"].append(inf)
        print(f"{prof:>6}: inference {inf['inference_s_per_lge_volume']:.2f} s per LGE volume, "
              f"metrics {inf['metrics_s_per_patient']:.3f} s per patient")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

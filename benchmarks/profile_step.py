"""Where the time of one training step goes: torch.profiler's per-operator table (a tool, not a test).

Builds the preset at the profile's size on synthetic batches, runs a warm-up step, times one step and
prints the operators sorted by their own CPU time (convolution forward / backward vs the element-wise rest).

    python benchmarks/profile_step.py [--preset udavae++] [--profile paper] [--rows 25] [key=value ...]
    python benchmarks/profile_step.py --profile paper runtime.amp=bf16
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from udavae.config import parse_overrides
from udavae.engine.runtime import reexec_with_allocator_env
from udavae.engine.step import optimisation_step
from udavae.methods import build_method
from udavae.methods.presets import build_config
from udavae.models.complexity import synthetic_batch


def main() -> None:
    reexec_with_allocator_env(sys.argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="udavae++")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("overrides", nargs="*", help="config key=value overrides (e.g. runtime.amp=bf16)")
    args = ap.parse_args()
    cfg = build_config(args.preset, args.profile, {"runtime.device": "cpu", **parse_overrides(args.overrides)})
    torch.manual_seed(0)
    method = build_method(cfg, 4)
    opts = method.configure_optimizers(cfg.optim)
    b, crop = cfg.optim.batch_size, cfg.data.crop
    src = synthetic_batch(b, crop, 4, "cpu")
    tgt = synthetic_batch(b, crop, 4, "cpu", labelled=False) if method.needs_target else None
    dev = torch.device("cpu")

    def step() -> None:
        optimisation_step(method, opts, src, tgt, dev, cfg.runtime.amp)

    for name in ("warm-up", "timed"):
        t = time.perf_counter()
        step()
        print(f"{name} step: {time.perf_counter() - t:.2f} s", flush=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    print(
        f"profiled step: {total / 1e6:.2f} s of operator time, convolutions {conv / 1e6:.2f} s, "
        f"the rest {(total - conv) / 1e6:.2f} s"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))


if __name__ == "__main__":
    main()

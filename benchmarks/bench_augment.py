"""Cost of each augmentation per training step, beside noadapt's, in one run (a benchmark, not a test).

For each preset: the real data pipeline of the ``cpu`` profile on MS-CMRSeg (crops drawn and augmented by the
data layer in the main process, then the batch-level stage on the device) and the method's real step; the
median seconds per step over ``--steps`` steps after ``--warmup`` steps, and the ratio to noadapt's.

    python benchmarks/bench_augment.py [--presets noadapt,noadapt-aug,slaug,gin-ipa] [--steps 20] \
        [--dataset benchmarks/work/mscmrseg] [--json benchmarks/results/augment_cost.json]

A preset may carry config overrides after a colon, e.g. ``slaug:augment.slaug_views=fused``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from common import cpu_description, repo_relative

from udavae.augment import SourceAugmenter
from udavae.config import STANDARD_AUGMENTATION
from udavae.data.sampling import make_loader
from udavae.engine.step import batch_to_device, optimisation_step
from udavae.engine.trainer import prepare_data
from udavae.fileio import write_json
from udavae.methods import build_method
from udavae.methods.presets import build_config

HERE = Path(__file__).resolve().parent
#: Presets timed as published, without the standard augmentation the cpu profile switches on (as the rows of the
#: results tables; noadapt-aug is the row with it).
AS_PUBLISHED = ("noadapt", "udavae++")
PIN = dict.fromkeys(STANDARD_AUGMENTATION, False)


def time_preset(spec: str, dataset: str, steps: int, warmup: int) -> dict:
    """Median and spread of the seconds per step (data + augmentation + step) of ``PRESET[:key=value;...]``."""
    preset, _, extra = spec.partition(":")
    overrides = dict(kv.split("=", 1) for kv in extra.split(";") if kv)
    base = {"data.dataset": dataset, "runtime.device": "cpu", "data.num_workers": 0}
    if preset in AS_PUBLISHED:
        base.update(PIN)
    cfg = build_config(preset, "cpu", {**base, **overrides})
    torch.manual_seed(0)
    data = prepare_data(cfg)
    method = build_method(cfg, data.spec.labels.num_classes)
    opts = method.configure_optimizers(cfg.optim)
    aug = SourceAugmenter(cfg.augment, 0, pairs=method.view_pairs)
    aug.attach(opts)
    bs = cfg.optim.batch_size
    src_it = make_loader(data.source, bs)
    tgt_it = make_loader(data.target, bs) if method.needs_target else None
    dev = torch.device("cpu")
    times = []
    method.train()
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        src = aug(batch_to_device(next(src_it), dev), method, i)
        tgt = batch_to_device(next(tgt_it), dev) if tgt_it is not None else None
        optimisation_step(method, opts, src, tgt, dev, "none", step=i)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="noadapt,noadapt-aug,slaug,gin-ipa")
    ap.add_argument("--dataset", default=str(HERE / "work" / "mscmrseg"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", default=str(HERE / "results" / "augment_cost.json"))
    args = ap.parse_args()
    rows = {}
    for preset in args.presets.split(","):
        rows[preset] = time_preset(preset, args.dataset, args.steps, args.warmup)
        print(
            f"{preset:>16}: {rows[preset]['median_s']:.3f} s/step (min {rows[preset]['min_s']:.3f}, "
            f"max {rows[preset]['max_s']:.3f})",
            flush=True,
        )
    base = rows.get("noadapt", {}).get("median_s")
    if base:
        for preset, r in rows.items():
            r["ratio_to_noadapt"] = r["median_s"] / base
            print(f"{preset:>16}: {r['ratio_to_noadapt']:.2f}x noadapt")
    write_json(
        Path(args.json),
        {
            "what": "seconds per training step (data pipeline + augmentation + the method's step), cpu profile, "
            "MS-CMRSeg C0 -> LGE, batch 12, one process",
            "command": "python benchmarks/bench_augment.py --presets " + args.presets + f" --steps {args.steps}",
            "machine": {
                "cpu": cpu_description(),
                "threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
            "dataset": repo_relative(args.dataset),
            "presets": rows,
        },
    )


if __name__ == "__main__":
    main()

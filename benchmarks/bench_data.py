"""Data pipeline benchmark on the real MS-CMRSeg volumes (not a test).

Prints (and optionally writes as JSON): the time to load and preprocess all 80 volumes (35 C0 + 45 LGE), and
the time per batch of 12 source + 12 target 160x160 crops with their 1/2 and 1/4 pyramids.

    python benchmarks/bench_data.py [--data ../shared/data/mscmrseg/Patch192] [--json benchmarks/results/data.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from udavae.data.importers import import_mscmrseg
from udavae.data.sampling import SliceCropDataset, make_loader
from udavae.data.volumes import SliceStack, load_cases
from udavae.engine.runtime import reexec_with_allocator_env

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mscmrseg" / "Patch192"


def main() -> None:
    reexec_with_allocator_env(sys.argv)  # as the CLI does: keep freed memory in the heap
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT))
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--json", help="write the figures to this JSON file")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = import_mscmrseg(args.data, Path(tmp) / "ms", link=True)
        t0 = time.perf_counter()
        src = load_cases(spec, spec.cases("C0"), with_labels=True)
        tgt = load_cases(spec, spec.cases("LGE"), with_labels=False)
        load_s = time.perf_counter() - t0
    n_vol = len(src) + len(tgt)
    s_ds = SliceCropDataset(SliceStack.from_cases(src, True), 160, 16, seed=1)
    t_ds = SliceCropDataset(SliceStack.from_cases(tgt, False), 160, 16, seed=2)
    s_it, t_it = make_loader(s_ds, args.batch_size), make_loader(t_ds, args.batch_size)
    for _ in range(5):  # warm-up
        next(s_it), next(t_it)
    t0 = time.perf_counter()
    for s, t in itertools.islice(zip(s_it, t_it), args.batches):
        assert s["label"][2].shape[-1] == 40 and t["image"][2].shape[-1] == 40
    per_batch_ms = 1000 * (time.perf_counter() - t0) / args.batches
    res = {
        "volumes": n_vol,
        "slices_source": len(s_ds),
        "slices_target": len(t_ds),
        "load_all_volumes_s": round(load_s, 3),
        "batch": f"{args.batch_size} source + {args.batch_size} target crops 160x160 + 1/2, 1/4 pyramids",
        "ms_per_batch": round(per_batch_ms, 3),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
    }
    print(f"loaded and preprocessed {n_vol} volumes ({len(s_ds)} + {len(t_ds)} slices) in {load_s:.2f} s")
    print(f"one batch of {res['batch']}: {per_batch_ms:.2f} ms (main process, no workers)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""``udavae demo``: the whole job on embedded synthetic data, no download.

Generates two-domain short-axis phantoms, trains ``noadapt`` and ``udavae++`` at a tiny CPU size,
evaluates both on the synthetic target test split, prints the comparison table and writes figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# Demo budget: a few minutes on 2 CPU cores. Same schedule and seed for both methods.
DEMO_OVERRIDES: dict[str, object] = {
    "model.base_width": 8,
    "model.recon_width": 16,
    "data.crop": 64,
    "data.jitter": 8,
    "optim.batch_size": 8,
    "optim.epochs": 6,
    "optim.iters_per_epoch": 40,
    "optim.lr": 2e-3,
    "optim.lr_decay": 0.9,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="generate synthetic data, train NoAdapt and UDA-VAE++, compare", description=__doc__
    )
    p.add_argument("--out", default="demo_out", help="output folder (default ./demo_out)")
    p.add_argument("--epochs", type=int, help="epochs per method (default 6)")
    p.add_argument("--iters-per-epoch", type=int, help="iterations per epoch (default 40)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--methods", default="noadapt,udavae++", help="comma-separated presets to compare")
    p.set_defaults(func=run, tune_malloc=True)


def run(args: argparse.Namespace) -> int:
    from udavae.data.spec import SPEC_FILE, DatasetSpec
    from udavae.data.synthetic import generate_dataset
    from udavae.engine.trainer import train
    from udavae.evaluation.evaluate import format_table
    from udavae.fileio import ensure_writable_dir, write_json
    from udavae.layout import checkpoint_file
    from udavae.methods.presets import build_config

    out = ensure_writable_dir(args.out)
    data = out / "data"
    if (data / SPEC_FILE).is_file():
        spec = DatasetSpec.load(data)
        print(f"using the synthetic dataset in {data}")
    else:
        print(f"generating synthetic two-domain phantoms in {data} ...")
        spec = generate_dataset(data, seed=args.seed)
    names = list(spec.labels.class_names.values())
    over = dict(DEMO_OVERRIDES)
    if args.epochs:
        over["optim.epochs"] = args.epochs
    if args.iters_per_epoch:
        over["optim.iters_per_epoch"] = args.iters_per_epoch
    over.update({"data.dataset": str(data), "runtime.device": args.device, "runtime.seed": args.seed})
    results = {}
    for preset in [m.strip() for m in args.methods.split(",") if m.strip()]:
        run_dir = out / "runs" / preset
        cfg = build_config(preset, "tiny", over)
        print(f"\n== training {preset} ({cfg.optim.epochs} epochs x {cfg.optim.iters_per_epoch} iterations) ==")
        t0 = time.time()
        resume = checkpoint_file(run_dir, "last").is_file()
        fit = train(cfg, run_dir, resume=resume)
        print(f"trained {preset} in {time.time() - t0:.0f}s; best validation epoch {fit['best_epoch']}")
        results[preset] = _evaluate_and_report(run_dir)
    table = format_table(results, names, "dice", title="\nSynthetic target (LGE-like) test split, Dice %")
    print(table)
    write_json(out / "comparison.json", {k: v for k, v in results.items()})
    print(f"\nfigures in {out / 'runs'}/*/report, metrics in {out / 'runs'}/*/eval")
    return 0


def _evaluate_and_report(run_dir: Path) -> dict:
    """Evaluate the best checkpoint on the target test split and write the report figures."""
    from udavae.engine.evaluate import evaluate_run
    from udavae.engine.model_folder import open_model
    from udavae.layout import report_folder
    from udavae.reports.figures import make_report

    summary, _ = evaluate_run(open_model(run_dir), split="test", verbose=False)
    make_report(run_dir, report_folder(run_dir))
    return summary

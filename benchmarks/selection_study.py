"""Per-epoch study of checkpoint selection: for every kept epoch (and its EMA) of the runs of a sweep, the Dice
of every labelled target case and the label-free scores of every target case (no label read for those).

Reads runs trained with ``train.keep_epochs=true`` (and ``train.ema``), e.g. the sweep of
benchmarks/cpu_sweep_c0_lge.yaml, and writes one compact JSON per run (benchmarks/results/selection/<run>.json);
``benchmarks/selection_table.py`` then turns them into the tables and figures of docs/selection.md.

    python benchmarks/selection_study.py benchmarks/work/sweep_c0_lge [--out benchmarks/results/selection] \
        [--runs slaug_seed0,...] [--no-tta]

Each run's file is named by its group (the sweep's group, else its preset; ``--label`` for one run, e.g. an older
version of a preset) and seed. A run already written is skipped unless ``--force``; another run with the same
group and seed is refused; a run whose training has not finished is skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import repo_relative

from udavae.data.spec import DatasetSpec
from udavae.data.volumes import load_cases
from udavae.engine import model_folder as mf
from udavae.engine.inference import Predictor
from udavae.engine.labelfree import TTA, case_scores
from udavae.evaluation.metrics import dice_per_class
from udavae.fileio import write_json

HERE = Path(__file__).resolve().parent


def _checkpoints(run: Path, epochs: int, ema_every_epoch: bool) -> list[tuple[int, str, str]]:
    """Every epoch's weights; the EMA of the last epoch (of every epoch with ``ema_every_epoch``)."""
    out = []
    for e in range(1, epochs + 1):
        for variant, ema in (("raw", False), ("ema", True)):
            name = mf.epoch_checkpoint(e, ema)
            if mf.checkpoint_path(run, name).is_file() and (not ema or ema_every_epoch or e == epochs):
                out.append((e, variant, name))
    return out


def label_free_set(case_ids: list[str], n: int, seed: int) -> list[str]:
    """The fixed subset of the target pool the per-epoch label-free scores are computed on (seeded)."""
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(case_ids, size=min(n, len(case_ids)), replace=False).tolist())


def study_run(run: Path, tta: bool, n_label_free: int, ema_every_epoch: bool) -> dict:
    """Every kept checkpoint of ``run`` on every target case (and the source's C0/val cases as source Dice).

    Every case gets its Dice and the scores of one prediction (entropy, plausibility, SND); the test-time
    agreement (4 more passes) is computed on the label-free set at every epoch and on every case at the last.
    """
    cfg, info = mf.read_model_folder(run)
    spec = DatasetSpec.load(cfg.data.dataset)
    from udavae.engine.trainer import run_preprocessing

    prep = run_preprocessing(cfg, spec)
    tgt = spec.cases(cfg.data.target)
    splits = {cid: name for name, ids in spec.splits.get(cfg.data.target, {}).items() for cid in ids}
    cases = load_cases(spec, tgt, prep, with_labels=True, desc="target")
    src_val = spec.splits.get(cfg.data.source, {}).get("val", [])
    src_cases = load_cases(spec, [c for c in spec.cases(cfg.data.source) if c.id in src_val], prep, True, desc="source")
    names = info.labels.class_names
    k = info.num_classes
    lf_set = label_free_set([c.id for c in cases], n_label_free, cfg.runtime.seed)
    out = {
        "run": run.name,
        "preset": cfg.preset,
        "seed": cfg.runtime.seed,
        "epochs": cfg.optim.epochs,
        "class_names": [names[i] for i in range(1, k)],
        "splits": splits,
        "tta": tta,
        "transforms": [t[0] for t in TTA] if tta else [],
        "label_free_set": lf_set,
        "checkpoints": [],
    }
    log = json.loads("[" + ",".join((run / "log.jsonl").read_text().splitlines()) + "]")
    out["log"] = [{key: r.get(key) for key in ("epoch", "val/dice_mean", "loss/total", "train_time_s")} for r in log]
    for epoch, variant, name in _checkpoints(run, cfg.optim.epochs, ema_every_epoch):
        t0 = time.time()
        _, _, method, _ = mf.load_trained(run, name, "cpu")
        pred = Predictor(method.net, prep, torch.device("cpu"), batch_size=32)
        rows = []
        for case in cases:
            sc = case_scores(pred, case, names, tta=tta and (case.id in lf_set or epoch == cfg.optim.epochs))
            row = sc.to_row()
            dice = dice_per_class(sc.classes, case.native_label, k)
            row.update({f"dice_{names[i + 1]}": float(d) for i, d in enumerate(dice)})
            row["split"] = splits.get(case.id, "")
            rows.append(row)
        src_dice = [
            float(np.nanmean(dice_per_class(pred.predict(c.image, c.geometry).classes, c.native_label, k)))
            for c in src_cases
        ]
        out["checkpoints"].append(
            {
                "epoch": epoch,
                "variant": variant,
                "cases": rows,
                "source_dice": float(np.mean(src_dice)) if src_dice else None,
            }
        )
        print(f"{run.name} {name}: {time.time() - t0:.0f}s", flush=True)
    return out


def _group(run: Path, preset: str) -> str:
    """The run's group in its sweep (``sweep_run.json``), else its preset."""
    record = run / "sweep_run.json"
    group = json.loads(record.read_text()).get("group") if record.is_file() else None
    return group or preset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="sweep folder (runs under SWEEP/runs) or one run folder")
    ap.add_argument("--out", default=str(HERE / "results" / "selection"))
    ap.add_argument("--runs", default="", help="comma-separated run names (default: every finished run)")
    ap.add_argument("--no-tta", action="store_true", help="skip the test-time transforms (no agreement score)")
    ap.add_argument("--label-free-cases", type=int, default=10, help="size of the label-free set (default 10)")
    ap.add_argument("--ema-every-epoch", action="store_true", help="also every epoch's EMA (default: the last)")
    ap.add_argument("--label", default="", help="group name of the study's one run (default: sweep group or preset)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's; 1 beside training)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    root = Path(args.sweep)
    runs = sorted((root / "runs").iterdir()) if (root / "runs").is_dir() else [root]
    wanted = set(filter(None, args.runs.split(",")))
    runs = [r for r in runs if not wanted or r.name in wanted]
    if args.label and len(runs) != 1:
        raise SystemExit(f"--label names one run; {len(runs)} selected (use --runs)")
    if args.threads:
        torch.set_num_threads(args.threads)
    for run in runs:
        cfg, _ = mf.read_model_folder(run)
        group = args.label or _group(run, cfg.preset)
        dest = Path(args.out) / f"{group}_seed{cfg.runtime.seed}.json"
        source = repo_relative(str(run.resolve()))
        last = mf.checkpoint_path(run, mf.epoch_checkpoint(cfg.optim.epochs))
        if not last.is_file():
            continue
        if dest.is_file():
            recorded = json.loads(dest.read_text()).get("source")
            if recorded not in (None, source):
                raise SystemExit(f"{dest} studies another run ({recorded}); give {source} a --label")
            if not args.force:
                continue
        result = study_run(run, not args.no_tta, args.label_free_cases, args.ema_every_epoch)
        result.update({"group": group, "source": source})
        result["command"] = (
            "python benchmarks/selection_study.py " + repo_relative(str(root.resolve())) + " --runs " + run.name
        ) + (f" --label {args.label}" if args.label else "")
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_json(dest, result)
        print(f"wrote {dest}", file=sys.stderr)


if __name__ == "__main__":
    main()

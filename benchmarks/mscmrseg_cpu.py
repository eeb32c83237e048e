"""MS-CMRSeg on this CPU, either direction: train each method with one budget and protocol, evaluate, record.

For each method: ``udavae train --profile cpu`` (same seed, schedule and data for all), model selection on the
target's validation patients 1-5 only, then the selected ("best") and the last checkpoint evaluated on the
target's test patients (LGE 6-45, or C0 6-35 with ``--direction lge-c0``) and the selected one on the validation
patients, at the native resolution. Results are merged into the JSON file, so methods can be run one at a time
(a killed run resumes from its last epoch).

    python benchmarks/mscmrseg_cpu.py --methods noadapt,uda-vae,udavae++ [--direction c0-lge|lge-c0] \
        [--data ../shared/data/mscmrseg/Patch192] [--work benchmarks/work] \
        [--json benchmarks/results/mscmrseg_<source>_to_<target>_cpu.json] [--seed N --tag T] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import cpu_description, repo_relative

HERE = Path(__file__).resolve().parent
#: direction -> (source, target, run folder under --work, protocol recorded in the JSON).
DIRECTIONS = {
    "c0-lge": (
        "C0",
        "LGE",
        "runs",
        "source: 35 C0 volumes (labelled); target training pool: all 45 LGE images, labels unused "
        "(transductive, as the published code); model selection: mean validation Dice on LGE patients 1-5; "
        "reported: LGE patients 6-45",
    ),
    "lge-c0": (
        "LGE",
        "C0",
        "runs_lge_to_c0",
        "source: all 45 LGE volumes (labelled); target training pool: all 35 C0 images, labels unused "
        "(transductive); model selection: mean validation Dice on C0 patients 1-5; reported: C0 patients "
        "6-35",
    ),
}
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "mscmrseg" / "Patch192"


def _summary(s: dict) -> dict:
    """Dice (%), ASSD, HD95 and HD (mm) per structure: mean, std, and missed counts."""
    out = {}
    for name, m in s["structures"].items():
        out[name] = {
            "dice_mean": 100 * m["dice"]["mean"],
            "dice_std": 100 * m["dice"]["std"],
            "assd_mean": m["assd"]["mean"],
            "assd_std": m["assd"]["std"],
            "assd_missing": m["assd"]["n_missing"],
            "hd95_mean": m["hd95"]["mean"],
            "hd_mean": m["hd"]["mean"],
        }
    out["mean_dice"] = 100 * s["mean_dice"]
    return out


def _raw_and_post(s: dict) -> tuple[dict, dict]:
    """The raw masks' summary (comparable with runs before post-processing existed) and the post-processed
    one with the decision taken on the validation patients (the same dict when nothing was filtered)."""
    post = _summary(s)
    post["postprocessing"] = s.get("postprocessing")
    return _summary(s.get("raw") or s), post


def main() -> None:
    from udavae.engine.runtime import reexec_with_allocator_env

    reexec_with_allocator_env(sys.argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="noadapt,uda-vae,udavae++")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--work", default=str(HERE / "work"))
    ap.add_argument(
        "--direction",
        choices=list(DIRECTIONS),
        default="c0-lge",
        help="c0-lge: bSSFP -> LGE (the deck's Table 2); lge-c0: LGE -> bSSFP (Table 1)",
    )
    ap.add_argument("--json", help="results file (default benchmarks/results/mscmrseg_<src>_to_<tgt>_cpu.json)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--tag",
        default="",
        help="suffix of the result key and run folder, e.g. 'bf16' records "
        "'udavae++@bf16' beside 'udavae++' (for a variant run with different overrides)",
    )
    ap.add_argument("overrides", nargs="*", help="config key=value overrides, applied to every method")
    args = ap.parse_args()

    from udavae.data.importers import import_mscmrseg
    from udavae.data.spec import SPEC_FILE
    from udavae.engine.evaluate import evaluate_run
    from udavae.engine.model_folder import load_checkpoint, open_model

    source, target, runs, protocol = DIRECTIONS[args.direction]
    work = Path(args.work)
    dataset = work / "mscmrseg"
    spec_file = dataset / SPEC_FILE
    # Imports made before the C0 val/test splits existed lack them: import again (links only) for lge-c0.
    if not spec_file.is_file() or "val" not in json.loads(spec_file.read_text())["splits"].get(target, {}):
        work.mkdir(parents=True, exist_ok=True)
        import_mscmrseg(args.data, dataset, link=True)
    out_json = Path(args.json or HERE / "results" / f"mscmrseg_{source.lower()}_to_{target.lower()}_cpu.json")
    results = json.loads(out_json.read_text()) if out_json.is_file() else {"methods": {}}
    results["direction"] = f"{source} -> {target}"
    results["protocol"] = (
        f"{protocol}; metrics per patient on the 3-D volume at native resolution; 'test' = raw "
        "masks, 'test_postprocessed' = with the largest-component post-processing decided on "
        "the validation patients"
    )
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        key = f"{method}@{args.tag}" if args.tag else method
        run = work / runs / key
        cmd = [
            sys.executable,
            "-m",
            "udavae",
            "train",
            "--dataset",
            str(dataset),
            "--source",
            source,
            "--target",
            target,
            "--preset",
            method,
            "--profile",
            args.profile,
            "--out",
            str(run),
            "--device",
            args.device,
            "--seed",
            str(args.seed),
            *args.overrides,
        ]
        if (run / "checkpoints" / "last.pt").is_file():
            cmd.append("--resume")
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd).returncode
        if rc:
            raise SystemExit(f"training {method} failed with exit code {rc}")
        state = load_checkpoint(run / "checkpoints" / "last.pt")
        train_time = sum(r.get("train_time_s", 0.0) for r in state["history"])
        best = open_model(run, "best", args.device)
        best_test, _ = evaluate_run(best, "test", verbose=False)
        best_val, _ = evaluate_run(best, "val", verbose=False)
        last_test, _ = evaluate_run(open_model(run, "last", args.device), "test", verbose=False)
        test_raw, test_post = _raw_and_post(best_test)
        config = state["config"]
        config["data"]["dataset"] = repo_relative(config["data"]["dataset"])
        results["methods"][key] = {
            "test": test_raw,
            "test_postprocessed": test_post,
            "val": _raw_and_post(best_val)[0],
            "test_last_epoch": _raw_and_post(last_test)[0],
            "selected_epoch": state["best_epoch"],
            "epochs": state["epoch"],
            "training_wall_time_s": round(train_time, 1),
            "wall_time_this_call_s": round(time.time() - t0, 1),
            "seed": args.seed,
            "profile": args.profile,
            "config": config,
            "command": " ".join(["udavae", *(repo_relative(c) for c in cmd[3:])]),
            "hardware": f"{cpu_description()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__,
        }
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=2) + "\n")
        r = results["methods"][key]
        print(
            f"{key}: test Dice MYO/LV/RV "
            + " / ".join(f"{r['test'][s]['dice_mean']:.2f}" for s in ("MYO", "LV", "RV"))
            + f" (selected epoch {r['selected_epoch']}, {train_time / 60:.1f} min)",
            flush=True,
        )


if __name__ == "__main__":
    main()

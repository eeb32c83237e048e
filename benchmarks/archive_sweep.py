"""Copy the small files of a sweep's finished runs (no weights) into benchmarks/results, to be committed.

A run's record is its configuration, training log, selection record, post-processing choice and evaluations
(per-case CSVs and summaries): enough for ``udavae compare`` and the docs' tables, a few hundred kB per run.
Checkpoints stay in the work folder.

    python benchmarks/archive_sweep.py benchmarks/work/sweep_c0_lge benchmarks/results/sweep_c0_lge
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

#: Files of a model folder that are kept (weights and predictions are not).
RUN_FILES = ("config.yaml", "model.json", "log.csv", "postprocessing.json", "selection.json", "sweep_run.json")
SWEEP_FILES = ("sweep.json", "status.json")


def archive(sweep: Path, dest: Path) -> list[str]:
    """Copy ``sweep``'s plan and status and every evaluated run's record to ``dest``; return the runs copied."""
    if not (sweep / "sweep.json").is_file():
        raise SystemExit(f"{sweep} is not a sweep folder (no sweep.json)")
    dest.mkdir(parents=True, exist_ok=True)
    for name in SWEEP_FILES:
        if (sweep / name).is_file():
            shutil.copy2(sweep / name, dest / name)
    status = json.loads((sweep / "status.json").read_text()) if (sweep / "status.json").is_file() else {}
    copied = []
    for run in sorted((sweep / "runs").glob("*")):
        if not (run / "eval").is_dir() or status.get(run.name, {}).get("state") != "done":
            continue  # not finished: a run still training may hold evaluations of an earlier attempt
        out = dest / "runs" / run.name
        out.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, out / name)
        for ev in sorted((run / "eval").iterdir()):
            if ev.is_dir():
                (out / "eval" / ev.name).mkdir(parents=True, exist_ok=True)
                for f in [*ev.glob("*.csv"), *ev.glob("*.json")]:
                    shutil.copy2(f, out / "eval" / ev.name / f.name)
        copied.append(run.name)
    return copied


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, help="the sweep folder (with sweep.json and runs/)")
    ap.add_argument("dest", type=Path, help="where the records go, e.g. benchmarks/results/sweep_c0_lge")
    args = ap.parse_args()
    runs = archive(args.sweep, args.dest)
    print(f"copied {len(runs)} run record(s) to {args.dest}: {', '.join(runs) or 'none evaluated yet'}")


if __name__ == "__main__":
    main()

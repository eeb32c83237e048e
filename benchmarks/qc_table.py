"""How well the per-case quality control tracked the true Dice on every evaluated run: the ``qc_check`` that
``udavae evaluate`` writes into summary.json (Spearman of ``qc_score`` with the case Dice, and how many of the
lowest-Dice quarter the ``doubtful`` flag caught), one row per run, as a markdown table and a JSON file.

Free beside the selection study: it reads the evaluations the sweep already made (the selected checkpoint), in
either direction, so it checks the per-case ranking on other networks and other patients than it was chosen on.

    python benchmarks/qc_table.py benchmarks/results/sweep_c0_lge benchmarks/results/sweep_lge_c0 \
        [--split test] [--json benchmarks/results/selection/qc_check.json]

A summary without ``qc_check`` (evaluated before it existed) is scored from its qc.csv, and marked "earlier" when
that qc.csv used the earlier per-case score (four test-time transforms, averaged with plausibility).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from common import repo_relative

from udavae.evaluation.qc import qc_check, read_qc_csv
from udavae.fileio import write_json

HERE = Path(__file__).resolve().parent


def run_folders(roots: list[Path]) -> list[Path]:
    """Every model folder (with model.json) under the given roots, or the roots themselves."""
    out: list[Path] = []
    for root in roots:
        found = [root] if (root / "model.json").is_file() else sorted(p.parent for p in root.glob("**/model.json"))
        out += [p for p in found if p not in out]
    return out


def check_of(run: Path, split: str) -> dict | None:
    """The run's QC check on ``split`` of its target (the selected checkpoint's evaluation), or None."""
    evals = sorted(p for p in (run / "eval").glob(f"*_{split}_*") if (p / "qc.csv").is_file())
    if not evals:
        return None
    folder = evals[0]
    summary = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").is_file() else {}
    check = summary.get("qc_check")
    definition = "current"
    if not check:
        rows = read_qc_csv(folder / "qc.csv")
        check = qc_check(rows)
        # the earlier qc_score averaged agreement (4 transforms) with plausibility; the current one is the
        # agreement (3 transforms), the two changed together: a qc.csv whose qc_score is its agreement is current
        if not all(math.isclose(r["qc_score"], r["agreement"], rel_tol=1e-4) for r in rows if "agreement" in r):
            definition = "earlier"
    sweep = json.loads((run / "sweep_run.json").read_text()) if (run / "sweep_run.json").is_file() else {}
    return {
        "run": run.name,
        "group": sweep.get("group") or summary.get("method") or run.name,
        "seed": summary.get("seed"),
        "domain": summary.get("domain") or folder.name.split("_")[0],
        "evaluation": repo_relative(str(folder.resolve())),
        "definition": definition,
        **{k: check.get(k) for k in ("n", "spearman", "worst_k", "worst_caught", "transforms")},
    }


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table, current definition first."""
    lines = [
        "| run | target | cases | Spearman | lowest-Dice cases flagged | definition |",
        "|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["definition"] != "current", r["domain"], r["group"], r["seed"] or 0)):
        rho = r["spearman"]
        rho_text = f"{rho:.2f}" if isinstance(rho, float) and math.isfinite(rho) else "n/a"
        lines.append(
            f"| {r['run']} | {r['domain']} | {r['n']} | {rho_text} | {r['worst_caught']} of {r['worst_k']} "
            f"| {r['definition']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("roots", nargs="+", type=Path, help="sweep folders, results folders or run folders")
    ap.add_argument("--split", default="test")
    ap.add_argument("--json", default=str(HERE / "results" / "selection" / "qc_check.json"))
    args = ap.parse_args()
    rows = [c for run in run_folders(args.roots) if (c := check_of(run, args.split)) is not None]
    if not rows:
        raise SystemExit(f"no evaluation of split {args.split!r} with a qc.csv under {', '.join(map(str, args.roots))}")
    print(markdown(rows))
    current = [r for r in rows if r["definition"] == "current" and isinstance(r["spearman"], float)]
    if current:
        mean_rho = sum(r["spearman"] for r in current) / len(current)
        caught = sum(r["worst_caught"] for r in current)
        total = sum(r["worst_k"] for r in current)
        print(f"\ncurrent definition, {len(current)} runs: mean Spearman {mean_rho:.2f}; flagged {caught} of {total}")
    write_json(
        Path(args.json),
        {
            "what": "per-case QC against the case Dice on each run's evaluated split (selected checkpoint)",
            "command": "python benchmarks/qc_table.py "
            + " ".join(repo_relative(str(r.resolve())) for r in args.roots)
            + f" --split {args.split}",
            "runs": rows,
        },
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

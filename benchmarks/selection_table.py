"""Tables and figures of the checkpoint-selection study (docs/selection.md) from benchmarks/selection_study.py's
per-run JSON files: the test Dice of the checkpoint each rule picks, the correlation of each label-free score
with the test Dice over epochs, and how well the per-case quality control tracks each case's Dice.

    python benchmarks/selection_table.py [--results benchmarks/results/selection] [--figures docs/figures]

Writes benchmarks/results/selection/summary.json and summary.md, and two figures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from udavae.config import TrainConfig  # noqa: E402
from udavae.engine.selection import first_eligible_epoch  # noqa: E402

HERE = Path(__file__).resolve().parent
#: rule -> (score column of an epoch, +1 higher is better / -1 lower is better); None: a fixed checkpoint.
SCORES = {"entropy": -1, "agreement": 1, "plausibility": 1, "snd": 1, "label-free": 1}
QC_SCORES = ("agreement", "plausibility", "entropy", "snd", "qc_score")
#: The test-time transforms of the study files written before they were recorded (the first definition).
FIRST_TRANSFORMS = ["flip-x", "flip-y", "gamma-0.7", "gamma-1.5"]


def _case_dice(row: dict, names: list[str]) -> float:
    return float(np.nanmean([row[f"dice_{n}"] for n in names]))


def epoch_table(run: dict) -> list[dict]:
    """Per raw epoch (and the last epoch's EMA): test / val Dice and the label-free scores on the label-free set."""
    names, lf = run["class_names"], set(run["label_free_set"])
    out = []
    for ck in run["checkpoints"]:
        cases = ck["cases"]
        test = [_case_dice(c, names) for c in cases if c["split"] == "test"]
        val = [_case_dice(c, names) for c in cases if c["split"] == "val"]
        sub = [c for c in cases if c["case"] in lf]
        row = {
            "epoch": ck["epoch"],
            "variant": ck["variant"],
            "test": 100 * float(np.mean(test)),
            "val": 100 * float(np.mean(val)),
            "source": ck.get("source_dice"),
        }
        row.update(
            {
                f"test_{n}": 100 * float(np.nanmean([c[f"dice_{n}"] for c in cases if c["split"] == "test"]))
                for n in names
            }
        )
        for key in ("entropy", "agreement", "plausibility", "snd"):
            row[key] = float(np.nanmean([c[key] for c in sub]))
        row["label-free"] = (row["agreement"] + row["plausibility"]) / 2
        out.append(row)
    return out


def picks(epochs: list[dict], last: int) -> dict[str, dict]:
    """The epoch row each rule picks, as the trainer picks it: the label-free score rules among the epochs after
    ``train.selection_after`` (its default) of the schedule; ``label-free, any epoch`` without that wait."""
    raw = [e for e in epochs if e["variant"] == "raw"]
    chosen = {
        "val-dice": max(raw, key=lambda e: e["val"]),
        "last": next(e for e in raw if e["epoch"] == last),
        "test-oracle": max(raw, key=lambda e: e["test"]),
    }
    ema = [e for e in epochs if e["variant"] == "ema" and e["epoch"] == last]
    if ema:
        chosen["ema"] = ema[0]
    after = TrainConfig().selection_after
    for rule, sign in SCORES.items():
        first = first_eligible_epoch(rule, last, after)
        finite = [e for e in raw if np.isfinite(e[rule]) and e["epoch"] >= first]
        if finite:
            chosen[rule] = max(finite, key=lambda e, r=rule, s=sign: s * e[r])
    finite = [e for e in raw if np.isfinite(e["label-free"])]
    if finite:
        chosen["label-free, any epoch"] = max(finite, key=lambda e: e["label-free"])
    if all(e["source"] is not None for e in raw):
        chosen["source-dice (training cases)"] = max(raw, key=lambda e: e["source"])
    return chosen


def case_qc(run: dict) -> dict:
    """Spearman over test cases between each per-case score and the case Dice, at the last epoch's EMA weights
    (the default label-free choice), and how many of the 10 worst test cases the doubtful flag catches."""
    from udavae.evaluation.qc import qc_rows

    names = run["class_names"]
    last = max(ck["epoch"] for ck in run["checkpoints"])
    ck = next(
        (c for c in run["checkpoints"] if c["epoch"] == last and c["variant"] == "ema"),
        next(c for c in run["checkpoints"] if c["epoch"] == last),
    )
    rows = qc_rows([c for c in ck["cases"] if c["split"] == "test"], names)
    dice = np.array([_case_dice(r, names) for r in rows])
    out = {"checkpoint": f"epoch {last} {ck['variant']}", "n_cases": len(rows)}
    for key in QC_SCORES:
        values = np.array([r[key] for r in rows], dtype=float)
        ok = np.isfinite(values)
        out[f"spearman_{key}"] = float(spearmanr(values[ok], dice[ok]).statistic) if ok.sum() > 2 else None
    worst = set(np.argsort(dice)[:10].tolist())
    for key in QC_SCORES:  # the 10 cases each score alone ranks worst (a candidate for qc_score)
        bad_first = np.array([r[key] for r in rows], dtype=float) * (-1 if key in ("entropy",) else 1)
        out[f"worst10_by_{key}"] = len(worst & set(np.argsort(np.nan_to_num(bad_first, nan=np.inf))[:10].tolist()))
    flagged = {i for i, r in enumerate(rows) if r["doubtful"]}
    out.update(
        {
            "worst10_caught": len(worst & flagged),
            "n_doubtful": len(flagged),
            "dice_doubtful": 100 * float(np.mean(dice[list(flagged)])) if flagged else None,
            "dice_not_doubtful": 100 * float(np.mean(np.delete(dice, list(flagged)))) if flagged else None,
        }
    )
    out["cases"] = [
        {"case": r["case"], "dice": float(d), **{k: r[k] for k in QC_SCORES}, "doubtful": r["doubtful"]}
        for r, d in zip(rows, dice)
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "results" / "selection"))
    ap.add_argument("--figures", default=str(HERE.parent / "docs" / "figures"))
    args = ap.parse_args()
    folder = Path(args.results)
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*_seed*.json"))}
    if not runs:
        raise SystemExit(f"no study files in {folder}")
    summary: dict = {"runs": {}, "groups": {}}
    for name, run in runs.items():
        epochs = epoch_table(run)
        chosen = picks(epochs, run["epochs"])
        raw = [e for e in epochs if e["variant"] == "raw"]
        corr = {
            k: float(spearmanr([e[k] for e in raw], [e["test"] for e in raw]).statistic)
            for k in (*SCORES, "val")
            if all(np.isfinite(e[k]) for e in raw)
        }
        summary["runs"][name] = {
            "group": run.get("group", run["preset"]),
            "preset": run["preset"],
            "seed": run["seed"],
            "transforms": run.get("transforms", FIRST_TRANSFORMS if run.get("tta", True) else []),
            "epochs": epochs,
            "picks": {r: {"epoch": e["epoch"], "variant": e["variant"], "test": e["test"]} for r, e in chosen.items()},
            "spearman_over_epochs": corr,
            "case_qc": case_qc(run),
        }
    by_preset: dict[str, list[dict]] = {}
    for r in summary["runs"].values():
        by_preset.setdefault(r["group"], []).append(r)
    lines = ["| group | runs | " + " | ".join(RULE_ORDER) + " |", "|---|---|" + "---|" * len(RULE_ORDER)]
    for preset, rs in by_preset.items():
        cells = []
        for rule in RULE_ORDER:
            vals = [r["picks"][rule]["test"] for r in rs if rule in r["picks"]]
            cells.append(
                f"{np.mean(vals):.1f} ± {np.std(vals):.1f}" if len(vals) > 1 else (f"{vals[0]:.1f}" if vals else "-")
            )
            summary["groups"].setdefault(preset, {})[rule] = {
                "mean": float(np.mean(vals)) if vals else None,
                "std": float(np.std(vals)) if vals else None,
                "n": len(vals),
            }
        lines.append(f"| {preset} | {len(rs)} | " + " | ".join(cells) + " |")
    pooled = {}
    all_raw = [(e, r) for r in summary["runs"].values() for e in r["epochs"] if e["variant"] == "raw"]
    for k in (*SCORES, "val"):
        xs = [e[k] for e, _ in all_raw]
        if all(np.isfinite(xs)):
            pooled[k] = float(spearmanr(xs, [e["test"] for e, _ in all_raw]).statistic)
    summary["spearman_pooled_epochs_and_runs"] = pooled
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    md = [
        "Test Dice (%, mean over LGE 6-45 and MYO/LV/RV) of the checkpoint each rule picks; mean ± std over "
        "seeds (population std).",
        "",
        *lines,
        "",
        "Spearman, over epochs within each run, of each score with the test Dice:",
        "",
        "| run | " + " | ".join((*SCORES, "val")) + " |",
        "|---|" + "---|" * (len(SCORES) + 1),
    ]
    for name, r in summary["runs"].items():
        md.append(
            f"| {name} | "
            + " | ".join(f"{r['spearman_over_epochs'].get(k, float('nan')):.2f}" for k in (*SCORES, "val"))
            + " |"
        )
    md += [
        "",
        "Pooled over every epoch of every run: " + ", ".join(f"{k} {v:.2f}" for k, v in pooled.items()),
        "",
        "Per-case quality control at the last epoch's EMA weights (test cases): Spearman with the case Dice, and "
        "the doubtful flag:",
        "",
        "| run | " + " | ".join(QC_SCORES) + " | doubtful | worst 10 caught |",
        "|---|" + "---|" * (len(QC_SCORES) + 2),
    ]
    for name, r in summary["runs"].items():
        q = r["case_qc"]
        md.append(
            f"| {name} | "
            + " | ".join(f"{q[f'spearman_{k}']:.2f}" if q[f"spearman_{k}"] is not None else "-" for k in QC_SCORES)
            + f" | {q['n_doubtful']} of {q['n_cases']} | {q['worst10_caught']} |"
        )
    md += [
        "",
        "How many of the 10 worst test cases each score alone puts among its 10 worst (snd: lowest first):",
        "",
        "| run | " + " | ".join(QC_SCORES) + " |",
        "|---|" + "---|" * len(QC_SCORES),
    ]
    for name, r in summary["runs"].items():
        md.append(f"| {name} | " + " | ".join(str(r["case_qc"][f"worst10_by_{k}"]) for k in QC_SCORES) + " |")
    md += ["", "Test-time transforms of each study's agreement:", ""]
    md += [f"- {name}: {', '.join(r['transforms']) or 'none'}" for name, r in summary["runs"].items()]
    (folder / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    _figures(summary, Path(args.figures))


RULE_ORDER = (
    "val-dice",
    "last",
    "ema",
    "entropy",
    "agreement",
    "plausibility",
    "snd",
    "label-free",
    "label-free, any epoch",
    "source-dice (training cases)",
    "test-oracle",
)


def _figures(summary: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = ("val", "entropy", "agreement", "plausibility", "snd", "label-free")
    groups = list(dict.fromkeys(r["group"] for r in summary["runs"].values()))
    # one colour per group, a line style per seed
    colours = {g: plt.get_cmap("tab10")(i % 10) for i, g in enumerate(groups)}
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0))
    for name, r in summary["runs"].items():
        raw = [e for e in r["epochs"] if e["variant"] == "raw"]
        colour = colours[r["group"]]
        style = ("-", "--", ":")[r["seed"] % 3]
        for ax, k in zip(axes, keys):
            ax.plot([e[k] for e in raw], [e["test"] for e in raw], "o", ls=style, ms=3, color=colour, label=name)
    for ax, k in zip(axes, keys):
        ax.set_xlabel(k if k != "val" else "val Dice (LGE 1-5)")
        ax.set_ylabel("test Dice %")
    axes[0].legend(fontsize=6)
    fig.suptitle("each epoch of each run: score vs test Dice", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "selection_scores_vs_test.png", dpi=80)
    plt.close(fig)
    seeds = sorted({r["seed"] for r in summary["runs"].values()})
    fig, axes = plt.subplots(len(groups), len(seeds), figsize=(3.4 * len(seeds), 3.0 * len(groups)), squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for name, r in summary["runs"].items():  # a row per group, a column per seed
        ax = axes[groups.index(r["group"]), seeds.index(r["seed"])]
        ax.set_visible(True)
        cases = r["case_qc"]["cases"]
        colours = ["tab:red" if c["doubtful"] else "tab:blue" for c in cases]
        ax.scatter([c["qc_score"] for c in cases], [100 * c["dice"] for c in cases], c=colours, s=12)
        ax.set_title(f"{name} (red: doubtful)", fontsize=8)
        ax.set_xlabel("qc_score")
        ax.set_ylabel("case Dice %")
    fig.tight_layout()
    fig.savefig(out / "qc_vs_case_dice.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()

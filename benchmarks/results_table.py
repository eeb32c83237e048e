"""Print the MS-CMRSeg CPU results as a markdown table in the deck's format, beside the deck's numbers.

    python benchmarks/results_table.py [benchmarks/results/mscmrseg_c0_to_lge_cpu.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Deck, Table 2 ("CT -> MRI" = bSSFP -> LGE), Dice %: test MYO, LV, RV; validation MYO, LV, RV.
DECK = {
    "noadapt": (14.50, 34.51, 31.10, 14.04, 30.10, 29.89),
    "cfdnet": (64.21, 81.39, 72.30, 61.35, 75.66, 70.95),
    "uda-vae": (68.42, 84.41, 72.59, 65.46, 78.34, 71.07),
    "udavae++": (70.75, 88.64, 75.82, 67.85, 79.73, 71.89),
}
STRUCTS = ("MYO", "LV", "RV")


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "mscmrseg_c0_to_lge_cpu.json")
    res = json.loads(path.read_text())["methods"]
    print("| method | test MYO | test LV | test RV | test mean | val MYO | val LV | val RV | ASSD MYO/LV/RV (mm) "
          "| selected epoch | train time | deck test MYO/LV/RV |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = ("noadapt", "cfdnet", "uda-vae", "udavae++")
    # variant runs are keyed 'method@tag' and listed after their method
    names = sorted((k for k in res if k.split("@")[0] in order), key=lambda k: (order.index(k.split("@")[0]), k))
    for name in names:
        r = res[name]
        t, v = r["test"], r["val"]
        cells = [f"{t[s]['dice_mean']:.2f} ± {t[s]['dice_std']:.2f}" for s in STRUCTS]
        cells.append(f"{t['mean_dice']:.2f}")
        cells += [f"{v[s]['dice_mean']:.2f}" for s in STRUCTS]
        cells.append(" / ".join(f"{t[s]['assd_mean']:.2f}" for s in STRUCTS))
        cells.append(f"{r['selected_epoch']} of {r['epochs']}")
        cells.append(f"{r['training_wall_time_s'] / 60:.0f} min")
        d = None if "@" in name else DECK.get(name)
        cells.append(" / ".join(f"{x:.2f}" for x in d[:3]) if d else "")
        print(f"| {name} | " + " | ".join(cells) + " |")
    postprocessing_table(res)


def postprocessing_table(res: dict) -> None:
    """Runs that recorded both: test Dice / HD95 / HD (mm) of the raw and of the post-processed masks."""
    runs = [k for k in res if "test_postprocessed" in res[k]]
    if not runs:
        return
    print("\n| run | post-processing (decided on LGE 1-5) | "
          + " | ".join(f"{s} Dice / HD95 / HD raw -> post" for s in STRUCTS) + " | mean Dice raw -> post |")
    print("|---|---|" + "---|" * (len(STRUCTS) + 1))
    for name in runs:
        raw, post = res[name]["test"], res[name]["test_postprocessed"]
        kept = ", ".join((post.get("postprocessing") or {}).get("largest_component", [])) or "none"
        cells = [f"largest component: {kept}"]
        for s in STRUCTS:
            metrics = ("dice_mean", "hd95_mean", "hd_mean")
            cells.append(" / ".join(f"{raw[s][m]:.2f} -> {post[s][m]:.2f}" for m in metrics))
        cells.append(f"{raw['mean_dice']:.2f} -> {post['mean_dice']:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

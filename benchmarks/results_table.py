"""Print the MS-CMRSeg CPU results as a markdown table in the deck's format, beside the deck's numbers.

python benchmarks/results_table.py [benchmarks/results/mscmrseg_c0_to_lge_cpu.json]
python benchmarks/results_table.py benchmarks/results/mscmrseg_lge_to_c0_cpu.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Deck, Dice %: test MYO, LV, RV; validation MYO, LV, RV. Its MS-CMRSeg tables call bSSFP (C0) "CT":
# Table 2 ("CT -> MRI") is C0 -> LGE, Table 1 ("MRI -> CT") is LGE -> C0. PnP-AdaNet is only in its MM-WHS table.
DECK = {
    "C0 -> LGE": {
        "noadapt": (14.50, 34.51, 31.10, 14.04, 30.10, 29.89),
        "cfdnet": (64.21, 81.39, 72.30, 61.35, 75.66, 70.95),
        "sifa": (67.69, 83.31, 79.04, 64.21, 76.58, 73.02),
        "uda-vae": (68.42, 84.41, 72.59, 65.46, 78.34, 71.07),
        "udavae++": (70.75, 88.64, 75.82, 67.85, 79.73, 71.89),
    },
    "LGE -> C0": {
        "noadapt": (12.32, 30.24, 37.25, 10.54, 28.96, 36.08),
        "cfdnet": (57.41, 78.44, 77.63, 55.82, 73.30, 76.56),
        "sifa": (60.89, 79.32, 82.39, 58.17, 75.50, 79.04),
        "uda-vae": (58.58, 79.43, 80.43, 56.44, 74.86, 79.17),
        "udavae++": (68.74, 85.08, 81.42, 64.05, 80.02, 79.45),
    },
}
STRUCTS = ("MYO", "LV", "RV")


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "mscmrseg_c0_to_lge_cpu.json")
    data = json.loads(path.read_text())
    res, deck = data["methods"], DECK[data.get("direction", "C0 -> LGE")]
    print(
        "| method | seed | test MYO | test LV | test RV | test mean | val MYO | val LV | val RV "
        "| ASSD MYO/LV/RV (mm) | selected epoch | train time | deck test MYO/LV/RV |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = ("noadapt", "pnp-adanet", "cfdnet", "sifa", "uda-vae", "udavae++")
    # variant runs are keyed 'method@tag' and listed after their method
    names = sorted((k for k in res if k.split("@")[0] in order), key=lambda k: (order.index(k.split("@")[0]), k))
    for name in names:
        r = res[name]
        t, v = r["test"], r["val"]
        cells = [str(r.get("seed", 0))]
        cells += [f"{t[s]['dice_mean']:.2f} ± {t[s]['dice_std']:.2f}" for s in STRUCTS]
        cells.append(f"{t['mean_dice']:.2f}")
        cells += [f"{v[s]['dice_mean']:.2f}" for s in STRUCTS]
        cells.append(" / ".join(f"{t[s]['assd_mean']:.2f}" for s in STRUCTS))
        cells.append(f"{r['selected_epoch']} of {r['epochs']}")
        cells.append(f"{r['training_wall_time_s'] / 60:.0f} min")
        d = None if "@" in name else deck.get(name)
        cells.append(" / ".join(f"{x:.2f}" for x in d[:3]) if d else "")
        print(f"| {name} | " + " | ".join(cells) + " |")
    postprocessing_table(res)


def postprocessing_table(res: dict) -> None:
    """Runs that recorded both: test Dice / HD95 / HD (mm) of the raw and of the post-processed masks."""
    runs = [k for k in res if "test_postprocessed" in res[k]]
    if not runs:
        return
    print(
        "\n| run | post-processing (decided on the validation patients) | "
        + " | ".join(f"{s} Dice / HD95 / HD raw -> post" for s in STRUCTS)
        + " | mean Dice raw -> post |"
    )
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

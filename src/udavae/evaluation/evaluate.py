"""Evaluation results as files and tables: per-case metric rows to ``metrics.csv``, their summary to
``summary.json``, and the Dice / distance tables printed by ``udavae evaluate`` and the demo.

Running a network over cases is the engine's job (:mod:`udavae.engine.evaluate`); this module only turns
metric rows (from :mod:`udavae.evaluation.metrics`) into files and text.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from udavae.evaluation.metrics import METRIC_NAMES, summarize
from udavae.fileio import atomic_write, write_json


def write_metrics_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """One row per case and structure, atomically."""
    buf = io.StringIO()
    fields = list(rows[0]) if rows else ["case", "structure", *METRIC_NAMES]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    atomic_write(path, lambda p: p.write_text(buf.getvalue(), encoding="utf-8"))


def summary_of(rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mean / std per structure and metric, missed-structure counts, plus run facts in ``extra``."""
    per = summarize([{k: v for k, v in r.items() if k not in ("gt_voxels", "pred_voxels")} for r in rows])
    missed: dict[str, int] = {}
    for r in rows:
        if r.get("gt_voxels", 0) > 0 and r.get("pred_voxels", 0) == 0:
            missed[r["structure"]] = missed.get(r["structure"], 0) + 1
    mean_dice = float(np.nanmean([v["dice"]["mean"] for v in per.values()])) if per else float("nan")
    return {**(extra or {}), "structures": per, "missed_structures": missed, "mean_dice": mean_dice}


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """``summary.json`` (NaN written as null)."""
    write_json(path, _nan_to_none(summary))


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def format_table(
    results: dict[str, dict[str, Any]], structures: list[str], metric: str = "dice", title: str = ""
) -> str:
    """A table in the UDA-VAE++ paper's format: one row per method, Dice % per structure (mean +- std) and mean.

    ``results`` maps a row name to a summary produced by :func:`summary_of`.
    """
    scale = 100.0 if metric in ("dice", "iou") else 1.0
    head = f"{'method':<14}" + "".join(f"{s:>16}" for s in structures) + f"{'mean':>9}"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for name, summ in results.items():
        cells, means = [], []
        for s in structures:
            st = summ["structures"].get(s, {}).get(metric, {})
            m, sd = st.get("mean", float("nan")), st.get("std", float("nan"))
            m = float("nan") if m is None else m
            sd = float("nan") if sd is None else sd
            means.append(m)
            cells.append(f"{m * scale:7.2f} +-{sd * scale:6.2f}")
        overall = float(np.nanmean(means)) * scale if means else float("nan")
        lines.append(f"{name:<14}" + "".join(f"{c:>16}" for c in cells) + f"{overall:9.2f}")
    return "\n".join(lines)

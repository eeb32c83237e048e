"""Evaluating a network on cases of a split, per patient and per structure, at native resolution.

Used both for per-epoch validation (Dice only, fast) and for ``udavae evaluate`` (all metrics, see
:mod:`udavae.evaluation.run`). The network comes in as any object with ``predict`` (:class:`Segmenter`; the
engine's ``Predictor`` is one), so this layer does not depend on the engine.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from udavae.data.preprocessing import Geometry
from udavae.data.volumes import LoadedCase
from udavae.evaluation.metrics import METRIC_NAMES, dice_per_class, multiclass_metrics, summarize
from udavae.evaluation.postprocess import PostProcessing, decide_postprocessing
from udavae.fileio import atomic_write, write_json


class ClassMap(Protocol):
    """A prediction: ``classes`` is the class-index volume on the case's native grid (x, y, z)."""

    classes: np.ndarray


class Segmenter(Protocol):
    """Whole-volume segmentation (``udavae.engine.inference.Predictor`` implements it)."""

    def predict(self, slices: torch.Tensor, geom: Geometry, samples: int = 1) -> ClassMap:
        """Class map of preprocessed slices (z, H, W), returned on the native grid ``geom``."""
        ...


def validation_dice(predictor: Segmenter, cases: Iterable[LoadedCase], num_classes: int) -> np.ndarray:
    """Per-case, per-structure Dice (cases x K-1) at the native resolution."""
    cases = list(cases)
    preds = predict_classes(predictor, cases)
    return np.array([dice_per_class(p, c.native_label, num_classes) for p, c in zip(preds, cases)])  # type: ignore[arg-type]


def predict_classes(predictor: Segmenter, cases: Iterable[LoadedCase]) -> list[np.ndarray]:
    """Predicted class maps (native grid) of ``cases``."""
    return [predictor.predict(case.image, case.geometry).classes for case in cases]


def decide_for_cases(
    predictor: Segmenter, cases: list[LoadedCase], class_names: dict[int, str], decided_on: str
) -> PostProcessing:
    """Decide the post-processing on labelled (validation) cases; see :mod:`udavae.evaluation.postprocess`."""
    labels = [case.native_label for case in cases]
    if any(lbl is None for lbl in labels):
        raise ValueError("post-processing is decided on labelled cases only")
    return decide_postprocessing(predict_classes(predictor, cases), labels, class_names, decided_on)  # type: ignore[arg-type]


def evaluate_cases(
    predictor: Segmenter,
    cases: list[LoadedCase],
    class_names: dict[int, str],
    on_prediction: Any = None,
    postprocessing: PostProcessing | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All metrics per case and structure, of the raw and of the post-processed predictions.

    Returns ``(rows, raw_rows)``: ``rows`` for the predictions as ``predict`` writes them (post-processed if
    ``postprocessing`` filters anything), ``raw_rows`` for the network's own output (the same list when
    nothing is filtered). ``on_prediction(case, classes)`` gets the final class map if given.
    """
    rows: list[dict[str, Any]] = []
    raw_rows: list[dict[str, Any]] = []
    active = postprocessing is not None and bool(postprocessing.largest_component)
    for case in tqdm(cases, desc="evaluating", unit="case", leave=False, disable=None):
        raw = predictor.predict(case.image, case.geometry).classes
        final = postprocessing.apply(raw, class_names) if active else raw  # type: ignore[union-attr]
        if on_prediction is not None:
            on_prediction(case, final)
        for target, classes in ((rows, final), (raw_rows, raw)) if active else ((rows, final),):
            metrics = multiclass_metrics(classes, case.native_label, case.spacing, class_names)
            for structure, vals in metrics.items():
                target.append({"case": case.id, "structure": structure, **vals})
    return rows, (raw_rows if active else rows)


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

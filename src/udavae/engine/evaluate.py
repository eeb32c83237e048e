"""Evaluating a trained network on cases: per-epoch validation Dice, the post-processing decision, and
``udavae evaluate`` (a loaded model folder's metrics on a split, written and printed).

The network runs here; the metrics, their files and tables are :mod:`udavae.evaluation`'s array and file
functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from udavae import layout
from udavae.data.volumes import LoadedCase
from udavae.engine.labelfree import TTA
from udavae.errors import DataError
from udavae.evaluation.evaluate import format_table, summary_of, write_metrics_csv, write_summary
from udavae.evaluation.metrics import dice_per_class, multiclass_metrics
from udavae.evaluation.postprocess import PostProcessing, decide_postprocessing
from udavae.evaluation.qc import describe_qc_check, qc_check

__all__ = [
    "decide_for_cases",
    "evaluate_cases",
    "evaluate_run",
    "predict_classes",
    "print_doubtful",
    "print_evaluation",
    "validation_dice",
]


def validation_dice(predictor, cases: Iterable[LoadedCase], num_classes: int) -> np.ndarray:
    """Per-case, per-structure Dice (cases x K-1) at the native resolution."""
    cases = list(cases)
    preds = predict_classes(predictor, cases)
    return np.array([dice_per_class(p, c.native_label, num_classes) for p, c in zip(preds, cases)])  # type: ignore[arg-type]


def predict_classes(predictor, cases: Iterable[LoadedCase]) -> list[np.ndarray]:
    """Predicted class maps (native grid) of ``cases``."""
    return [predictor.predict(case.image, case.geometry).classes for case in cases]


def decide_for_cases(
    predictor, cases: list[LoadedCase], class_names: dict[int, str], decided_on: str
) -> PostProcessing:
    """Decide the post-processing on labelled (validation) cases; see :mod:`udavae.evaluation.postprocess`."""
    labels = [case.native_label for case in cases]
    if any(lbl is None for lbl in labels):
        raise ValueError("post-processing is decided on labelled cases only")
    return decide_postprocessing(predict_classes(predictor, cases), labels, class_names, decided_on)  # type: ignore[arg-type]


def evaluate_cases(
    predictor,
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


def evaluate_run(
    model,  # noqa: ANN001  (a udavae.engine.model_folder.TrainedModel)
    split: str = "test",
    domain: str | None = None,
    dataset: str | None = None,
    out: str | Path | None = None,
    save_masks: bool = False,
    verbose: bool = True,
    postprocess: bool = True,
    qc: Callable[[Any], dict[str, Any]] | None = None,
    case_ids: list[str] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate a loaded model folder on a split; write metrics.csv / summary.json; return (summary, folder).

    With ``postprocess`` the decision stored for the model's checkpoint (if any) is applied and the summary
    also holds the raw masks' figures under ``"raw"`` (and ``metrics_raw.csv`` is written).

    Args:
        model: the loaded model folder.
        split: split of the evaluated domain.
        domain: the evaluated domain (default: the model's target domain).
        dataset: dataset folder (default: the one the model was trained on).
        out: output folder (default ``RUN/eval/<domain>_<split>_<checkpoint>``).
        save_masks: also write the predicted masks (NIfTI, the dataset's label codes) into ``out/masks``.
        verbose: print the tables and notes.
        postprocess: apply the stored post-processing decision.
        qc: ``case -> label-free scores`` (the engine's ``case_scores``); when given, ``qc.csv`` lists every
            case's scores, its mean Dice and the ``doubtful`` flag, worst first.

    Raises:
        DataError: a case of the split has no label.
    """
    from udavae.data.nifti import save_like
    from udavae.data.spec import DatasetSpec
    from udavae.data.volumes import load_cases
    from udavae.fileio import STALE_TEMP_AGE_S, ensure_writable_dir, inside, remove_stale_temporaries

    cfg, info, run, checkpoint = model.config, model.info, model.run, model.checkpoint
    spec = DatasetSpec.load(dataset or info.dataset_path)
    domain = domain or info.target
    if case_ids is None:
        cases = spec.split(domain, split)
    else:
        known = {c.id: c for c in spec.cases(domain)}
        missing = [i for i in case_ids if i not in known]
        if missing:
            raise DataError(f"cases {missing} are not in domain {domain!r} of {spec.root}")
        cases = [known[i] for i in case_ids]
    unlabelled = [c.id for c in cases if c.label is None]
    if unlabelled:
        raise DataError(f"cannot evaluate {domain}/{split}: cases without labels {unlabelled}")
    pp = model.postprocessing() if postprocess else None
    out = Path(out) if out else layout.eval_folder(run, domain, split, checkpoint)
    # Whole slices: the masks are predicted as ``predict`` predicts them, never cut by the training crop.
    loaded = load_cases(spec, cases, info.preprocessing, with_labels=True, desc=f"loading {domain}/{split}", whole=True)
    out = ensure_writable_dir(out)  # only now: a split that cannot be loaded leaves no empty folder behind
    remove_stale_temporaries(out, min_age_s=STALE_TEMP_AGE_S)
    on_pred = None
    if save_masks:
        remove_stale_temporaries(ensure_writable_dir(out / "masks"), min_age_s=STALE_TEMP_AGE_S)

        def on_pred(case, classes):  # noqa: ANN001
            save_like(info.labels.to_codes(classes), case.reference, inside(out / "masks", f"{case.id}.nii.gz"))

    rows, raw_rows = evaluate_cases(model.predictor, loaded, info.labels.class_names, on_pred, pp)
    summary = summary_of(
        rows,
        {
            "run": str(Path(run).resolve()),
            "method": cfg.method.name,
            "checkpoint": checkpoint,
            "epoch": model.epoch,
            "domain": domain,
            "split": split,
            "n_cases": len(loaded),
            "seed": cfg.runtime.seed,
            "postprocessing": pp.to_dict() if pp else None,
        },
    )
    if raw_rows is not rows:
        summary["raw"] = summary_of(raw_rows)
        write_metrics_csv(out / "metrics_raw.csv", raw_rows)
    write_metrics_csv(out / "metrics.csv", rows)
    qc_table: list[dict[str, Any]] = []
    if qc is not None:
        qc_table = write_case_qc(out / "qc.csv", loaded, rows, qc, list(info.labels.class_names.values()))
        # the transforms the agreement used: a qc_check is comparable with another only under the same ones
        summary["qc_check"] = {**qc_check(qc_table), "transforms": [name for name, *_ in TTA]}
    write_summary(out / "summary.json", summary)
    if verbose:
        print_evaluation(summary, cfg.method.name, list(info.labels.class_names.values()), pp, out)
        print_doubtful(qc_table, out / "qc.csv")
        if "qc_check" in summary:
            print(describe_qc_check(summary["qc_check"]))
    return summary, out


def write_case_qc(
    path: Path, cases: list, rows: list[dict[str, Any]], qc: Callable[[Any], dict[str, Any]], structures: list[str]
) -> list[dict[str, Any]]:
    """``qc.csv`` of evaluated cases: label-free scores, the doubtful flag and each case's mean Dice; returns its
    rows, worst first."""
    from udavae.evaluation.qc import qc_rows, write_qc_csv

    dice: dict[str, list[float]] = {}
    for r in rows:
        dice.setdefault(r["case"], []).append(r["dice"])
    scored = []
    for case in tqdm(cases, desc="quality control", unit="case", leave=False, disable=None):
        scored.append({**qc(case), "dice_mean": float(np.nanmean(dice.get(case.id, [np.nan])))})
    table = qc_rows(scored, structures)
    write_qc_csv(path, table)
    return table


def print_doubtful(rows: list[dict[str, Any]], path: Path) -> None:
    """The doubtful cases of ``qc.csv`` rows, worst first, with their reason (nothing when none is)."""
    from udavae.evaluation.qc import doubtful_lines

    lines = doubtful_lines(rows)
    if lines:
        print(f"doubtful cases in {path}, worst first (look at these first):\n" + "\n".join(lines))


def print_evaluation(
    summary: dict[str, Any], method: str, names: list[str], pp: PostProcessing | None, out: Path
) -> None:
    """The evaluation tables (raw and post-processed rows when they differ) and notes, on stdout."""
    raw = summary.get("raw")
    rows = {f"{method} raw": raw, f"{method} post": summary} if raw else {method: summary}
    where = f"{summary['domain']}/{summary['split']} ({summary['n_cases']} cases, {summary['checkpoint']} checkpoint)"
    print(format_table(rows, names, "dice", title=f"Dice % on {where}"))
    for metric, title in (("assd", "ASSD (mm)"), ("hd95", "HD95 (mm)"), ("hd", "HD (mm)")):
        print(format_table(rows, names, metric, title=title))
    print(
        pp.describe() if pp else "post-processing: none applied (none decided for this checkpoint, or --no-postprocess)"
    )
    for s, n in summary["missed_structures"].items():
        print(f"note: {s} present but not predicted in {n} case(s): Dice 0, distances NaN (excluded from means)")
    print(f"wrote {out / 'metrics.csv'}" + (", metrics_raw.csv" if "raw" in summary else "") + " and summary.json")

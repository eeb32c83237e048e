"""``udavae evaluate`` without the engine: a loaded model folder's metrics on a split, written and printed.

The model folder is loaded by the caller (``udavae.engine.model_folder.open_model``) and comes in as any
object with the attributes of :class:`EvaluableModel`, so this layer does not import the engine::

    from udavae.engine.model_folder import open_model
    from udavae.evaluation.run import evaluate_run

    summary, out = evaluate_run(open_model("runs/udavae++", "best", "cpu"), split="test", verbose=False)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm.auto import tqdm

from udavae import layout
from udavae.config import Config
from udavae.data.preprocessing import Preprocessing
from udavae.data.spec import LabelMap
from udavae.errors import DataError
from udavae.evaluation.evaluate import (
    Segmenter,
    evaluate_cases,
    format_table,
    summary_of,
    write_metrics_csv,
    write_summary,
)
from udavae.evaluation.postprocess import PostProcessing

__all__ = ["EvaluableModel", "ModelDescription", "evaluate_run", "print_evaluation"]


class ModelDescription(Protocol):
    """What evaluation reads of ``model.json`` (``udavae.engine.model_folder.ModelInfo`` has it)."""

    labels: LabelMap
    preprocessing: Preprocessing
    dataset_path: str
    target: str


class EvaluableModel(Protocol):
    """A loaded model folder (``udavae.engine.model_folder.TrainedModel`` is one).

    Attributes:
        run: the model folder (default output folder: ``run/eval/<domain>_<split>_<checkpoint>``).
        checkpoint: which weights (``best`` / ``last``), recorded in the summary.
        config: the run's configuration (method name and seed are recorded).
        info: labels, preprocessing, dataset path and target domain.
        predictor: whole-volume segmentation by the loaded network.
    """

    run: Path
    checkpoint: str
    config: Config
    info: ModelDescription
    predictor: Segmenter

    @property
    def epoch(self) -> int | None:
        """The epoch the checkpoint was saved after."""
        ...

    def postprocessing(self) -> PostProcessing | None:
        """The post-processing decided for this checkpoint, or None."""
        ...


def eval_folder(run: str | Path, domain: str, split: str, checkpoint: str) -> Path:
    """Where ``udavae evaluate`` writes a model folder's metrics by default: ``RUN/eval/<domain>_<split>_<checkpoint>``
    (read back by ``udavae compare`` and ``udavae sweep``)."""
    return layout.eval_folder(run, domain, split, checkpoint)


def evaluate_run(
    model: EvaluableModel,
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
    out = Path(out) if out else eval_folder(run, domain, split, checkpoint)
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
    if qc is not None:
        write_case_qc(out / "qc.csv", loaded, rows, qc, list(info.labels.class_names.values()))
    write_summary(out / "summary.json", summary)
    if verbose:
        print_evaluation(summary, cfg.method.name, list(info.labels.class_names.values()), pp, out)
    return summary, out


def write_case_qc(
    path: Path, cases: list, rows: list[dict[str, Any]], qc: Callable[[Any], dict[str, Any]], structures: list[str]
) -> None:
    """``qc.csv`` of evaluated cases: label-free scores, the doubtful flag and each case's mean Dice."""
    from udavae.evaluation.qc import qc_rows, write_qc_csv

    dice: dict[str, list[float]] = {}
    for r in rows:
        dice.setdefault(r["case"], []).append(r["dice"])
    scored = []
    for case in tqdm(cases, desc="quality control", unit="case", leave=False, disable=None):
        scored.append({**qc(case), "dice_mean": float(np.nanmean(dice.get(case.id, [np.nan])))})
    write_qc_csv(path, qc_rows(scored, structures))


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

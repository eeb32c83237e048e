"""Deciding a model's post-processing on its validation cases and storing it in the model folder.

The trainer calls :func:`decide_and_save` for both checkpoints when training ends; ``udavae postprocess``
(:func:`postprocess_run`) does the same for an existing model folder (e.g. one trained before this existed).
The decision rule itself is in :mod:`udavae.evaluation.postprocess`.
"""

from __future__ import annotations

from pathlib import Path

from udavae.data.volumes import LoadedCase
from udavae.engine import model_folder as mf
from udavae.engine.evaluate import decide_for_cases
from udavae.engine.inference import Predictor
from udavae.evaluation.postprocess import PostProcessing

__all__ = ["decide_and_save", "postprocess_run"]


def decide_and_save(
    run: Path, checkpoint: str, predictor: Predictor, cases: list[LoadedCase], class_names: dict[int, str], where: str
) -> PostProcessing:
    """Decide on ``cases`` (labelled validation cases) with the predictor's current weights and record it."""
    pp = decide_for_cases(predictor, cases, class_names, f"{where} ({len(cases)} cases), {checkpoint} checkpoint")
    mf.save_postprocessing(run, checkpoint, pp)
    return pp


def postprocess_run(
    run: str | Path, checkpoints: tuple[str, ...] = ("best", "last"), device: str = "auto", batch_size: int = 16
) -> dict[str, PostProcessing]:
    """(Re)decide the post-processing of a model folder on its target validation split, per checkpoint.

    Raises:
        UserError / DataError: unreadable model folder or dataset, no labelled validation split.
    """
    from udavae.data.spec import DatasetSpec
    from udavae.data.volumes import load_cases
    from udavae.engine.runtime import resolve_device
    from udavae.errors import DataError

    run = Path(run)
    cfg, info = mf.read_model_folder(run)
    spec = DatasetSpec.load(info.dataset_path)
    val_split = cfg.data.val_split
    cases = spec.split(info.target, val_split)
    if not cases or any(c.label is None for c in cases):
        raise DataError(f"{info.target}/{val_split} of {spec.root} has no labelled cases to decide on")
    loaded = load_cases(
        spec, cases, info.preprocessing, with_labels=True, desc=f"loading {info.target}/{val_split}", whole=True
    )
    dev = resolve_device(device)
    decided = {}
    for checkpoint in checkpoints:
        _, _, method, _ = mf.load_trained(run, checkpoint, dev)
        predictor = Predictor(method.net, info.preprocessing, dev, batch_size=batch_size, amp=cfg.runtime.amp)
        decided[checkpoint] = decide_and_save(
            run, checkpoint, predictor, loaded, info.labels.class_names, f"{info.target}/{val_split}"
        )
    return decided

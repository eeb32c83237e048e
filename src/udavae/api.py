"""The public Python API: train, load a trained model, segment arrays and files, evaluate.

Everything a notebook or a pipeline needs, without the command line::

    import udavae

    cfg = udavae.Config.from_preset("udavae++", profile="cpu", data__dataset="datasets/mscmrseg")
    model = udavae.train(cfg, "runs/udavae++")          # or: model = udavae.load("runs/udavae++")
    masks = model.predict(volume, spacing=(1.25, 1.25, 5.0))   # (x, y, z) class indices
    result = model.predict_folder("new_scans/", "masks/")     # NIfTI masks + qc.csv, worst first
    summary = udavae.evaluate("runs/udavae++", split="test")

The names exported by ``udavae`` (``Config``, ``Model``, ``Prediction``, ``load``, ``train``, ``evaluate``) are
the stable surface; the modules below them may change between versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from udavae.config import Config
from udavae.errors import UserError

__all__ = ["Model", "Prediction", "evaluate", "load", "train"]


@dataclass
class Prediction:
    """The segmentation of one volume on its own grid.

    Attributes:
        classes: class indices (x, y, z), uint8: 0 background, then the structures in ``Model.structures`` order.
        codes: the same mask in the dataset's label codes (e.g. MYO 200, LV 500, RV 600).
        probabilities: class probabilities (K, x, y, z), float32, when asked for.
        uncertainty: per-voxel normalised entropy in [0, 1] with ``samples > 1``, else None.
        scores: the label-free quality-control scores (agreement, plausibility, entropy, volumes...), when asked.
    """

    classes: np.ndarray
    codes: np.ndarray
    probabilities: np.ndarray | None = None
    uncertainty: np.ndarray | None = None
    scores: dict[str, Any] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The volume's shape (x, y, z)."""
        return tuple(self.classes.shape)


class Model:
    """A trained model, ready to segment scans. Get one with :func:`load` or :func:`train`.

    Attributes:
        run: the model folder, or the model zip it was loaded from.
        checkpoint: the weights in use (``best``, ``last``, ``ema``...), as the run's selection rule chose them.
        config: the run's configuration.
        structures: the segmented structures, in class-index order (class 1 first).
        label_codes: structure -> its code in the dataset's label files.
    """

    def __init__(self, trained: Any, training: dict[str, Any] | None = None) -> None:
        self._trained = trained
        #: The fit summary (selection rule, chosen checkpoint and epoch, time) when this model was just trained.
        self.training = training
        self.run: Path = trained.source or trained.run
        self.checkpoint: str = trained.checkpoint
        self.config: Config = trained.config
        names = trained.info.labels.class_names
        self.structures: list[str] = [names[i] for i in sorted(names) if i > 0]
        self.label_codes: dict[str, int] = dict(trained.info.labels.codes)

    def __repr__(self) -> str:
        return (
            f"udavae.Model({str(self.run)!r}, method={self.config.method.name!r}, checkpoint={self.checkpoint!r}, "
            f"structures={self.structures})"
        )

    @property
    def epoch(self) -> int | None:
        """The epoch the weights were saved after."""
        return self._trained.epoch

    def predict(
        self,
        image: np.ndarray | str | Path,
        spacing: tuple[float, float, float] | None = None,
        *,
        samples: int = 1,
        postprocess: bool = True,
        probabilities: bool = False,
        scores: bool = False,
    ) -> Prediction:
        """Segment one volume.

        Args:
            image: an (x, y, z) array of intensities, the path of a NIfTI file, or a folder holding one DICOM
                series.
            spacing: voxel size in mm (x, y, z); required for an array (it sets the resampling and the ml of
                the volumes), read from the file for a path.
            samples: latent samples averaged (> 1 also gives the per-voxel uncertainty).
            postprocess: apply the post-processing decided on the validation cases for this checkpoint.
            probabilities: also return the class probabilities on the volume's grid.
            scores: also compute the label-free quality-control scores (3 more network passes).

        Raises:
            UserError: not a 3-D array, missing or non-positive spacing, NaN/Inf intensities.
        """
        from udavae.engine.inference import normalised_entropy
        from udavae.engine.labelfree import image_scores

        data, spacing = self._read(image, spacing)
        info, predictor = self._trained.info, self._trained.predictor
        slices, geom = info.preprocessing.image(data, spacing, whole=True)  # the whole scan, never cut by a crop
        native = predictor.native_probabilities(slices, geom, samples)
        classes = native.argmax(0).numpy().astype(np.uint8)
        pp = self._trained.postprocessing() if postprocess else None
        if pp is not None:
            classes = pp.apply(classes, info.labels.class_names)
        unc = normalised_entropy(native) if samples > 1 else None
        qc = None
        if scores:
            qc = image_scores(predictor, "volume", slices, geom, spacing, info.labels.class_names).to_row()
        return Prediction(
            classes,
            info.labels.to_codes(classes),
            native.numpy().astype(np.float32) if probabilities else None,
            unc,
            qc,
        )

    def predict_folder(
        self,
        src: str | Path,
        out: str | Path,
        *,
        samples: int = 1,
        skip_bad: bool = False,
        postprocess: bool = True,
        qc: bool = True,
        html: bool = False,
        html_cases: int = 40,
    ) -> Any:
        """Segment a NIfTI file, or a folder of NIfTI files and/or DICOM series, into ``out`` (masks keep their
        scan's geometry; ``qc.csv`` worst first; ``series.csv`` maps DICOM series UIDs to their masks).

        ``html``: also write ``out/report.html`` (quality control and a viewer for the first ``html_cases`` masks,
        worst first). Returns a :class:`udavae.engine.predict.PredictResult` (masks written, inputs skipped, qc
        rows, the report).
        """
        from udavae.engine.predict import predict_folder

        result = predict_folder(self._trained, src, out, samples, skip_bad, postprocess, qc)
        if html:
            from udavae.reports.html import prediction_report

            result.report = prediction_report(result, self._trained, max_cases=html_cases)
        return result

    def _read(
        self, image: np.ndarray | str | Path, spacing: tuple[float, float, float] | None
    ) -> tuple[np.ndarray, tuple[float, float, float]]:
        """The (x, y, z) float32 array and its spacing, checked."""
        if isinstance(image, (str, Path)):
            from udavae.data.dicom import read_series_folder
            from udavae.data.nifti import load_volume

            vol = read_series_folder(image) if Path(image).is_dir() else load_volume(image)
            data, spacing = vol.data, tuple(spacing or vol.spacing)  # type: ignore[assignment]
        else:
            data = np.asarray(image, dtype=np.float32)
            if spacing is None:
                raise UserError("predict(array) needs spacing=(x, y, z) in mm")
        if data.ndim != 3:
            raise UserError(f"expected a 3-D volume (x, y, z), got shape {data.shape}")
        from udavae.data.nifti import MAX_SPACING_MM, spacing_problem

        sp = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
        if len(sp) != 3 or spacing_problem(sp):
            raise UserError(f"spacing must be three numbers > 0 and <= {MAX_SPACING_MM:g} mm, got {spacing}")
        if not np.isfinite(data).all():
            raise UserError("the volume contains NaN or Inf values")
        return data, sp  # type: ignore[return-value]


def load(
    run: str | Path, checkpoint: str = "selected", device: str = "auto", batch_size: int = 16, amp: str | None = None
) -> Model:
    """Load a trained model (a model folder or a model zip) for inference.

    Args:
        run: the model folder ``udavae train`` wrote, or a model zip ``udavae export`` wrote (verified, then
            extracted into a temporary folder; ``selected`` then means the weights it holds).
        checkpoint: ``selected`` (the one the run's selection rule chose), ``best``, ``last``, ``ema`` or a kept
            ``epoch_NNN``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        batch_size: slices per forward pass.
        amp: inference precision ``none``, ``bf16`` or ``fp16`` (default: the precision the model trained in).
    """
    from udavae.engine.model_folder import open_model

    return Model(open_model(run, checkpoint, device, batch_size, amp))


def train(config: Config, out: str | Path, resume: bool = False) -> Model:
    """Train ``config`` into the model folder ``out`` (or continue it with ``resume``) and load the result.

    The fit summary (selection rule, chosen epoch, time) is in ``out/selection.json`` and the log files.
    """
    from udavae.engine.trainer import train as fit

    summary = fit(config, out, resume)
    return Model(load(out, device=config.runtime.device)._trained, training=summary)


def evaluate(
    run: str | Path | Model,
    split: str = "test",
    *,
    domain: str | None = None,
    dataset: str | None = None,
    out: str | Path | None = None,
    checkpoint: str = "selected",
    device: str = "auto",
    postprocess: bool = True,
    qc: bool = True,
    save_masks: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """Evaluate a model on labelled cases at native resolution; returns the summary (``summary.json``).

    Dice, IoU, ASSD, HD95 and HD per structure (mean, std over cases); ``metrics.csv`` per case and, with ``qc``,
    ``qc.csv`` (label-free scores, the doubtful flag and each case's Dice) in ``out`` (default
    ``RUN/eval/<domain>_<split>_<checkpoint>``).

    Args:
        run: a model folder or a loaded :class:`Model`.
        split: a split of ``domain``; ``source-holdout`` = the source cases the run held out of training (the
            evaluation a run whose target has no labels can have).
        domain / dataset: default the model's target domain and training dataset.
        checkpoint / device: which weights, where (when ``run`` is a folder).
        postprocess: apply the post-processing decided for the checkpoint.
        qc: also write ``qc.csv``.
        save_masks: also write the masks (NIfTI) into ``out/masks``.
        verbose: print the tables.
    """
    from udavae.engine.evaluate import evaluate_run
    from udavae.engine.labelfree import case_scores
    from udavae.engine.model_folder import read_selection

    trained = run._trained if isinstance(run, Model) else load(run, checkpoint, device)._trained
    if trained.source is not None and out is None:
        raise UserError(f"evaluating the model zip {trained.source} needs an output folder (--out / out=)")
    case_ids = None
    if split == "source-holdout":
        case_ids = (read_selection(trained.run) or {}).get("source_holdout") or []
        if not case_ids:
            if trained.source is not None:
                raise UserError(f"model zip {trained.source} records no case ids: evaluate its run folder")
            raise UserError(f"{trained.run} held no source cases out of training (data.source_holdout)")
        domain = trained.info.source
    names = trained.info.labels.class_names

    def scores(case: Any) -> dict[str, Any]:
        return case_scores(trained.predictor, case, names).to_row()

    summary, _ = evaluate_run(
        trained,
        split,
        domain,
        dataset,
        out,
        save_masks,
        verbose=verbose,
        postprocess=postprocess,
        qc=scores if qc else None,
        case_ids=case_ids,
    )
    return summary

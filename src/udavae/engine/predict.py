"""Segmenting a file or a folder of NIfTI scans and DICOM series with a loaded model: the workflow of
``udavae predict`` and of :meth:`udavae.Model.predict_folder`.

All or nothing: every input is read and checked before anything is written, and an output that would overwrite
an input (or another output) is refused before the output folder exists. Each mask keeps its scan's geometry
and uses the dataset's label codes; ``qc.csv`` ranks the masks worst first by their label-free scores. A DICOM
series (:mod:`udavae.data.dicom`) gives the mask ``<series UID>.nii.gz`` and a row of ``series.csv``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from udavae.errors import DataError, UserError

__all__ = [
    "PredictResult",
    "check_plan",
    "find_bad_inputs",
    "input_files",
    "output_plan",
    "plan_outputs",
    "predict_files",
    "predict_folder",
]


@dataclass
class PredictResult:
    """What :func:`predict_folder` wrote.

    Attributes:
        out: the output folder.
        masks: the masks written, in input order.
        bad: inputs that could not be segmented (skipped with ``skip_bad``), with the reason.
        removed: stale uncertainty maps of an earlier run that were removed.
        qc: the quality-control rows, worst first ([] without ``qc``); ``qc.csv`` holds them.
        postprocessing: the post-processing applied (None: raw masks).
    """

    out: Path
    masks: list[Path] = field(default_factory=list)
    bad: dict[Path, str] = field(default_factory=dict)
    removed: list[Path] = field(default_factory=list)
    qc: list[dict[str, Any]] = field(default_factory=list)
    postprocessing: Any = None
    #: The input of each mask (a NIfTI path or a :class:`udavae.data.dicom.DicomSeries`), in ``masks`` order.
    inputs: list[Any] = field(default_factory=list)
    #: The HTML report written (``report.html``), if one was asked for.
    report: Path | None = None

    @property
    def n_doubtful(self) -> int:
        """Masks flagged doubtful by the quality control."""
        return sum(bool(r["doubtful"]) for r in self.qc)


def input_files(path: Path) -> list[Any]:
    """The NIfTI file ``path``, or the NIfTI files in folder ``path`` (sorted) and then the DICOM series in it and
    in the folders below it (:class:`udavae.data.dicom.DicomSeries`).

    Hidden files of a folder (``.name.nii.gz``: among them the temporaries a killed writer leaves) are skipped.
    """
    from udavae.data.dicom import find_series, looks_like_dicom
    from udavae.data.nifti import is_nifti

    if path.is_file():
        if looks_like_dicom(path):
            raise UserError(f"{path} is a DICOM file: give the folder that holds its series")
        return [path]
    if path.is_dir():
        files: list[Any] = sorted(
            p for p in path.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith(".")
        )
        files += find_series(path)
        if not files:
            raise UserError(f"no NIfTI files (*.nii, *.nii.gz) or DICOM series in {path}")
        return files
    raise UserError(f"input {path} not found")


def output_plan(files: list[Any], out: Path) -> dict[Any, tuple[Path, Path]]:
    """Input (NIfTI file or DICOM series) -> (mask path, uncertainty-map path) in ``out``."""
    from udavae.data.dicom import DicomSeries
    from udavae.data.nifti import strip_nifti_suffix

    names = {f: f.stem if isinstance(f, DicomSeries) else strip_nifti_suffix(f.name) for f in files}
    return {f: (out / f"{n}.nii.gz", out / f"{n}_uncertainty.nii.gz") for f, n in names.items()}


def file_keys(path: Path) -> set[object]:
    """Identities of ``path``: its resolved path (symlinks, ``./``, ``..``) and, if it exists, its inode."""
    keys: set[object] = {path.resolve()}
    with contextlib.suppress(OSError):
        st = path.stat()
        keys.add((st.st_dev, st.st_ino))
    return keys


def input_keys(f: Any) -> set[object]:
    """:func:`file_keys` of an input: of its file, or of every file of a DICOM series."""
    files = getattr(f, "files", (f,))
    return set().union(*(file_keys(p) for p in files))


def read_input(f: Any, prep) -> tuple[Any, Any, Any]:  # noqa: ANN001
    """(volume, slices, geometry) of a NIfTI file or a DICOM series (:func:`udavae.data.volumes.load_image`)."""
    from udavae.data.volumes import load_image

    if not hasattr(f, "load"):
        return load_image(f, prep)
    vol = f.load()
    try:
        return load_image(vol, prep)
    except DataError as exc:  # name the series, not only its folder (which may hold several)
        raise DataError(str(exc).replace(f"{vol.path}:", f"{f}:", 1)) from None


def check_plan(inp: Path, plan: dict[Any, tuple[Path, Path]], out: Path, samples: int) -> None:
    """Refuse outputs that would overwrite (or, for stale uncertainty maps, delete) an input, or each other."""
    if inp.is_dir() and file_keys(out) & file_keys(inp):
        raise UserError(
            f"output folder {out} is the input folder {inp}: the masks would overwrite the input "
            "images; choose another output folder"
        )
    inputs = {key: f for f in plan for key in input_keys(f)}
    for q in (q for paths in plan.values() for q in paths):
        clash = next((inputs[key] for key in file_keys(q) if key in inputs), None)
        if clash is not None:
            raise UserError(f"output {q} would overwrite the input {clash}; choose another output folder")
    owner: dict[Path, Path] = {}
    for f, (mask, unc) in plan.items():
        for q in (mask, unc) if samples > 1 else (mask,):
            other = owner.setdefault(q.resolve(), f)
            if other != f:
                raise UserError(f"inputs {other} and {f} would both be written to {q}; rename one of them")


def problem_of(f: Any, exc: Exception) -> str:
    """One-line description of why ``f`` cannot be segmented, starting with the file (or series folder) name."""
    msg = " ".join(str(exc).split())
    return msg if msg.startswith(str(getattr(f, "folder", f))) else f"{f}: {msg}"


def find_bad_inputs(files: list[Any], prep) -> dict[Any, str]:  # noqa: ANN001
    """Read and preprocess every input as prediction will; return the problem of each one that fails.

    Header checks miss truncated data and NaN voxels, so each volume is read in full. It is dropped right
    after its check and read again when predicted: memory holds one volume at a time instead of the whole
    input folder, at the price of reading each file twice.
    """
    bad: dict[Any, str] = {}
    for f in tqdm(files, desc="checking inputs", unit="vol", leave=False, disable=None):
        try:
            read_input(f, prep)
        except (UserError, ValueError) as exc:
            bad[f] = problem_of(f, exc)
    return bad


#: Input (NIfTI path or DICOM series) -> (mask path, uncertainty-map path).
Plan = dict[Any, tuple[Path, Path]]


def predict_files(
    files: list[Any],
    plan: Plan,
    predictor,
    labels,  # noqa: ANN001
    prep,
    samples: int,
    pp=None,
    qc_rows: list | None = None,
) -> list[Path]:  # noqa: ANN001
    """Write the mask (and uncertainty map) of each file; return the stale uncertainty maps removed.

    ``qc_rows``: when a list, each file's label-free scores (``udavae.engine.labelfree``) are appended to it.

    With ``samples == 1`` an uncertainty map left by an earlier ``--samples K`` run would no longer match
    the new mask beside it, so it is removed before the mask is renamed into place. With ``samples > 1`` the
    mask and its map are written as one unit (both to temporaries, the old map removed, then both renamed), so a
    kill never leaves a new mask beside an old map. ``pp``: the post-processing applied to each mask (None: raw masks).
    """
    from udavae.data.nifti import save_all_like

    masks = {m.resolve() for m, _ in plan.values()}
    removed = []
    for f in tqdm(files, desc="predicting", unit="vol", disable=None):
        mask, unc = plan[f]
        vol, slices, geom = read_input(f, prep)
        pred = predictor.predict(slices, geom, samples=samples)
        classes = pp.apply(pred.classes, labels.class_names) if pp is not None else pred.classes
        volumes = [(labels.to_codes(classes), mask, np.int16)]
        if pred.uncertainty is not None:
            volumes.append((pred.uncertainty, unc, np.float32))
        stale = pred.uncertainty is None and unc.is_file() and unc.resolve() not in masks
        save_all_like(volumes, vol, remove=[unc] if stale else [])
        if stale:
            removed.append(unc)
        if qc_rows is not None:
            from udavae.engine.labelfree import image_scores

            scores = image_scores(
                predictor, mask.name.removesuffix(".nii.gz"), slices, geom, vol.spacing, labels.class_names
            )
            qc_rows.append({**scores.to_row(), "input": str(f), "mask": str(mask)})
    return removed


def plan_outputs(inp: str | Path, out: str | Path, samples: int = 1) -> tuple[list[Any], Plan]:
    """The inputs of ``inp`` and their output paths in ``out``, refusing any output that would overwrite an input.

    Raises:
        UserError: no input, ``samples`` < 1, or an output clash.
    """
    if samples < 1:
        raise UserError("--samples must be >= 1")
    inp, out = Path(inp), Path(out)
    files = input_files(inp)
    plan = output_plan(files, out)
    check_plan(inp, plan, out, samples)
    return files, plan


def predict_folder(
    model,
    inp: str | Path,
    out: str | Path,
    samples: int = 1,
    skip_bad: bool = False,  # noqa: ANN001
    postprocess: bool = True,
    qc: bool = True,
) -> PredictResult:
    """Segment the NIfTI file or the folder of NIfTI files and DICOM series ``inp`` into ``out`` with a loaded model.

    Args:
        model: the loaded model folder (``udavae.engine.model_folder.open_model``).
        inp / out: a NIfTI file or a folder of NIfTI files and/or DICOM series (in nested folders too); the output
            folder (created). A DICOM series' mask is named after its UID, and ``series.csv`` maps UIDs to masks.
        samples: latent samples; > 1 also writes ``<name>_uncertainty.nii.gz``.
        skip_bad: segment the good inputs when some are bad (else nothing is written).
        postprocess: apply the post-processing decided for the model's checkpoint.
        qc: compute the label-free scores of every mask and write ``qc.csv`` (3 more passes per scan).

    Raises:
        DataError: an input cannot be segmented (and not ``skip_bad``, or none can).
    """
    from udavae.data.dicom import DicomSeries, write_series_csv
    from udavae.evaluation.qc import qc_rows, write_qc_csv
    from udavae.fileio import STALE_TEMP_AGE_S, ensure_writable_dir, remove_stale_temporaries

    files, plan = plan_outputs(inp, out, samples)
    info = model.info
    bad = find_bad_inputs(files, info.preprocessing)
    good = [f for f in files if f not in bad]
    if bad and not (skip_bad and good):
        hint = "; --skip-bad segments the others" if good else ""
        raise DataError(
            f"{len(bad)} of {len(files)} input(s) cannot be segmented, nothing written: "
            + "; ".join(bad.values())
            + hint
        )
    pp = model.postprocessing() if postprocess else None
    folder = ensure_writable_dir(Path(out))
    remove_stale_temporaries(folder, min_age_s=STALE_TEMP_AGE_S)  # left by a killed predict
    rows: list | None = [] if qc else None
    removed = predict_files(good, plan, model.predictor, info.labels, info.preprocessing, samples, pp, rows)
    result = PredictResult(folder, [plan[f][0] for f in good], bad, removed, postprocessing=pp, inputs=good)
    series = [(f, plan[f][0]) for f in good if isinstance(f, DicomSeries)]
    if series:
        write_series_csv(folder / "series.csv", series)
    if rows is not None:
        result.qc = qc_rows(rows, list(info.labels.class_names.values()))
        write_qc_csv(folder / "qc.csv", result.qc)
    return result

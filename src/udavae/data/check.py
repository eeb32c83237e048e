"""Check a prepared dataset file by file, reporting every problem rather than stopping at the first.

Training on a dataset with one truncated file or one mis-registered label fails late or, worse,
silently; :func:`check_dataset` reads every image and label fully (each once) and reports, per file:
missing, unreadable / corrupt / truncated, not 3-D, empty (zero voxels or a constant image),
NaN/Inf values, image/label shape, spacing or orientation mismatch, and label codes outside the label
map; and for the description: a missing or malformed ``dataset.json``, domains without cases, split ids
that do not exist, names that are not safe file names, and an import that did not finish. With the
preprocessing known it also refuses an implausible voxel spacing or a resampled slice over
:data:`~udavae.data.preprocessing.MAX_SIDE` pixels, and notes (a warning, not a problem) each label file whose
structures reach beyond the centre crop that training sees.

The same per-file rules (:func:`check_files`, :func:`check_sources`) vet an import's source files before
anything is written, so an import and ``udavae data check`` never disagree about what a usable file is.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from tqdm import tqdm

from udavae.data.nifti import GeometryError, Volume, load_volume
from udavae.data.preprocessing import Preprocessing
from udavae.data.spec import INCOMPLETE_MARKER, SPEC_FILE, Case, DatasetSpec, LabelMap, unsafe_names_message
from udavae.errors import UserError
from udavae.fileio import is_safe_name, read_json

SPACING_RTOL = 1e-3
AFFINE_TOL = 1e-3  # relative to the voxel size


@dataclass
class Problem:
    """One problem found in a dataset: the file concerned and what is wrong with it."""

    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _fmt(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _load_spec(root: Path) -> tuple[DatasetSpec | None, list[Problem]]:
    """Read the description; split ids are checked here too so that files are still checked after."""
    json_path = root / SPEC_FILE
    if not root.is_dir():
        return None, [Problem(root, "dataset folder not found")]
    if not json_path.is_file():
        return None, [
            Problem(
                json_path,
                f"missing: {root} has no {SPEC_FILE} (not a udavae dataset, or an import that did not finish)",
            )
        ]
    try:
        raw = read_json(json_path, what="dataset description")
        if not isinstance(raw, dict):
            raise UserError(f"{json_path}: top level must be an object, got {type(raw).__name__}")
        splits = raw.get("splits", {})
        spec = DatasetSpec.from_dict({**raw, "splits": {}}, root=root, source=str(json_path))
    except UserError as exc:
        return None, [Problem(json_path, f"malformed: {_strip(exc, json_path)}")]
    problems: list[Problem] = []
    if not isinstance(splits, dict):
        return spec, [Problem(json_path, "malformed: 'splits' must map domains to {split: [ids]}")]
    for dom, named in splits.items():
        if dom not in spec.domains:
            problems.append(
                Problem(json_path, f"splits name unknown domain {dom!r} (domains: {', '.join(spec.domains) or 'none'})")
            )
            continue
        if not isinstance(named, dict):
            problems.append(Problem(json_path, f"splits of domain {dom!r} must map split names to id lists"))
            continue
        ids = {c.id for c in spec.domains[dom]}
        clean: dict[str, list[str]] = {}
        bad = [f"split {name!r} of domain {dom!r}" for name in named if not is_safe_name(name)]
        if bad:
            problems.append(Problem(json_path, _strip(Exception(unsafe_names_message(json_path, bad)), json_path)))
            named = {k: v for k, v in named.items() if is_safe_name(k)}
        for name, members in named.items():
            members = [str(m) for m in members] if isinstance(members, list) else []
            unknown = [m for m in members if m not in ids]
            if unknown:
                problems.append(Problem(json_path, f"split {dom}/{name} names cases that do not exist: {unknown}"))
            clean[str(name)] = [m for m in members if m in ids]
        spec.splits[dom] = clean
    return spec, problems


def _strip(exc: Exception, path: Path) -> str:
    """The message of ``exc`` without a leading ``<path>: `` (Problem adds it)."""
    msg = str(exc)
    for prefix in (f"{path}: ", f"{path} "):
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def _read(path: Path, what: str, problems: list[Problem]) -> Volume | None:
    """Load a whole volume; on failure add a problem and return None."""
    if not path.is_file():
        problems.append(Problem(path, f"{what} file not found"))
        return None
    try:
        vol = load_volume(path, dtype=None, require_3d=False)
    except GeometryError as exc:
        problems.append(Problem(path, f"{what}: {_strip(exc, path)}"))
        return None
    except UserError as exc:
        problems.append(Problem(path, f"unreadable {what}: {_strip(exc, path)}"))
        return None
    except Exception as exc:  # nibabel and gzip raise many types for damaged files
        problems.append(Problem(path, f"unreadable {what}: {type(exc).__name__}: {exc}"))
        return None
    shape = tuple(vol.header.get_data_shape())
    if vol.data.size == 0:
        problems.append(Problem(path, f"empty {what}: zero voxels (shape {shape})"))
        return None
    if vol.data.ndim != 3:
        problems.append(Problem(path, f"{what} is not 3-D: shape {shape}"))
        return None
    return vol


def _values(vol: Volume, what: str, problems: list[Problem]) -> np.ndarray:
    """The finite values of ``vol``, reporting NaN/Inf."""
    data = vol.data
    if not np.issubdtype(data.dtype, np.floating):
        return data
    finite = np.isfinite(data)
    bad = int(data.size - np.count_nonzero(finite))
    if bad:
        n_nan = int(np.count_nonzero(np.isnan(data)))
        problems.append(
            Problem(vol.path, f"{what} holds {n_nan} NaN and {bad - n_nan} Inf values (of {data.size} voxels)")
        )
        return data[finite]
    return data


def _check_image(vol: Volume, problems: list[Problem]) -> None:
    values = _values(vol, "image", problems)
    if values.size == 0:
        problems.append(Problem(vol.path, "empty image: no finite intensity"))
    elif values.min() == values.max():
        problems.append(Problem(vol.path, f"empty image: constant intensity {float(values.min()):g} everywhere"))


def _check_label(vol: Volume, labels: LabelMap, problems: list[Problem]) -> None:
    values = _values(vol, "label", problems)
    present = np.unique(values)
    rounded = np.rint(present)
    if np.any(np.abs(present - rounded) > 1e-3):
        odd = present[np.abs(present - rounded) > 1e-3][:5]
        problems.append(Problem(vol.path, f"label holds non-integer values, e.g. {_fmt(odd)}"))
    unknown = sorted(set(rounded.astype(np.int64).tolist()) - labels.valid_codes)
    if unknown:
        problems.append(Problem(vol.path, f"label codes {unknown} are not in the label map {labels.describe()}"))


def _check_pair(image: Volume, label: Volume, problems: list[Problem]) -> None:
    """Image and label must share the voxel grid: shape, spacing, orientation and affine."""
    other = image.path.name
    if image.data.shape != label.data.shape:
        problems.append(
            Problem(label.path, f"shape {label.data.shape} differs from image {other} shape {image.data.shape}")
        )
    if not np.allclose(label.spacing, image.spacing, rtol=SPACING_RTOL, atol=0):
        problems.append(
            Problem(
                label.path, f"spacing {_fmt(label.spacing)} differs from image {other} spacing {_fmt(image.spacing)}"
            )
        )
        return
    codes_img, codes_lab = nib.aff2axcodes(image.affine), nib.aff2axcodes(label.affine)
    if codes_img != codes_lab:
        problems.append(
            Problem(
                label.path,
                f"orientation {''.join(codes_lab)} differs from image {other} orientation {''.join(codes_img)}",
            )
        )
        return
    tol = AFFINE_TOL * max(image.spacing)
    diff = float(np.max(np.abs(image.affine - label.affine)))
    if diff > tol:
        problems.append(
            Problem(
                label.path,
                f"affine (origin/direction) differs from image {other} by up to {diff:.4g} (tolerance {tol:.2g})",
            )
        )


def _check_size(image: Volume, prep: Preprocessing, problems: list[Problem]) -> bool:
    """The resampled slice must stay within the size limit; True when it does."""
    try:
        prep.geometry(image.data.shape, image.spacing)
    except ValueError as exc:
        problems.append(Problem(image.path, str(exc)))
        return False
    return True


def _note_crop(label: Volume, labels: LabelMap, prep: Preprocessing, notes: list[Problem]) -> None:
    """Note a label file whose structures reach beyond the centre crop to ``prep.size`` that training sees."""
    values = np.nan_to_num(np.asarray(label.data, dtype=np.float64))
    share = prep.cropped_share(~np.isin(np.rint(values), list(labels.background_codes)), label.spacing)
    if share > 0:
        h, w = prep.size
        notes.append(
            Problem(
                label.path,
                f"{100 * share:.1f}% of the labelled voxels lie outside the {h}x{w} "
                "centre crop that training sees (preprocessing size); prediction covers "
                "the whole image, but training never sees that part: a larger size "
                "keeps it",
            )
        )


def check_files(
    image_path: Path,
    label_path: Path | None,
    labels: LabelMap,
    prep: Preprocessing | None = None,
    notes: list[Problem] | None = None,
) -> list[Problem]:
    """All problems of one image (and its label file, if any), each file read once.

    With ``prep`` the resampled size is checked too and, when ``notes`` is a list, a label reaching beyond the
    training crop is noted there (a warning: the data are usable).
    """
    problems: list[Problem] = []
    image = _read(image_path, "image", problems)
    sized = True
    if image is not None:
        _check_image(image, problems)
        if prep is not None and image.data.ndim == 3:
            sized = _check_size(image, prep, problems)
    if label_path is not None:
        label = _read(label_path, "label", problems)
        if label is not None:
            _check_label(label, labels, problems)
            if image is not None:
                _check_pair(image, label, problems)
            if prep is not None and notes is not None and sized:
                with contextlib.suppress(ValueError):  # an oversized slice is refused above (with the image)
                    _note_crop(label, labels, prep, notes)
    return problems


def check_case(spec: DatasetSpec, case: Case, notes: list[Problem] | None = None) -> list[Problem]:
    """All problems of one case of a dataset (checked against its preprocessing; crop warnings to ``notes``)."""
    return check_files(
        spec.path(case.image), spec.path(case.label) if case.label else None, spec.labels, spec.preprocessing, notes
    )


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def check_sources(
    pairs: Iterable[tuple[Path, Path | None]],
    labels: LabelMap,
    progress: bool | None = None,
    prep: Preprocessing | None = None,
    notes: list[Problem] | None = None,
) -> list[Problem]:
    """Every problem of (image, label or None) file pairs outside a dataset, e.g. an import's sources.

    Problems name the given paths, so a user sees their own files, not the copies an import would make.

    Args:
        pairs: image path and label path (None for an unlabelled image).
        labels: the label map the label files must follow.
        progress: progress bar on stderr; default only when stderr is a terminal.
        prep: the preprocessing the files will get (checks the resampled size).
        notes: when a list, warnings (labels beyond the training crop) are appended to it.
    """
    pairs = list(pairs)
    problems: list[Problem] = []
    for image, label in tqdm(
        pairs, desc="checking sources", unit="case", file=sys.stderr, disable=not _show_progress(progress)
    ):
        problems.extend(check_files(image, label, labels, prep, notes))
    return problems


def check_dataset(root: str | Path, progress: bool | None = None, notes: list[Problem] | None = None) -> list[Problem]:
    """Every problem of the dataset at ``root`` (empty list: the dataset is usable).

    Args:
        root: dataset folder (holding ``dataset.json``).
        progress: show a progress bar over cases on stderr; default only when stderr is a terminal.
        notes: when a list, warnings that do not make the dataset unusable are appended to it: each label file
            whose structures reach beyond the centre crop to the preprocessing ``size`` that training sees.
    """
    root = Path(root)
    spec, problems = _load_spec(root)
    if spec is None:
        return problems
    if (root / INCOMPLETE_MARKER).exists():
        problems.append(Problem(root / INCOMPLETE_MARKER, "an import into this folder did not finish; run it again"))
    if not spec.domains:
        problems.append(Problem(root / SPEC_FILE, "no domains"))
    for dom, cases in spec.domains.items():
        if not cases:
            problems.append(Problem(root / SPEC_FILE, f"domain {dom!r} has no cases (empty domain)"))
    all_cases = [c for cases in spec.domains.values() for c in cases]
    for case in tqdm(all_cases, desc="checking", unit="case", file=sys.stderr, disable=not _show_progress(progress)):
        problems.extend(check_case(spec, case, notes))
    return problems

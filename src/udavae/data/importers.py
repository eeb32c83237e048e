"""Importers: public datasets and a user's own NIfTI folder -> the canonical ``dataset.json`` layout.

Every importer first scans its source (failing with a clear error naming the folder or file), then reads
every source file fully and vets it with the rules of ``udavae data check`` (:mod:`udavae.data.check`):
on any problem it raises one error listing every problem, naming the user's own files, and writes
nothing (a new ``OUT`` is not created; an existing one is left as it was). Only then does it copy the
files byte for byte (or symlink them with ``link=True``) to ``OUT/<domain>/images|labels/<id>.nii.gz``
and write ``OUT/dataset.json`` last, atomically. While the files are written, a marker file
:data:`INCOMPLETE_MARKER` sits in ``OUT``, so an interrupted import is never mistaken for a complete one
(``udavae data check`` reports it; re-running the import resumes). A write that fails (e.g. disk full)
removes a new ``OUT`` again.

``OUT`` may be new, empty, an interrupted import, or an existing udavae dataset: then the imported domains
are added (or replace same-named ones); the structures and their primary codes must match, further
folded and background codes are merged. Any other non-empty folder is refused, so an import never
overwrites unrelated files.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from udavae.data.check import Problem, check_sources
from udavae.data.layouts import check_labelled, choose_splits, natural_key, scan_folder
from udavae.data.nifti import NIFTI_SUFFIXES, read_header, spacing_problem
from udavae.data.preprocessing import MAX_SIDE, Preprocessing
from udavae.data.spec import (
    INCOMPLETE_MARKER,
    SPEC_FILE,
    Case,
    DatasetSpec,
    LabelMap,
    case_relpaths,
    unsafe_names,
    unsafe_names_message,
)
from udavae.errors import DataError, UserError
from udavae.fileio import atomic_path, check_name, ensure_writable_dir, inside, write_text

#: MS-CMRSeg 2019 label codes (background 0).
MSCMRSEG_LABELS: dict[str, int] = {"MYO": 200, "LV": 500, "RV": 600}
#: MM-WHS 2017 label codes (background 0).
MMWHS_CODES: dict[str, int] = {"MYO": 205, "LA": 420, "LV": 500, "RA": 550, "RV": 600, "AA": 820, "PA": 850}


@dataclass
class _Plan:
    """What an importer will write: label map, per-domain (id, image, label) sources, splits."""

    name: str
    labels: LabelMap
    domains: dict[str, list[tuple[str, Path, Path | None]]]
    splits: dict[str, dict[str, list[str]]]
    preprocessing: Preprocessing
    description: str = ""
    preprocessing_explicit: bool = False  # True: overrides an existing dataset's preprocessing


def _nifti_suffix(path: Path) -> str:
    return next(s for s in NIFTI_SUFFIXES if path.name.endswith(s))


def _require_dir(path: Path, what: str) -> Path:
    if not path.exists():
        raise UserError(f"{what} {path} not found")
    if not path.is_dir():
        raise UserError(f"{what} {path} is not a folder")
    return path


# --------------------------------------------------------------------------- writing
def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None when ``path`` exists)."""
    missing = None
    while not path.exists():
        missing, path = path, path.parent
    return missing


def _open_output(out: Path, src: Path) -> DatasetSpec | None:
    """Check ``out`` may be written (creating nothing); return the existing dataset there, if any."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output {out} exists and is not a folder")
    if out.exists() and out.resolve() == src.resolve():
        raise UserError(f"output folder {out} is the input folder; choose another output folder")
    missing = _first_missing(out)
    if missing is not None:
        parent = missing.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise UserError(f"cannot create output folder {out}: {parent} is not a writable folder")
        return None
    if not os.access(out, os.W_OK):
        raise UserError(f"output folder {out} is not writable")
    if not any(out.iterdir()):
        return None
    if (out / SPEC_FILE).is_file():
        try:
            return DatasetSpec.load(out)
        except UserError as exc:
            raise UserError(
                f"{out} holds a {SPEC_FILE} that cannot be read ({exc}); "
                "repair or remove it, or choose another output folder"
            ) from None
    if (out / INCOMPLETE_MARKER).exists():
        return None  # an interrupted import: redo it
    raise UserError(
        f"output folder {out} is not empty and is not a udavae dataset (no {SPEC_FILE}); choose a new or empty folder"
    )


def _merge_labels(existing: LabelMap, new: LabelMap, out: Path) -> LabelMap:
    """The existing map, extended by the new extra and background codes.

    The structures and their primary codes must be the same (in the same order): class indices and the
    codes written back into predicted masks depend on them.
    """
    if list(existing.codes.items()) != list(new.codes.items()):
        raise UserError(
            f"{out / SPEC_FILE}: label map {existing.describe()} of the existing dataset differs from "
            f"the imported one {new.describe()}; use the same structures and primary codes in the "
            "same order, or import into a new folder"
        )
    extra = {
        name: (
            *existing.extra_codes.get(name, ()),
            *(c for c in new.extra_codes.get(name, ()) if c not in existing.extra_codes.get(name, ())),
        )
        for name in existing.codes
    }
    background = (*existing.background_codes, *(c for c in new.background_codes if c not in existing.background_codes))
    try:
        return LabelMap(codes=dict(existing.codes), background_codes=background, extra_codes=extra)
    except ValueError as exc:
        raise UserError(
            f"{out / SPEC_FILE}: the imported label map {new.describe()} cannot be merged with the "
            f"existing {existing.describe()}: {exc}"
        ) from None


def _check_names(plan: _Plan, src: Path) -> None:
    """Domain names, case ids and split names must be safe file names (they become the dataset's paths)."""
    bad = unsafe_names(
        {d: [i for i, _, _ in entries] for d, entries in plan.domains.items()},
        {d: list(s) for d, s in plan.splits.items()},
    )
    if bad:
        raise UserError(unsafe_names_message(src, bad) + "; rename the files (case ids come from file names)")


def _validate_sources(plan: _Plan, labels: LabelMap, out: Path, prep: Preprocessing) -> None:
    """Read every source file with the rules of ``udavae data check``; raise one error listing all problems."""
    pairs = [(image, label) for entries in plan.domains.values() for _, image, label in entries]
    problems = check_sources(pairs, labels, prep=prep)
    if problems:
        raise DataError(_problem_report(problems, out))


def _problem_report(problems: list[Problem], out: Path) -> str:
    files = len({p.path for p in problems})
    head = (
        f"{len(problems)} problem{'s' * (len(problems) != 1)} in {files} source file{'s' * (files != 1)}; "
        f"nothing was written to {out}:"
    )
    return "\n".join([head, *(f"  {p}" for p in problems)])


def _place(src: Path, dest: Path, link: bool) -> None:
    """Copy ``src`` byte for byte (or symlink it) onto ``dest`` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        if link:
            tmp.unlink()
            os.symlink(src.resolve(), tmp)
        else:
            try:
                shutil.copyfile(src, tmp)
            except OSError as exc:
                raise UserError(f"{src}: cannot copy to {dest} ({exc.strerror or exc})") from None


def _write(plan: _Plan, src: Path, out: str | Path, link: bool) -> DatasetSpec:
    """Vet every planned source file, then copy/link them into ``out`` and write ``dataset.json`` last.

    Nothing is written when a source file has a problem. When writing fails, a folder this call created
    is removed again; an interruption (Ctrl-C, kill) leaves the incomplete marker for the next run.
    """
    out = Path(out)
    _check_names(plan, src)
    existing = _open_output(out, src)
    labels = plan.labels if existing is None else _merge_labels(existing.labels, plan.labels, out)
    prep = existing.preprocessing if existing is not None and not plan.preprocessing_explicit else plan.preprocessing
    _validate_sources(plan, labels, out, prep)
    created = _first_missing(out)
    ensure_writable_dir(out)
    try:
        return _write_files(plan, out, existing, labels, link)
    except Exception:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _write_files(plan: _Plan, out: Path, existing: DatasetSpec | None, labels: LabelMap, link: bool) -> DatasetSpec:
    """Place the files of ``plan`` under the incomplete marker; merge with ``existing``; save the spec."""
    preprocessing, name, description = plan.preprocessing, plan.name, plan.description
    domains: dict[str, list[Case]] = {}
    splits: dict[str, dict[str, list[str]]] = {}
    if existing is not None:
        if not plan.preprocessing_explicit:
            preprocessing = existing.preprocessing
        name, description = existing.name, existing.description or description
        domains = {d: cs for d, cs in existing.domains.items() if d not in plan.domains}
        splits = {d: s for d, s in existing.splits.items() if d not in plan.domains}
    write_text(out / INCOMPLETE_MARKER, "an import into this folder has not finished\n")
    for domain, entries in plan.domains.items():
        cases = []
        for case_id, image, label in entries:
            rel_image = case_relpaths(domain, case_id, _nifti_suffix(image))[0]
            _place(image, inside(out, rel_image), link)
            rel_label = None
            if label is not None:
                rel_label = case_relpaths(domain, case_id, _nifti_suffix(label))[1]
                _place(label, inside(out, rel_label), link)
            cases.append(Case(id=case_id, image=rel_image, label=rel_label))
        domains[domain] = cases
        if plan.splits.get(domain):
            splits[domain] = plan.splits[domain]
    spec = DatasetSpec(
        name=name,
        labels=labels,
        domains=domains,
        splits=splits,
        preprocessing=preprocessing,
        description=description,
        root=out,
    )
    spec.save(out)
    (out / INCOMPLETE_MARKER).unlink(missing_ok=True)
    _remove_stale(spec, list(plan.domains))
    return spec


def _remove_stale(spec: DatasetSpec, domains: list[str]) -> None:
    """Delete image/label files of re-imported domains that the new description no longer names."""
    for domain in domains:
        keep = {spec.path(p) for c in spec.domains[domain] for p in (c.image, c.label) if p}
        for sub in ("images", "labels"):
            folder = spec.root / domain / sub
            if folder.is_dir():
                for f in folder.iterdir():
                    if f.name.endswith(NIFTI_SUFFIXES) and f not in keep:
                        f.unlink()


# --------------------------------------------------------------------------- MS-CMRSeg
def _mscmrseg_root(src: Path) -> Path:
    _require_dir(src, "MS-CMRSeg folder")
    for cand in (src, src / "Patch192"):
        if (cand / "C0").is_dir() or (cand / "LGE").is_dir():
            return cand
    raise UserError(
        f"{src}: no C0/ or LGE/ folder here or in {src / 'Patch192'} "
        "(expected the published Patch192 layout: C0/patientN_C0.nii.gz, LGE/patientN_LGE.nii.gz)"
    )


def _mscmrseg_domain(folder: Path, seq: str) -> list[tuple[str, Path, Path | None]]:
    _require_dir(folder, f"MS-CMRSeg {seq} folder")
    pattern = re.compile(rf"^patient(\d+)_{seq}(_manual)?\.nii(\.gz)?$")
    images: dict[int, Path] = {}
    labels: dict[int, Path] = {}
    for f in folder.iterdir():
        m = pattern.match(f.name)
        if m:
            (labels if m.group(2) else images)[int(m.group(1))] = f
    if not images:
        raise UserError(f"{folder}: no patientN_{seq}.nii.gz images found")
    no_label = sorted(images.keys() - labels.keys())
    if no_label:
        names = ", ".join(images[n].name for n in no_label)
        raise UserError(f"{folder}: images without their _manual label file: {names}")
    no_image = sorted(labels.keys() - images.keys())
    if no_image:
        raise UserError(f"{folder}: label files without their image: {', '.join(labels[n].name for n in no_image)}")
    return [(f"patient{n}", images[n], labels[n]) for n in sorted(images)]


def import_mscmrseg(src: str | Path, out: str | Path, link: bool = False) -> DatasetSpec:
    """Import the published MS-CMRSeg 2019 Patch192 data (domains ``C0`` and ``LGE``).

    Args:
        src: the ``Patch192`` folder or its parent.
        out: output dataset folder.
        link: symlink the files instead of copying them.

    Splits serve both directions of the UDA-VAE++ paper's tables:

    - bSSFP (C0) -> LGE, the published protocol: C0 ``train`` = all 35 cases (the source); LGE patients 1-5
      are ``val`` (model selection) and 6-45 ``test``.
    - LGE -> bSSFP (C0): LGE has no ``train`` split, so all 45 labelled LGE cases are the source; C0 patients
      1-5 are ``val`` and 6-35 ``test``, by the same rule (the first five patients select the model).

    Target labels are never used for training in either direction.
    """
    src = Path(src)
    root = _mscmrseg_root(src)
    domains = {seq: _mscmrseg_domain(root / seq, seq) for seq in ("C0", "LGE")}

    def number(case_id: str) -> int:
        return int(case_id[len("patient") :])

    c0_ids = [case_id for case_id, _, _ in domains["C0"]]
    lge_ids = [case_id for case_id, _, _ in domains["LGE"]]
    splits = {
        "C0": {
            "train": c0_ids,
            "val": [i for i in c0_ids if number(i) <= 5],
            "test": [i for i in c0_ids if number(i) > 5],
        },
        "LGE": {"val": [i for i in lge_ids if number(i) <= 5], "test": [i for i in lge_ids if number(i) > 5]},
    }
    plan = _Plan(
        name="mscmrseg",
        labels=LabelMap(dict(MSCMRSEG_LABELS)),
        domains=domains,
        splits=splits,
        preprocessing=Preprocessing(intensity="percentile", size=(192, 192)),
        description="MS-CMRSeg 2019 (Zhuang, TPAMI 2019), Patch192 crops published with Wu & Zhuang, "
        "IEEE TMI 2021. C0 (bSSFP) -> LGE: source all 35 C0 (split 'train'), target LGE val "
        "patients 1-5, test 6-45. LGE -> C0: source all 45 LGE, target C0 val patients 1-5, test 6-35.",
    )
    return _write(plan, root, out, link)


# --------------------------------------------------------------------------- user folder
def _check_domain_name(domain: str) -> None:
    check_name(domain, "domain name")


def _rounded_up(n: float, multiple: int = 16) -> int:
    return int(-(-round(n) // multiple) * multiple)


def _default_size(images: list[Path], target_spacing: tuple[float, float] | None) -> int:
    """Largest in-plane extent (after resampling to ``target_spacing``) rounded up to 16.

    Unreadable headers, implausible spacings and oversized slices are skipped here: the source check reports
    them before anything is written.
    """
    largest = 0.0
    for path in images:
        try:
            hdr = read_header(path).header
        except DataError:
            continue
        shape, zooms = hdr.get_data_shape(), hdr.get_zooms()
        if spacing_problem(tuple(zooms[:2])):
            continue
        extents = [n * s / t if t else n for n, s, t in zip(shape[:2], zooms[:2], target_spacing or (None, None))]
        if max(extents, default=0) <= MAX_SIDE:
            largest = max(largest, *extents)
    return _rounded_up(largest) or 16  # 0: nothing readable, and the source check will say so


def _label_map(labels: LabelMap | Mapping[str, int | Sequence[int]]) -> LabelMap:
    if isinstance(labels, LabelMap):
        return labels
    try:
        return LabelMap.from_structures(labels)
    except ValueError as exc:
        raise UserError(f"label map {dict(labels)}: {exc}") from None


def import_folder(
    src: str | Path,
    out: str | Path,
    domain: str,
    labels: LabelMap | Mapping[str, int | Sequence[int]] | None,
    label_suffix: str | None = None,
    image_suffix: str = "",
    val: Sequence[str] | str | None = None,
    test: Sequence[str] | str | None = None,
    size: tuple[int, int] | int | None = None,
    target_spacing: tuple[float, float] | None = None,
    link: bool = False,
    require_labels: bool = False,
    unlabelled: bool = False,
) -> DatasetSpec:
    """Import a folder of NIfTI images (and labels) as domain ``domain``.

    The layout is detected (:mod:`udavae.data.layouts`): a flat folder of ``<id><image_suffix>.nii.gz``
    images and ``<id><label_suffix>.nii.gz`` labels (default suffix ``_label``); ``images/`` + ``labels/``
    with the same file names; or nnU-Net's ``imagesTr/<id>_0000.nii.gz`` + ``labelsTr/<id>.nii.gz``
    (``imagesTs/`` images become the split ``unlabelled``). Images of any in-plane size and spacing are
    accepted. Cases named in ``val`` / ``test`` form those splits, the rest ``train``.

    Args:
        labels: structure name -> code(s) in the label files, e.g. ``{"MYO": [200, 1220, 2221], "LV": 500}``;
            None when ``out`` is an existing dataset: its label map (e.g. for an unlabelled domain).
            (several codes are folded into one class; the first is the primary code), or a LabelMap.
        val, test: case ids, or ``"all"`` (:data:`udavae.data.layouts.ALL`): every labelled case not
            named by the other split.
        size: in-plane network size; default the largest in-plane size (after resampling to
            ``target_spacing`` when given) rounded up to a multiple of 16, so nothing is cropped.
        require_labels: fail when an image has no label file.
        unlabelled: the domain has no labels (otherwise finding no label file at all is an error).

    When ``out`` is an existing dataset the domain is added (or replaces the same-named one); the label
    map must then equal the existing one, and its preprocessing is kept unless ``size`` or
    ``target_spacing`` is given.
    """
    src = _require_dir(Path(src), "input folder")
    _check_domain_name(domain)
    if labels is None:  # a domain added to an existing dataset takes its label map
        if not (Path(out) / SPEC_FILE).is_file():
            raise UserError(f"--labels is needed: {out} is not an existing dataset whose label map could be used")
        labels = DatasetSpec.load(out).labels
    label_map = _label_map(labels)
    scan = scan_folder(src, image_suffix, label_suffix)
    check_labelled(src, scan, unlabelled, require_labels)
    splits = choose_splits(src, scan, val, test)
    ids = sorted(scan.images, key=natural_key)
    explicit = size is not None or target_spacing is not None
    if size is None:
        size = _default_size([scan.images[i] for i in ids], target_spacing)
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    plan = _Plan(
        name=Path(out).name or "dataset",
        labels=label_map,
        domains={domain: [(i, scan.images[i], scan.labels.get(i)) for i in ids]},
        splits={domain: splits},
        preprocessing=Preprocessing(intensity="percentile", size=sizes, target_spacing=target_spacing),
        description=f"imported from {src}",
        preprocessing_explicit=explicit,
    )
    return _write(plan, src, out, link)


# --------------------------------------------------------------------------- MM-WHS
def mmwhs_label_map(structures: tuple[str, ...] | list[str]) -> LabelMap:
    """MM-WHS label map of the chosen structures (in that order); the others' codes become background."""
    unknown = [s for s in structures if s not in MMWHS_CODES]
    if unknown or not structures:
        raise UserError(f"unknown MM-WHS structures {unknown}; choose from {', '.join(MMWHS_CODES)}")
    if len(set(structures)) != len(structures):
        raise UserError(f"MM-WHS structures listed twice: {list(structures)}")
    background = (0, *(c for s, c in MMWHS_CODES.items() if s not in structures))
    return LabelMap(codes={s: MMWHS_CODES[s] for s in structures}, background_codes=background)


_MMWHS_RE = re.compile(r"^(ct|mr)_(train|test)_(\d+)_(image|label)\.nii(\.gz)?$")


def import_mmwhs(
    src: str | Path,
    out: str | Path,
    modalities: tuple[str, ...] | list[str] = ("ct", "mr"),
    structures: tuple[str, ...] | list[str] = ("MYO", "LA", "LV", "RA", "RV"),
    val_count: int = 0,
    test_count: int = 0,
    link: bool = False,
) -> DatasetSpec:
    """Import MM-WHS 2017 raw volumes (``ct_train_1001_image.nii.gz`` + ``_label``) as domains CT / MR.

    Files may sit in ``src`` or in its ``ct_train/``, ``mr_train/``, ``ct_test/``, ``mr_test/``
    subfolders. Unlabelled test images become cases without label, in split ``unlabelled``. Of the
    labelled cases (sorted by number), the last ``test_count`` form ``test``, the ``val_count`` before
    them ``val``, the rest ``train``.

    Preprocessing: MM-WHS volumes are whole-chest scans at varied resolution (CT about 0.3-0.6 mm,
    MR about 1-2 mm), so slices are resampled to 1.25 mm in-plane, the MS-CMRSeg C0 grid, and
    centre-cropped to 192 x 192 (a 240 mm field of view that holds the heart); intensities are
    percentile-clipped per volume, which suits both CT Hounsfield units and arbitrary MR scales.
    """
    src = _require_dir(Path(src), "MM-WHS folder")
    modalities = [m.lower() for m in modalities]
    bad = [m for m in modalities if m not in ("ct", "mr")] or ([] if modalities else ["(none)"])
    if bad:
        raise UserError(f"unknown MM-WHS modalities {bad}; choose from ct, mr")
    if val_count < 0 or test_count < 0:
        raise UserError("val_count and test_count must be >= 0")
    label_map = mmwhs_label_map(tuple(structures))
    folders = [src, *(src / f"{m}_{p}" for m in modalities for p in ("train", "test"))]
    found: dict[str, dict[str, dict[str, Path]]] = {m: {} for m in modalities}
    for folder in folders:
        for f in sorted(folder.iterdir()) if folder.is_dir() else []:
            m = _MMWHS_RE.match(f.name)
            if m and m.group(1) in found:
                found[m.group(1)].setdefault(f"{m.group(1)}_{m.group(2)}_{m.group(3)}", {})[m.group(4)] = f
    domains: dict[str, list[tuple[str, Path, Path | None]]] = {}
    splits: dict[str, dict[str, list[str]]] = {}
    for mod, cases in found.items():
        if not cases:
            raise UserError(f"{src}: no {mod}_train_NNNN_image.nii.gz files here or in {mod}_train/, {mod}_test/")
        no_image = sorted(i for i, files in cases.items() if "image" not in files)
        if no_image:
            raise UserError(f"{src}: label files without their image: {', '.join(no_image)}")
        no_label = sorted(i for i, files in cases.items() if "label" not in files and "_train_" in i)
        if no_label:
            raise UserError(f"{src}: training images without their label file: {', '.join(no_label)}")
        ids = sorted(cases, key=lambda i: int(i.rsplit("_", 1)[1]))
        labelled = [i for i in ids if "label" in cases[i]]
        if val_count + test_count > len(labelled):
            raise UserError(
                f"{src}: {mod.upper()} has {len(labelled)} labelled cases, fewer than "
                f"val_count + test_count = {val_count + test_count}"
            )
        n_train = len(labelled) - val_count - test_count
        dom = mod.upper()
        domains[dom] = [(i, cases[i]["image"], cases[i].get("label")) for i in ids]
        parts = {
            "train": labelled[:n_train],
            "val": labelled[n_train : n_train + val_count],
            "test": labelled[n_train + val_count :],
            "unlabelled": [i for i in ids if i not in labelled],
        }
        splits[dom] = {k: v for k, v in parts.items() if v}
    plan = _Plan(
        name="mmwhs",
        labels=label_map,
        domains=domains,
        splits=splits,
        preprocessing=Preprocessing(intensity="percentile", target_spacing=(1.25, 1.25), size=(192, 192)),
        description="MM-WHS 2017 (Zhuang & Shen, MedIA 2016; Zhuang et al., MedIA 2019), raw CT/MR volumes.",
    )
    return _write(plan, src, out, link)

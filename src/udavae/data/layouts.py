"""Find the cases of a user's NIfTI folder in one of three layouts (auto-detected).

- flat: ``SRC/<case><image_suffix>.nii.gz`` beside ``SRC/<case><label_suffix>.nii.gz``;
- udavae's own: ``SRC/images/<name>`` and ``SRC/labels/<name>`` (same file names in both);
- nnU-Net: ``SRC/imagesTr/<case>_0000.nii.gz`` with ``SRC/labelsTr/<case>.nii.gz``, and
  ``SRC/imagesTs/<case>_0000.nii.gz`` as unlabelled cases.

Scanning only lists files (nothing is read) and fails with an error naming the folder or file; when file
names suggest other suffixes than the ones given, the error says which ``--image-suffix`` /
``--label-suffix`` to pass. :func:`check_labelled` and :func:`choose_splits` then vet the labels found
and assign the cases to splits.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from udavae.data.nifti import NIFTI_SUFFIXES, strip_nifti_suffix
from udavae.errors import UserError

DEFAULT_LABEL_SUFFIX = "_label"
#: Last name parts that usually mark a label file (compared lower-case, without the separator).
LABEL_WORDS = (
    "label",
    "labels",
    "lab",
    "lbl",
    "labelmap",
    "gt",
    "gd",
    "seg",
    "segmentation",
    "mask",
    "msk",
    "manual",
    "annotation",
    "annot",
    "roi",
)
#: ``val`` / ``test`` value meaning every labelled case not in the other split.
ALL = "all"
_TAIL = re.compile(r"^(.+)([_.-][A-Za-z0-9]+)$")
_NNUNET_IMAGE = re.compile(r"^(.+)_(\d{4})$")


@dataclass
class SourceScan:
    """The cases found in a source folder.

    Attributes:
        layout: which layout was detected (for messages).
        images: case id -> image file.
        labels: case id -> label file.
        unlabelled_ids: cases that are unlabelled by the layout (nnU-Net ``imagesTs``).
        label_pattern: where label files were looked for, e.g. ``*_label.nii.gz``.
        no_label_hint: when no label file was found, a hint at other suffixes ("" when none).
    """

    layout: str
    images: dict[str, Path]
    labels: dict[str, Path]
    unlabelled_ids: set[str] = field(default_factory=set)
    label_pattern: str = ""
    no_label_hint: str = ""


def natural_key(text: str) -> tuple:
    """Sort key putting ``patient2`` before ``patient10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _nifti_files(folder: Path) -> list[Path]:
    """NIfTI files directly in ``folder`` (hidden files skipped), sorted by name."""
    return sorted(
        f for f in folder.iterdir() if f.name.endswith(NIFTI_SUFFIXES) and not f.name.startswith(".") and f.is_file()
    )


def _add(found: dict[str, Path], case_id: str, f: Path) -> None:
    if not case_id or case_id in found:
        raise UserError(
            f"{f}: {'empty' if not case_id else 'duplicate'} case id {case_id!r}"
            + (f" (also {found[case_id].name})" if case_id in found else "")
        )
    found[case_id] = f


def scan_folder(src: Path, image_suffix: str = "", label_suffix: str | None = None) -> SourceScan:
    """Detect the layout of ``src`` and list its cases.

    Args:
        src: the source folder.
        image_suffix: end of image names (before ``.nii.gz``) that is not part of the case id.
        label_suffix: end of label names in a flat folder (default ``_label``); not used by the
            subfolder layouts, where giving it is an error.
    """
    flat = _nifti_files(src)
    sub = next((s for s in ("imagesTr", "imagesTs", "images") if (src / s).is_dir()), None)
    if sub is None:
        return _scan_flat(src, flat, image_suffix, DEFAULT_LABEL_SUFFIX if label_suffix is None else label_suffix)
    if flat:
        raise UserError(
            f"{src} holds both NIfTI files ({flat[0].name}, ...) and a subfolder {sub}/; "
            f"keep one layout: a flat folder, images/ + labels/, or nnU-Net's imagesTr/ + labelsTr/"
        )
    if label_suffix is not None:
        raise UserError(
            f"{src}: --label-suffix applies to flat folders only; here labels are found by the {sub}/ layout"
        )
    if sub == "images":
        return _scan_images_labels(src, image_suffix)
    if image_suffix:
        raise UserError(f"{src}: --image-suffix does not apply to nnU-Net's layout (images <case>_0000.nii.gz)")
    return _scan_nnunet(src)


# --------------------------------------------------------------------------- flat
def _scan_flat(src: Path, files: list[Path], image_suffix: str, label_suffix: str) -> SourceScan:
    if not label_suffix:
        raise UserError("the label suffix must not be empty (it tells label files from images)")
    stems = {strip_nifti_suffix(f.name): f for f in files}
    labels: dict[str, Path] = {}
    images: dict[str, Path] = {}
    for f in files:
        stem = strip_nifti_suffix(f.name)
        if stem.endswith(label_suffix):
            _add(labels, stem[: -len(label_suffix)], f)
        elif stem.endswith(image_suffix):
            _add(images, stem[: len(stem) - len(image_suffix)], f)
    if not images:
        raise UserError(
            f"{src}: no NIfTI images (*{image_suffix}.nii.gz / .nii) found in this folder "
            "(nor images/ or nnU-Net imagesTr/ subfolders)"
        )
    orphans = sorted(labels.keys() - images.keys(), key=natural_key)
    if orphans:
        image_stems = {s: f for s, f in stems.items() if not s.endswith(label_suffix)}
        hint = _image_suffix_hint(orphans, image_stems, image_suffix)
        raise UserError(
            f"{src}: label files without an image: {', '.join(labels[i].name for i in orphans)}"
            + (f"; {hint}" if hint else "")
        )
    hint = "" if labels else _pair_hint(stems, label_suffix)
    return SourceScan("flat folder", images, labels, label_pattern=f"*{label_suffix}.nii.gz", no_label_hint=hint)


def _common_tail(ids: Iterable[str], stems: Collection[str]) -> str | None:
    """The ending ``X`` (maybe "") such that ``id + X`` is in ``stems`` for every id, or None."""
    ids = list(ids)
    counts = Counter(s[len(i) :] for i in ids for s in stems if s.startswith(i))
    return next((tail for tail, _ in counts.most_common() if all(i + tail in stems for i in ids)), None)


def _image_suffix_hint(orphans: list[str], image_stems: dict[str, Path], image_suffix: str) -> str:
    """Hint for label files whose case id plus a common ending names an image."""
    tail = _common_tail(orphans, image_stems)
    if not tail or tail == image_suffix:
        return ""
    return f"images look like {image_stems[orphans[0] + tail].name}: pass --image-suffix {tail}"


def _pair_hint(stems: dict[str, Path], label_suffix: str) -> str:
    """Hint for a folder without label files (``*<label_suffix>``) whose names end in a label-like word."""
    tails = sorted({m.group(2) for s in stems if (m := _TAIL.match(s))})
    label_tails = [t for t in tails if t[1:].lower() in LABEL_WORDS and t != label_suffix]
    if len(label_tails) == 1:
        lab = label_tails[0]
        ids = sorted((s[: -len(lab)] for s in stems if s.endswith(lab)), key=natural_key)
        images = {s: f for s, f in stems.items() if not s.endswith(lab)}
        tail = _common_tail(ids, images)
        if tail is not None:
            flags = f"--label-suffix {lab}" + (f" --image-suffix {tail}" if tail else "")
            return f"files look like {images[ids[0] + tail].name} + {stems[ids[0] + lab].name}: pass {flags}"
    return ""


# --------------------------------------------------------------------------- images/ + labels/
def _scan_images_labels(src: Path, image_suffix: str) -> SourceScan:
    images: dict[str, Path] = {}
    for f in _nifti_files(src / "images"):
        stem = strip_nifti_suffix(f.name)
        if stem.endswith(image_suffix):
            _add(images, stem[: len(stem) - len(image_suffix)], f)
    if not images:
        raise UserError(f"{src / 'images'}: no NIfTI images (*{image_suffix}.nii.gz / .nii) found")
    id_by_stem = {strip_nifti_suffix(f.name): case_id for case_id, f in images.items()}
    labels: dict[str, Path] = {}
    orphans: list[str] = []
    label_dir = src / "labels"
    for f in _nifti_files(label_dir) if label_dir.is_dir() else []:
        case_id = id_by_stem.get(strip_nifti_suffix(f.name))
        if case_id is None:
            orphans.append(f.name)
        else:
            _add(labels, case_id, f)
    if orphans:
        raise UserError(f"{label_dir}: label files without an image of the same name in images/: {', '.join(orphans)}")
    return SourceScan("images/ + labels/", images, labels, label_pattern=f"{label_dir}/<same name as the image>")


# --------------------------------------------------------------------------- nnU-Net
def _nnunet_images(folder: Path) -> dict[str, Path]:
    """``<case>_0000.nii.gz`` files of an nnU-Net images folder; other channels or names are errors."""
    images: dict[str, Path] = {}
    for f in _nifti_files(folder):
        m = _NNUNET_IMAGE.match(strip_nifti_suffix(f.name))
        if not m:
            raise UserError(f"{f}: nnU-Net images must be named <case>_0000.nii.gz")
        if m.group(2) != "0000":
            raise UserError(
                f"{f}: channel {m.group(2)} of a multi-channel case; udavae takes one image per case (only _0000 files)"
            )
        _add(images, m.group(1), f)
    return images


def _scan_nnunet(src: Path) -> SourceScan:
    train = _nnunet_images(src / "imagesTr") if (src / "imagesTr").is_dir() else {}
    test = _nnunet_images(src / "imagesTs") if (src / "imagesTs").is_dir() else {}
    if not train and not test:
        raise UserError(f"{src}: no <case>_0000.nii.gz images in imagesTr/ or imagesTs/")
    both = sorted(train.keys() & test.keys())
    if both:
        raise UserError(f"{src}: cases {both} are in both imagesTr/ and imagesTs/")
    label_dir = src / "labelsTr"
    labels = {strip_nifti_suffix(f.name): f for f in (_nifti_files(label_dir) if label_dir.is_dir() else [])}
    orphans = sorted(labels.keys() - train.keys())
    if orphans:
        raise UserError(
            f"{label_dir}: label files without an image <case>_0000.nii.gz in imagesTr/: "
            f"{', '.join(labels[i].name for i in orphans)}"
        )
    return SourceScan(
        "nnU-Net imagesTr/ + labelsTr/",
        {**train, **test},
        labels,
        unlabelled_ids=set(test),
        label_pattern=f"{label_dir}/<case>.nii.gz",
    )


# --------------------------------------------------------------------------- labels and splits
def check_labelled(src: Path, scan: SourceScan, unlabelled: bool, require_labels: bool) -> None:
    """Label files must exist unless the domain is declared unlabelled (and then must not)."""
    if unlabelled and scan.labels:
        example = next(iter(scan.labels.values()))
        raise UserError(
            f"{src}: the domain is declared unlabelled but {len(scan.labels)} label files were found "
            f"(e.g. {example}); drop --unlabelled to import them with the images"
        )
    if not unlabelled and not scan.labels:
        hint = f"; {scan.no_label_hint}" if scan.no_label_hint else ""
        raise UserError(
            f"{src}: no label files found (looked for {scan.label_pattern}, {scan.layout} layout)"
            f"{hint}; for a domain without labels pass --unlabelled"
        )
    missing = sorted(scan.images.keys() - scan.labels.keys() - scan.unlabelled_ids, key=natural_key)
    if require_labels and missing:
        raise UserError(
            f"{src}: images without a label file ({scan.label_pattern}): "
            f"{', '.join(scan.images[i].name for i in missing)}"
        )


def _split_ids(value: Sequence[str] | str | None) -> list[str] | str:
    if value is None:
        return []
    if isinstance(value, str):
        return ALL if value.strip().lower() == ALL else [value]
    return list(value)


def choose_splits(
    src: Path, scan: SourceScan, val: Sequence[str] | str | None, test: Sequence[str] | str | None
) -> dict[str, list[str]]:
    """``train`` / ``val`` / ``test`` / ``unlabelled`` case ids (empty splits dropped).

    ``val`` / ``test`` name case ids, or :data:`ALL`: every labelled case not named by the other.
    Unnamed cases are ``train``, except those unlabelled by the layout (nnU-Net ``imagesTs``), which form
    ``unlabelled``.
    """
    ids = sorted(scan.images, key=natural_key)
    asked = {"val": _split_ids(val), "test": _split_ids(test)}
    if asked["val"] == ALL and asked["test"] == ALL:
        raise UserError("val and test cannot both be 'all'")
    named = {k: v for k, v in asked.items() if v != ALL}
    for what, chosen in named.items():
        unknown = [i for i in chosen if i not in scan.images]
        if unknown:
            raise UserError(f"{src}: {what} cases {unknown} are not images of this folder (ids: {', '.join(ids)})")
    both = sorted(set(named.get("val", [])) & set(named.get("test", [])))
    if both:
        raise UserError(f"cases {both} are in both val and test")
    for what in asked.keys() - named.keys():
        taken = {i for chosen in named.values() for i in chosen}
        named[what] = [i for i in ids if i in scan.labels and i not in taken]
        if not named[what]:
            raise UserError(f"{src}: {what} 'all': no labelled cases left for the {what} split")
    taken = {i for chosen in named.values() for i in chosen}
    rest = [i for i in ids if i not in taken]
    splits = {
        "train": [i for i in rest if i not in scan.unlabelled_ids],
        "val": named["val"],
        "test": named["test"],
        "unlabelled": [i for i in rest if i in scan.unlabelled_ids],
    }
    return {k: v for k, v in splits.items() if v}

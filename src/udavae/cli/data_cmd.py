"""``udavae data ...``: import datasets into the canonical layout, check them, describe them, synthesise one.

Every import vets its source files before writing anything, prints what it wrote (per domain: cases,
labelled; splits) and then checks the result, so a dataset that imports without error is known to be
readable end to end. Problems go to stderr with exit status 2, as for every other command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from udavae.data.spec import DatasetSpec, LabelMap
from udavae.errors import UserError


# --------------------------------------------------------------------------- argument parsing
def _list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


LABELS_HELP = (
    "structures and their codes in the label files, in class order: NAME=CODE pairs, e.g. "
    "MYO=200,LV=500,RV=600; NAME=CODE+CODE+... folds several codes into one structure, e.g. "
    "MYO=200+1220+2221 (edema 1220 and scar 2221 count as myocardium), the first code being the one "
    "written into predicted masks. Each name and each code may appear once; code 0 is background"
)


def parse_labels(text: str) -> LabelMap:
    """``MYO=200+1220,LV=500`` -> a LabelMap (order kept; MYO folds codes 200 and 1220, 200 primary).

    Raises:
        UserError: malformed pair, a structure named twice, or a code given twice.
    """
    structures: dict[str, list[int]] = {}
    for item in _list(text):
        name, sep, codes = (part.strip() for part in item.partition("="))
        if not sep or not name:
            raise UserError(f"--labels: expected NAME=CODE pairs like MYO=200,LV=500, got {item!r}")
        if name in structures:
            raise UserError(
                f"--labels: structure {name!r} is named twice; to fold several codes into one "
                f"structure write {name}={'+'.join(map(str, structures[name]))}+CODE"
            )
        try:
            structures[name] = [int(c) for c in codes.split("+")]
        except ValueError:
            raise UserError(
                f"--labels: codes of {name!r} must be integers joined by '+', e.g. {name}=200+1220, got {codes!r}"
            ) from None
    if not structures:
        raise UserError("--labels: give at least one NAME=CODE pair, e.g. MYO=200,LV=500,RV=600")
    try:
        return LabelMap.from_structures(structures)
    except ValueError as exc:
        raise UserError(f"--labels: {exc}") from None


def _split_arg(text: str | None) -> list[str] | str | None:
    """``--val`` / ``--test``: comma-separated case ids, or ``all``."""
    if text is None:
        return None
    return "all" if text.strip().lower() == "all" else _list(text)


def _pair(text: str, kind: type, what: str) -> tuple:
    items = _list(text)
    try:
        values = [kind(v) for v in items]
    except ValueError:
        raise UserError(f"{what}: expected one or two numbers like 192 or 192,160, got {text!r}") from None
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0:
        raise UserError(f"{what}: expected one or two positive numbers, got {text!r}")
    return tuple(values)


# --------------------------------------------------------------------------- output
def describe(spec: DatasetSpec, full: bool = False) -> list[str]:
    """Human-readable lines: per domain cases / labelled and splits (plus label map etc. when ``full``)."""
    lines = [f"dataset {spec.name!r} at {spec.root}"]
    if full and spec.description:
        lines.append(f"  {spec.description}")
    for dom, cases in spec.domains.items():
        labelled = sum(1 for c in cases if c.label)
        splits = spec.splits.get(dom, {})
        split_text = ", ".join(f"{s} {len(ids)}" for s, ids in splits.items()) or "none"
        lines.append(f"  {dom}: {len(cases)} cases, {labelled} labelled; splits: {split_text}")
        if full:
            for s, ids in splits.items():
                lines.append(f"    {s}: {', '.join(ids)}")
    if full:
        lm = spec.labels
        all_codes = lm.structure_codes
        codes = ", ".join(
            f"{i} {name} (code{'s' * (len(all_codes[name]) > 1)} {'+'.join(map(str, all_codes[name]))})"
            for i, name in lm.class_names.items()
        )
        lines.append(f"  classes: 0 background (codes {list(lm.background_codes)}), {codes}")
        p = spec.preprocessing
        lines.append(
            f"  preprocessing: intensity {p.intensity} ({p.lower:g}-{p.upper:g} percentiles), "
            f"target spacing {list(p.target_spacing) if p.target_spacing else 'native'}, "
            f"size {p.size[0]}x{p.size[1]}"
        )
    return lines


def _run_check(root: Path) -> int:
    """Check the dataset at ``root``: problems and a FAILED line to stderr (exit 2), or an OK line.

    Warnings (labels beyond the training crop) go to stderr as ``warning:`` lines in both cases.
    """
    from udavae.data.check import Problem, check_dataset

    notes: list[Problem] = []
    problems = check_dataset(root, notes=notes)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        files = len({p.path for p in problems})
        print(
            f"FAILED: {len(problems)} problem{'s' * (len(problems) != 1)} in {files} "
            f"file{'s' * (files != 1)} of {root}",
            file=sys.stderr,
        )
        return 2
    spec = DatasetSpec.load(root)
    cases = [c for cs in spec.domains.values() for c in cs]
    print(f"OK: {len(spec.domains)} domains, {len(cases)} cases ({sum(1 for c in cases if c.label)} labelled)")
    return 0


def _imported(spec: DatasetSpec) -> int:
    print("\n".join(describe(spec)))
    return _run_check(spec.root)


# --------------------------------------------------------------------------- handlers
def _cmd_mscmrseg(args: argparse.Namespace) -> int:
    from udavae.data.importers import import_mscmrseg

    return _imported(import_mscmrseg(args.src, args.out, link=args.link))


def _cmd_folder(args: argparse.Namespace) -> int:
    from udavae.data.importers import import_folder

    spec = import_folder(
        args.src,
        args.out,
        domain=args.domain,
        labels=parse_labels(args.labels) if args.labels else None,
        label_suffix=args.label_suffix,
        image_suffix=args.image_suffix,
        val=_split_arg(args.val),
        test=_split_arg(args.test),
        size=_pair(args.size, int, "--size") if args.size else None,
        target_spacing=_pair(args.spacing, float, "--spacing") if args.spacing else None,
        link=args.link,
        require_labels=args.require_labels,
        unlabelled=args.unlabelled,
    )
    return _imported(spec)


def _cmd_mmwhs(args: argparse.Namespace) -> int:
    from udavae.data.importers import import_mmwhs

    spec = import_mmwhs(
        args.src,
        args.out,
        modalities=_list(args.modalities),
        structures=_list(args.structures),
        val_count=args.val_count,
        test_count=args.test_count,
        link=args.link,
    )
    return _imported(spec)


def _cmd_check(args: argparse.Namespace) -> int:
    return _run_check(Path(args.dataset))


def _cmd_info(args: argparse.Namespace) -> int:
    print("\n".join(describe(DatasetSpec.load(args.dataset), full=True)))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from udavae.data.synthetic import generate_dataset

    generate_dataset(
        args.out, n_source=args.n_source, n_target=args.n_target, size=args.size, slices=args.slices, seed=args.seed
    )
    return _imported(DatasetSpec.load(args.out))


# --------------------------------------------------------------------------- registration
def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``udavae data import|check|info|synth``."""
    data = subparsers.add_parser("data", help="import, check and describe datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    imp = data_sub.add_parser("import", help="import a dataset into the canonical layout")
    imp_sub = imp.add_subparsers(dest="importer", metavar="FORMAT", required=True)
    link_help = "symlink the source files instead of copying them"

    p = imp_sub.add_parser("mscmrseg", help="MS-CMRSeg 2019 Patch192 (C0 -> LGE)")
    p.add_argument("src", help="the Patch192 folder or its parent")
    p.add_argument("out", help="output dataset folder")
    p.add_argument("--link", action="store_true", help=link_help)
    p.set_defaults(func=_cmd_mscmrseg)

    p = imp_sub.add_parser(
        "folder",
        help="your own folder of NIfTI images (+ labels) as one domain",
        description="Import your own NIfTI images (+ labels) as one domain. Layouts "
        "(detected): a flat folder of <id>.nii.gz images beside "
        "<id><label-suffix>.nii.gz labels; SRC/images/ + SRC/labels/ with the "
        "same file names; nnU-Net's SRC/imagesTr/<id>_0000.nii.gz + "
        "SRC/labelsTr/<id>.nii.gz (SRC/imagesTs/ images become the split "
        "'unlabelled'). Every file is checked before anything is written.",
    )
    p.add_argument("src", help="source folder (flat, images/ + labels/, or nnU-Net imagesTr/ + labelsTr/)")
    p.add_argument("out", help="output dataset folder (new, or an existing dataset to add the domain to)")
    p.add_argument("--domain", required=True, help="domain name, e.g. LGE")
    p.add_argument(
        "--labels",
        metavar="NAME=CODE[+CODE...],...",
        help=LABELS_HELP + " Optional when OUT is an existing dataset: its label map is used.",
    )
    p.add_argument("--label-suffix", help="label file name suffix in a flat folder (default: _label)")
    p.add_argument(
        "--image-suffix",
        default="",
        help="image file name suffix not part of the case id, e.g. _C0 for Case1_C0.nii.gz (default: none)",
    )
    p.add_argument(
        "--val", help="comma-separated case ids for the val split, or 'all' (every labelled case not in --test)"
    )
    p.add_argument(
        "--test",
        help="comma-separated case ids for the test split, or 'all' (every labelled case "
        "not in --val: the whole domain as a test set)",
    )
    p.add_argument("--size", help="in-plane size, e.g. 192 or 192,160 (default: largest, rounded up to 16)")
    p.add_argument("--spacing", help="in-plane spacing to resample to in mm, e.g. 1.25,1.25 (default: native)")
    p.add_argument("--require-labels", action="store_true", help="fail when an image has no label file")
    p.add_argument(
        "--unlabelled", action="store_true", help="the domain has no label files (without it, finding none is an error)"
    )
    p.add_argument("--link", action="store_true", help=link_help)
    p.set_defaults(func=_cmd_folder)

    p = imp_sub.add_parser("mmwhs", help="MM-WHS 2017 raw CT/MR volumes")
    p.add_argument("src", help="folder of ct_train_1001_image.nii.gz ... (or with ct_train/, mr_train/)")
    p.add_argument("out", help="output dataset folder")
    p.add_argument("--modalities", default="ct,mr", help="ct, mr or ct,mr (default)")
    p.add_argument(
        "--structures",
        default="MYO,LA,LV,RA,RV",
        help="structures to segment (others become background); default MYO,LA,LV,RA,RV",
    )
    p.add_argument("--val-count", type=int, default=0, help="labelled cases per domain for val")
    p.add_argument("--test-count", type=int, default=0, help="labelled cases per domain for test")
    p.add_argument("--link", action="store_true", help=link_help)
    p.set_defaults(func=_cmd_mmwhs)

    p = data_sub.add_parser(
        "check",
        help="read every file of a dataset and report every problem (on stderr; exit status 2 when there is any)",
    )
    p.add_argument("dataset", help="dataset folder")
    p.set_defaults(func=_cmd_check)

    p = data_sub.add_parser("info", help="domains, cases, splits, label map and preprocessing of a dataset")
    p.add_argument("dataset", help="dataset folder")
    p.set_defaults(func=_cmd_info)

    p = data_sub.add_parser("synth", help="generate a small synthetic two-domain dataset")
    p.add_argument("out", help="output dataset folder")
    p.add_argument("--n-source", type=int, default=12, help="source-domain cases (default 12)")
    p.add_argument("--n-target", type=int, default=12, help="target-domain cases (default 12)")
    p.add_argument("--size", type=int, default=96, help="in-plane size (default 96)")
    p.add_argument("--slices", type=int, default=8, help="slices per volume (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=_cmd_synth)

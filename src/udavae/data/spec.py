"""The canonical description of a prepared dataset: ``dataset.json`` beside ``<domain>/images|labels``.

In the spirit of nnU-Net's dataset.json + imagesTr/labelsTr, one JSON file declares:

- ``name``: dataset name;
- ``labels``: structure name -> code as stored in the label files, or a list of codes folded into
  that structure, primary code first (class index = position + 1; 0 is background);
  ``background_codes``: further codes mapped to background (e.g. MM-WHS AA/PA when not segmented);
- ``domains``: domain name -> list of cases ``{"id", "image", "label"?}`` (paths relative to the root);
- ``splits``: domain name -> split name -> case ids (e.g. ``LGE: {val: [...], test: [...]}``);
- ``preprocessing``: how images are normalised and sized (:mod:`udavae.data.preprocessing`).

Domain names, case ids and split names become file and folder names (``<domain>/images/<id>.nii.gz``,
``eval/<domain>_<split>_<checkpoint>``, ``masks/<id>.nii.gz``), so every one must be a safe name
(:data:`udavae.fileio.SAFE_NAME_RULE`); a description with another is refused where it is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from udavae.data.preprocessing import Preprocessing
from udavae.errors import DataError
from udavae.fileio import SAFE_NAME_RULE, is_safe_name, read_json, write_json

SPEC_FILE = "dataset.json"
#: Marker file present in a dataset folder while an import into it runs (an interrupted import leaves it).
INCOMPLETE_MARKER = ".udavae_import_incomplete"
FORMAT_VERSION = 1


@dataclass
class Case:
    """One volume of a domain: an image and, when labelled, its label file (paths relative to root)."""

    id: str
    image: str
    label: str | None = None


@dataclass
class LabelMap:
    """Structure names and their codes in the label files.

    Class indices are 0 = background, then 1..K-1 in the order of ``codes``. A structure may fold several
    file codes into one class (e.g. myocardium = normal 200 + edema 1220 + scar 2221): ``codes`` holds
    each structure's primary code (written back by :meth:`to_codes`), ``extra_codes`` the further codes
    that :meth:`to_classes` maps to the same class. In ``dataset.json`` a structure's value is its code,
    or the list ``[primary, *extra]``.
    """

    codes: dict[str, int]
    background_codes: tuple[int, ...] = (0,)
    extra_codes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.codes:
            raise ValueError("a label map needs at least one structure")
        unknown = [name for name in self.extra_codes if name not in self.codes]
        if unknown:
            raise ValueError(f"extra codes given for structures {unknown} that are not in the label map")
        self.extra_codes = {name: tuple(extra) for name, extra in self.extra_codes.items() if extra}
        owner: dict[int, str] = {}
        for name, codes in self.structure_codes.items():
            for code in codes:
                if code in owner:
                    where = "twice for " + name if owner[code] == name else f"for both {owner[code]} and {name}"
                    raise ValueError(f"label code {code} is given {where}; each code may name one structure once")
                owner[code] = name
        clash = set(owner) & set(self.background_codes)
        if clash:
            raise ValueError(f"codes {sorted(clash)} are both structures and background")

    @classmethod
    def from_structures(
        cls, structures: Mapping[str, int | Sequence[int]], background_codes: Sequence[int] = (0,)
    ) -> LabelMap:
        """Build a map from ``{name: code}`` or ``{name: [primary, *extra]}`` (the first code is primary).

        Raises:
            ValueError: a structure without codes, or a code that is not an integer.
        """
        codes: dict[str, int] = {}
        extra: dict[str, tuple[int, ...]] = {}
        for name, value in structures.items():
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            if not values:
                raise ValueError(f"structure {name!r} has no codes")
            bad = [v for v in values if not isinstance(v, (int, np.integer)) or isinstance(v, bool)]
            if bad:
                raise ValueError(f"codes of structure {name!r} must be integers, got {bad[0]!r}")
            codes[str(name)] = int(values[0])
            extra[str(name)] = tuple(int(v) for v in values[1:])
        return cls(codes=codes, background_codes=tuple(int(c) for c in background_codes), extra_codes=extra)

    @property
    def structure_codes(self) -> dict[str, tuple[int, ...]]:
        """Structure name -> all its codes, primary first."""
        return {name: (code, *self.extra_codes.get(name, ())) for name, code in self.codes.items()}

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.codes) + 1

    @property
    def class_names(self) -> dict[int, str]:
        """Class index -> name (background excluded)."""
        return {i + 1: name for i, name in enumerate(self.codes)}

    @property
    def valid_codes(self) -> set[int]:
        """Every code allowed in a label file."""
        return {c for codes in self.structure_codes.values() for c in codes} | set(self.background_codes)

    def describe(self) -> str:
        """``MYO=200+1220, LV=500 (background 0)``: the map as ``--labels`` takes it."""
        items = ", ".join(f"{name}={'+'.join(map(str, codes))}" for name, codes in self.structure_codes.items())
        return f"{items} (background {'+'.join(map(str, self.background_codes))})"

    def to_classes(self, codes: np.ndarray, source: str | Path = "label volume") -> np.ndarray:
        """Map a label array of file codes to class indices (uint8); every code of a structure gives its class.

        Raises:
            DataError: a code outside the map occurs (naming ``source`` and the offending codes).
        """
        rounded = np.rint(codes).astype(np.int64)
        if np.any(np.abs(codes - rounded) > 1e-3):
            raise DataError(f"{source}: label volume holds non-integer values")
        present = np.unique(rounded)
        unknown = sorted(set(present.tolist()) - self.valid_codes)
        if unknown:
            raise DataError(f"{source}: label codes {unknown} are not in the label map {self.describe()}")
        out = np.zeros(rounded.shape, dtype=np.uint8)
        for cls, structure in enumerate(self.structure_codes.values(), start=1):
            out[np.isin(rounded, structure)] = cls
        return out

    def to_codes(self, classes: np.ndarray) -> np.ndarray:
        """Map class indices back to the dataset's primary codes (int16; background 0 -> first bg code)."""
        lut = np.array([self.background_codes[0], *self.codes.values()], dtype=np.int64)
        return lut[np.asarray(classes, dtype=np.int64)].astype(np.int16)

    def to_dict(self) -> dict[str, Any]:
        """JSON form: a structure's value is its code, or ``[primary, *extra]`` when it folds several."""
        codes = {name: c[0] if len(c) == 1 else list(c) for name, c in self.structure_codes.items()}
        return {"codes": codes, "background_codes": list(self.background_codes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelMap:
        """Read :meth:`to_dict`'s form (plain int codes, as older files hold, or lists of ints).

        Raises:
            ValueError / TypeError: malformed codes (callers report them with the file's name).
        """
        if not isinstance(d.get("codes"), dict):
            raise TypeError("'labels.codes' must map structure names to codes")
        background = d.get("background_codes", [0])
        if not isinstance(background, list):
            raise TypeError("'labels.background_codes' must be a list of codes")
        structures = {str(k): [_code(c) for c in v] if isinstance(v, list) else _code(v) for k, v in d["codes"].items()}
        return cls.from_structures(structures, [_code(c) for c in background])


def _code(value: Any) -> int:
    """A label code read from JSON: an integer (or an integer written as a string or float, as older
    files may hold)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"label code must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"label code must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise ValueError(f"label code must be an integer, got {value!r}")
    return int(number)


@dataclass
class DatasetSpec:
    """A prepared dataset: label map, domains with cases, named splits and preprocessing."""

    name: str
    labels: LabelMap
    domains: dict[str, list[Case]]
    splits: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    description: str = ""
    root: Path = Path(".")

    # ----------------------------------------------------------------- access
    def cases(self, domain: str) -> list[Case]:
        """Cases of ``domain``; raises a clear error for an unknown domain."""
        if domain not in self.domains:
            raise DataError(f"dataset {self.name!r} has no domain {domain!r} (domains: {', '.join(self.domains)})")
        return self.domains[domain]

    def split(self, domain: str, split: str) -> list[Case]:
        """Cases of a named split of ``domain``."""
        by_id = {c.id: c for c in self.cases(domain)}
        names = self.splits.get(domain, {})
        if split not in names:
            have = ", ".join(names) or "none"
            raise DataError(f"dataset {self.name!r}: domain {domain!r} has no split {split!r} (splits: {have})")
        return [by_id[i] for i in names[split]]

    def path(self, rel: str) -> Path:
        """Absolute path of a file named in the spec."""
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    # ---------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "description": self.description,
            "labels": self.labels.to_dict(),
            "domains": {
                d: [{k: v for k, v in vars(c).items() if v is not None} for c in cases]
                for d, cases in self.domains.items()
            },
            "splits": self.splits,
            "preprocessing": self.preprocessing.to_dict(),
        }

    def save(self, root: str | Path | None = None) -> Path:
        """Write ``dataset.json`` atomically into ``root`` (default: ``self.root``)."""
        root = Path(root) if root is not None else self.root
        self.validate()
        return write_json(root / SPEC_FILE, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], root: Path, source: str = SPEC_FILE) -> DatasetSpec:
        try:
            spec = cls(
                name=str(d["name"]),
                labels=LabelMap.from_dict(d["labels"]),
                domains={
                    str(dom): [Case(id=str(c["id"]), image=str(c["image"]), label=c.get("label")) for c in cases]
                    for dom, cases in d["domains"].items()
                },
                splits={
                    str(k): {str(s): [str(i) for i in ids] for s, ids in v.items()}
                    for k, v in d.get("splits", {}).items()
                },
                preprocessing=Preprocessing.from_dict(d.get("preprocessing", {})),
                description=str(d.get("description", "")),
                root=root,
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise DataError(f"{source}: malformed dataset description ({type(exc).__name__}: {exc})") from None
        spec.validate(source)
        return spec

    @classmethod
    def load(cls, root: str | Path) -> DatasetSpec:
        """Read ``root/dataset.json`` (``root`` may also be the JSON file itself)."""
        root = Path(root)
        if root.is_file():
            root = root.parent
        if not root.exists():
            raise DataError(f"dataset folder {root} not found")
        d = read_json(root / SPEC_FILE, what="dataset description")
        return cls.from_dict(d, root=root, source=str(root / SPEC_FILE))

    def validate(self, source: str = SPEC_FILE) -> None:
        """Structural checks of the description (not of the files: see :mod:`udavae.data.check`)."""
        bad = unsafe_names(
            {d: [c.id for c in cases] for d, cases in self.domains.items()},
            {d: list(s) for d, s in self.splits.items()},
        )
        if bad:
            raise DataError(unsafe_names_message(source, bad))
        for dom, cases in self.domains.items():
            ids = [c.id for c in cases]
            dup = sorted({i for i in ids if ids.count(i) > 1})
            if dup:
                raise DataError(f"{source}: domain {dom!r} lists case ids twice: {dup}")
        for dom, splits in self.splits.items():
            if dom not in self.domains:
                raise DataError(f"{source}: splits name unknown domain {dom!r}")
            ids = {c.id for c in self.domains[dom]}
            for s, members in splits.items():
                missing = sorted(set(members) - ids)
                if missing:
                    raise DataError(f"{source}: split {dom}/{s} names unknown cases {missing}")


def unsafe_names(domains: Mapping[str, Sequence[str]], splits: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Every domain name, case id (``domains``: domain -> ids) and split name (``splits``: domain -> split
    names) that is not a safe name, each described as ``case id '../x' of domain 'LGE'``."""
    bad: list[str] = []
    for dom, ids in domains.items():
        if not is_safe_name(dom):
            bad.append(f"domain {dom!r}")
        bad += [f"case id {i!r} of domain {dom!r}" for i in ids if not is_safe_name(i)]
    for dom, names in (splits or {}).items():
        if not is_safe_name(dom) and dom not in domains:
            bad.append(f"domain {dom!r} (in splits)")
        bad += [f"split {s!r} of domain {dom!r}" for s in names if not is_safe_name(s)]
    return bad


def unsafe_names_message(source: str | Path, bad: list[str]) -> str:
    """One line naming the file and every unsafe entry (at most ten shown)."""
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    return (
        f"{source}: names that would leave their folder or are not portable file names: "
        f"{', '.join(bad[:10])}{more}; use {SAFE_NAME_RULE}"
    )


def case_relpaths(domain: str, case_id: str, suffix: str = ".nii.gz") -> tuple[str, str]:
    """Canonical relative (image, label) paths of a case: ``<domain>/images|labels/<id><suffix>``."""
    return f"{domain}/images/{case_id}{suffix}", f"{domain}/labels/{case_id}{suffix}"

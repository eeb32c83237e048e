"""The runs ``udavae compare`` reads: model folders found under the given paths, and their per-patient scores.

:func:`find_runs` turns paths (model folders, sweep folders, any folder holding them, ``LABEL=PATH``) into
:class:`RunInfo` (group, seed, target domain), and :func:`load_scores` reads what ``udavae evaluate`` wrote
(``RUN/eval/<domain>_<split>_<checkpoint>/metrics.csv``) into :class:`RunScores`. The statistics over them are
in :mod:`udavae.evaluation.compare`.
"""

from __future__ import annotations

import csv
import math
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from udavae.errors import DataError, UserError
from udavae.fileio import read_json
from udavae.layout import CONFIG_FILE, MODEL_FILE, is_model_folder

#: Metrics ``compare`` can summarise: (label, unit, factor from the metrics.csv value, higher is better).
METRICS: dict[str, tuple[str, str, float, bool]] = {
    "dice": ("Dice", "%", 100.0, True),
    "iou": ("IoU", "%", 100.0, True),
    "assd": ("ASSD", "mm", 1.0, False),
    "hd95": ("HD95", "mm", 1.0, False),
    "hd": ("HD", "mm", 1.0, False),
}

#: The group used as reference when ``--reference`` is not given and the group exists.
DEFAULT_REFERENCE = "noadapt"
#: Fewer seeds than this and the seed-to-seed spread is flagged as missing or rough.
FEW_SEEDS = 3


# ----------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class RunInfo:
    """One trained model folder and the group it is compared in.

    Attributes:
        path: the model folder, as found from the user's argument (used in messages and commands).
        group: the group (method) name.
        group_from: where the group came from: ``"label"`` (LABEL=PATH), ``"sweep_run.json"`` or ``"preset"``.
        seed: the training seed (config ``runtime.seed``, else sweep_run.json ``seed``; None if neither).
        preset: the config's ``preset``.
        method: the config's ``method.name``.
        domain: the evaluated domain: the model's target domain.
        structures: structure names in class order (model.json ``class_names``).
        target_images: what the method trained on from the target domain: ``"none"`` (single-source methods:
            noadapt, SLAug, GIN-IPA), ``"unlabelled"`` (adaptation methods), ``""`` when the method is unknown.
    """

    path: Path
    group: str
    group_from: str
    seed: int | None
    preset: str
    method: str
    domain: str
    structures: tuple[str, ...]
    target_images: str = ""


def is_sweep_folder(path: Path) -> bool:
    """A folder written by ``udavae sweep``: it holds sweep.json."""
    return (path / "sweep.json").is_file()


def parse_path_arg(arg: str) -> tuple[str | None, Path]:
    """``PATH`` -> (None, PATH); ``LABEL=PATH`` -> (LABEL, PATH) unless the whole argument is an existing path."""
    if "=" in arg and not Path(arg).exists():
        label, _, path = arg.partition("=")
        if not label.strip() or not path:
            raise UserError(f"{arg!r}: expected PATH or LABEL=PATH")
        return label.strip(), Path(path)
    return None, Path(arg)


def find_model_folders(root: Path) -> list[Path]:
    """``root`` if it is a model folder, else every model folder below it (sorted; hidden folders skipped, and
    ``mlruns`` folders, whose MLflow artifacts hold copies of model folders)."""
    if not root.exists():
        raise UserError(f"{root} does not exist")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder (expected a model folder, a sweep folder or a folder of runs)")
    if is_model_folder(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if is_model_folder(here):
            found.append(here)
            dirnames[:] = []  # a model folder's eval/, checkpoints/ hold no further runs
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "mlruns")
    return found


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a configuration (expected a mapping of keys)")
    return data


def read_run(path: Path, label: str | None = None) -> RunInfo:
    """The :class:`RunInfo` of model folder ``path``; ``label`` (from LABEL=PATH) overrides the group.

    Group by default: ``sweep_run.json``'s ``group`` when the run belongs to a sweep, else the config's preset.
    """
    info = read_json(path / MODEL_FILE, "model description")
    cfg = _read_yaml(path / CONFIG_FILE)
    sweep = read_json(path / "sweep_run.json", "sweep run description") if (path / "sweep_run.json").is_file() else {}
    method = cfg.get("method") if isinstance(cfg.get("method"), dict) else {}
    preset = str(cfg.get("preset") or method.get("name") or "")
    seed = (cfg.get("runtime") or {}).get("seed") if isinstance(cfg.get("runtime"), dict) else None
    if seed is None:
        seed = sweep.get("seed")
    if label is not None:
        group, group_from = label, "label"
    elif sweep.get("group"):
        group, group_from = str(sweep["group"]), "sweep_run.json"
    elif preset:
        group, group_from = preset, "preset"
    else:
        raise DataError(f"{path / 'config.yaml'} names no preset: give the run a group as LABEL={path}")
    domain = info.get("target") or (cfg.get("data") or {}).get("target")
    if not domain:
        raise DataError(f"{path / 'model.json'} names no target domain ('target')")
    names = info.get("class_names") or {}
    structures = tuple(str(v) for k, v in sorted(names.items(), key=lambda kv: int(kv[0])) if int(k) != 0)
    return RunInfo(
        path=path,
        group=group,
        group_from=group_from,
        seed=None if seed is None else int(seed),
        preset=preset,
        method=str(method.get("name", preset)),
        domain=str(domain),
        structures=structures,
        target_images=target_images(str(method.get("kind", ""))),
    )


def target_images(kind: str) -> str:
    """``"none"`` if method kind ``kind`` trains without target images, ``"unlabelled"`` if it reads them
    (never their labels), ``""`` for a kind this udavae does not know."""
    from udavae.methods import METHODS

    cls = METHODS.get(kind)
    if cls is None:
        return ""
    return "unlabelled" if cls.needs_target else "none"


def find_runs(args: Sequence[str]) -> list[RunInfo]:
    """Every run named by the command-line ``PATH``/``LABEL=PATH`` arguments, checked for consistency.

    A run reached twice (e.g. a folder and its parent) is kept once, with its first group.

    Raises:
        UserError: a path without model folders, two runs of one group with the same seed (both named), or
            runs of different target domains.
    """
    runs: list[RunInfo] = []
    seen: set[Path] = set()
    for arg in args:
        label, root = parse_path_arg(arg)
        folders = find_model_folders(root)
        if not folders:
            raise UserError(f"no model folders (with model.json and config.yaml) in {root}")
        for folder in folders:
            key = folder.resolve()
            if key not in seen:
                seen.add(key)
                runs.append(read_run(folder, label))
    by_seed: dict[tuple[str, int | None], RunInfo] = {}
    for run in runs:
        other = by_seed.setdefault((run.group, run.seed), run)
        if other is not run:
            seed = "an unknown seed" if run.seed is None else f"seed {run.seed}"
            raise UserError(
                f"group {run.group!r} has two runs with {seed}: {other.path} and {run.path}; "
                f"give them different groups with LABEL=PATH or leave one out"
            )
    domains: dict[str, list[str]] = {}
    for run in runs:
        domains.setdefault(run.domain, []).append(str(run.path))
    if len(domains) > 1:
        listed = "; ".join(f"{d}: {', '.join(p)}" for d, p in domains.items())
        raise UserError(f"the runs adapt to different target domains ({listed}); compare runs of one task")
    return runs


def default_out(args: Sequence[str]) -> Path:
    """``<first PATH>/compare`` when the first PATH is a sweep folder, else ``./compare``."""
    first = parse_path_arg(args[0])[1] if args else Path(".")
    return first / "compare" if is_sweep_folder(first) else Path("compare")


# ---------------------------------------------------------------------------------------------- scores


def eval_dir(run: RunInfo, split: str, checkpoint: str) -> Path:
    """Where ``udavae evaluate`` writes a run's metrics for ``split`` and ``checkpoint``."""
    from udavae.layout import eval_folder

    return eval_folder(run.path, run.domain, split, checkpoint)


def evaluate_command(run: RunInfo | Path, split: str, checkpoint: str) -> str:
    """The command that writes the evaluation ``compare`` needs."""
    path = run.path if isinstance(run, RunInfo) else run
    return f"udavae evaluate {shlex.quote(str(path))} --split {shlex.quote(split)} --checkpoint {checkpoint}"


@dataclass(frozen=True)
class RunScores:
    """One run's per-patient scores on one split, in compare's units (Dice/IoU %, distances mm).

    Attributes:
        run: the run.
        split: the evaluated split.
        file: the metrics file read.
        postprocessed: whether the file holds post-processed masks that differ from the raw ones.
        cases: patient ids, in file order.
        values: structure -> metric -> one value per case (NaN: undefined, e.g. a distance to a missed
            structure, or a structure the file lacks).
    """

    run: RunInfo
    split: str
    file: Path
    postprocessed: bool
    cases: tuple[str, ...]
    values: dict[str, dict[str, np.ndarray]] = field(repr=False)


def _to_float(text: str | None) -> float:
    if text is None or text.strip().lower() in ("", "nan", "none", "null"):
        return math.nan
    return float(text)


#: The pseudo-structure holding each patient's mean over the structures (the "mean Dice" papers report). NaN for a
#: patient where any structure's value is undefined, so a missed structure's distance cannot flatter the mean.
MEAN_STRUCTURE = "mean"


def read_metrics_csv(path: Path, metrics: Sequence[str]) -> tuple[tuple[str, ...], dict[str, dict[str, np.ndarray]]]:
    """Read an ``evaluate`` metrics file: (cases, structure -> metric -> values in compare's units), with the
    per-patient mean over the structures as the last structure, :data:`MEAN_STRUCTURE`."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    missing = [c for c in ("case", "structure", *metrics) if c not in fields]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)} (columns: {', '.join(fields)})")
    cases: dict[str, None] = {}
    table: dict[tuple[str, str], dict[str, float]] = {}
    for i, row in enumerate(rows, start=2):
        key = (row["case"], row["structure"])
        if key in table:
            raise DataError(f"{path} line {i}: a second row for case {key[0]!r}, structure {key[1]!r}")
        try:
            table[key] = {m: _to_float(row[m]) * METRICS[m][2] for m in metrics}
        except ValueError as exc:
            raise DataError(f"{path} line {i}: {exc}") from None
        cases.setdefault(row["case"], None)
    structures = dict.fromkeys(s for _, s in table)
    values = {
        s: {m: np.array([table.get((c, s), {}).get(m, math.nan) for c in cases], dtype=np.float64) for m in metrics}
        for s in structures
    }
    if len(values) > 1 and MEAN_STRUCTURE not in values:
        values[MEAN_STRUCTURE] = {m: np.mean([v[m] for v in values.values()], axis=0) for m in metrics}
    return tuple(cases), values


def load_scores(
    runs: Sequence[RunInfo],
    splits: Sequence[str],
    checkpoint: str = "best",
    raw: bool = False,
    metrics: Sequence[str] = ("dice", "assd", "hd95"),
) -> list[RunScores]:
    """Each run's scores on each split (``metrics.csv``; ``metrics_raw.csv`` where present with ``raw``).

    Raises:
        UserError: listing every run that lacks a needed evaluation, with the command that writes it.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    missing, out = [], []
    for run in runs:
        for split in splits:
            folder = eval_dir(run, split, checkpoint)
            post, raw_file = folder / "metrics.csv", folder / "metrics_raw.csv"
            if not post.is_file():
                missing.append(
                    f"{run.path} has no {split}-split evaluation of its {checkpoint} checkpoint "
                    f"({post} not found): run '{evaluate_command(run, split, checkpoint)}'"
                )
                continue
            file = raw_file if raw and raw_file.is_file() else post
            cases, values = read_metrics_csv(file, metrics)
            out.append(RunScores(run, split, file, file == post and raw_file.is_file(), cases, values))
    if missing:
        hint = " (or leave that split out with --splits)" if len(splits) > 1 else ""
        raise UserError("missing evaluation(s): " + "; ".join(missing) + hint)
    return out

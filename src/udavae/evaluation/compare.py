"""Comparing groups of trained models (methods x seeds) on their evaluated per-patient scores.

``udavae compare`` reads what ``udavae evaluate`` wrote into each model folder (``RUN/eval/<domain>_<split>_
<checkpoint>/metrics.csv``), groups the runs by method, and summarises every group, split, structure and metric
two ways (see :mod:`udavae.evaluation.statistics` for why both are needed):

- over **seeds**: each run's mean over patients, then mean ± std of those per-seed means;
- over **patients**: each patient's score averaged over the group's seeds, with a bootstrap interval of their
  mean, and a paired Wilcoxon test against a reference group on the same patients.

The steps are separate functions: :func:`find_runs` (folders -> :class:`RunInfo`), :func:`load_scores`
(metrics files -> :class:`RunScores`), :func:`summarize` (scores -> :class:`Comparison`); :func:`compare` chains
them. Rendering lives in :mod:`udavae.reports.compare`. Nothing here trains or runs a network.
"""

from __future__ import annotations

import csv
import math
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from udavae.errors import DataError, UserError
from udavae.evaluation import statistics as st
from udavae.fileio import read_json

__all__ = [
    "METRICS",
    "Comparison",
    "GroupSummary",
    "PairedTest",
    "RunInfo",
    "RunScores",
    "compare",
    "default_out",
    "evaluate_command",
    "find_runs",
    "load_scores",
    "summarize",
]

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
    """

    path: Path
    group: str
    group_from: str
    seed: int | None
    preset: str
    method: str
    domain: str
    structures: tuple[str, ...]


def is_model_folder(path: Path) -> bool:
    """A folder written by ``udavae train``: it holds model.json and config.yaml."""
    return (path / "model.json").is_file() and (path / "config.yaml").is_file()


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
    """``root`` if it is a model folder, else every model folder below it (sorted; hidden folders skipped)."""
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
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
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
    info = read_json(path / "model.json", "model description")
    cfg = _read_yaml(path / "config.yaml")
    sweep = read_json(path / "sweep_run.json", "sweep run description") \
        if (path / "sweep_run.json").is_file() else {}
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
    return RunInfo(path=path, group=group, group_from=group_from, seed=None if seed is None else int(seed),
                   preset=preset, method=str(method.get("name", preset)), domain=str(domain), structures=structures)


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
            raise UserError(f"group {run.group!r} has two runs with {seed}: {other.path} and {run.path}; "
                            f"give them different groups with LABEL=PATH or leave one out")
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
    return run.path / "eval" / f"{run.domain}_{split}_{checkpoint}"


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


def read_metrics_csv(path: Path, metrics: Sequence[str]) -> tuple[tuple[str, ...], dict[str, dict[str, np.ndarray]]]:
    """Read an ``evaluate`` metrics file: (cases, structure -> metric -> values in compare's units)."""
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
    values = {s: {m: np.array([table.get((c, s), {}).get(m, math.nan) for c in cases], dtype=np.float64)
                  for m in metrics} for s in structures}
    return tuple(cases), values


def load_scores(runs: Sequence[RunInfo], splits: Sequence[str], checkpoint: str = "best", raw: bool = False,
                metrics: Sequence[str] = ("dice", "assd", "hd95")) -> list[RunScores]:
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
                missing.append(f"{run.path} has no {split}-split evaluation of its {checkpoint} checkpoint "
                               f"({post} not found): run '{evaluate_command(run, split, checkpoint)}'")
                continue
            file = raw_file if raw and raw_file.is_file() else post
            cases, values = read_metrics_csv(file, metrics)
            out.append(RunScores(run, split, file, file == post and raw_file.is_file(), cases, values))
    if missing:
        hint = " (or leave that split out with --splits)" if len(splits) > 1 else ""
        raise UserError("missing evaluation(s): " + "; ".join(missing) + hint)
    return out


# ------------------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class GroupSummary:
    """One group's scores for one split, structure and metric.

    Attributes:
        group, split, structure, metric: what is summarised.
        seeds: the group's training seeds (run order: sorted by seed).
        seed_means: each seed's mean over its patients (NaN excluded).
        mean, std, n_seeds: mean ± std (ddof=1) over the finite per-seed means, and their number.
        patients: patient ids (union over the seeds).
        patient_scores: each patient's score averaged over the seeds that scored it.
        patient_mean: mean of the finite seed-averaged patient scores.
        ci_low, ci_high: percentile-bootstrap 95% interval of ``patient_mean`` (resampling patients).
        n_patients: patients with a finite seed-averaged score.
    """

    group: str
    split: str
    structure: str
    metric: str
    seeds: tuple[int | None, ...]
    seed_means: tuple[float, ...]
    mean: float
    std: float
    n_seeds: int
    patients: tuple[str, ...]
    patient_scores: np.ndarray = field(repr=False, compare=False)
    patient_mean: float
    ci_low: float
    ci_high: float
    n_patients: int

    @property
    def unit(self) -> str:
        return METRICS[self.metric][1]

    def row(self) -> dict[str, Any]:
        """The summary as one ``compare.csv`` row (typed values; the writer formats them)."""
        return {
            "group": self.group, "split": self.split, "structure": self.structure, "metric": self.metric,
            "unit": self.unit, "n_seeds": self.n_seeds, "seeds": self.seeds, "mean": self.mean, "std": self.std,
            "ci_low": self.ci_low, "ci_high": self.ci_high, "n_patients": self.n_patients,
            "patient_mean": self.patient_mean, "seed_means": self.seed_means,
        }

    def scores_by_patient(self) -> dict[str, float]:
        return dict(zip(self.patients, (float(v) for v in self.patient_scores)))


@dataclass(frozen=True)
class PairedTest:
    """A group against the reference on one split, structure and metric (seed-averaged patient scores).

    Attributes:
        group, reference, split, structure, metric: what is compared.
        mean_diff: mean over the paired patients of group - reference (compare's units).
        p_value: two-sided Wilcoxon signed-rank p-value (1 if all differences are zero, NaN if too few pairs).
        statistic: scipy's Wilcoxon statistic.
        n_patients: paired patients (finite in both groups).
        seed_std: the larger seed-to-seed std of the two groups (NaN if neither has two seeds).
        within_seed_noise: ``|mean_diff| < seed_std``: retraining alone moves the score by as much.
        note: why p is 1 or NaN ("" otherwise).
    """

    group: str
    reference: str
    split: str
    structure: str
    metric: str
    mean_diff: float
    p_value: float
    statistic: float
    n_patients: int
    seed_std: float
    within_seed_noise: bool
    note: str = ""

    def row(self) -> dict[str, Any]:
        """The test as one ``tests.csv`` row."""
        return {
            "group": self.group, "reference": self.reference, "split": self.split, "structure": self.structure,
            "metric": self.metric, "unit": METRICS[self.metric][1], "mean_diff": self.mean_diff,
            "p_value": self.p_value, "statistic": self.statistic, "n_patients": self.n_patients,
            "seed_std": self.seed_std, "within_seed_noise": self.within_seed_noise, "note": self.note,
        }


@dataclass
class Comparison:
    """Everything ``udavae compare`` reports: the settings, the runs, the summaries, the tests and notes."""

    runs: list[RunInfo]
    scores: list[RunScores]
    groups: list[str]
    reference: str
    splits: list[str]
    structures: list[str]
    metrics: list[str]
    checkpoint: str
    raw: bool
    n_resamples: int
    seed: int
    summaries: list[GroupSummary]
    tests: list[PairedTest]
    notes: list[str]

    @property
    def domain(self) -> str:
        return self.runs[0].domain if self.runs else ""

    def summary(self, group: str, split: str, structure: str, metric: str) -> GroupSummary:
        """The summary of one cell (KeyError if absent)."""
        for s in self.summaries:
            if (s.group, s.split, s.structure, s.metric) == (group, split, structure, metric):
                return s
        raise KeyError((group, split, structure, metric))

    def test(self, group: str, split: str, structure: str, metric: str) -> PairedTest | None:
        """The test of ``group`` against the reference (None for the reference itself)."""
        return next((t for t in self.tests
                     if (t.group, t.split, t.structure, t.metric) == (group, split, structure, metric)), None)

    def seeds(self, group: str) -> list[int | None]:
        return sorted((r.seed for r in self.runs if r.group == group), key=lambda s: (s is None, s or 0))


def _natural_key(text: str) -> list[Any]:
    """Sort key for ids like patient6 < patient10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def summarize_group(group: str, split: str, structure: str, metric: str, runs: Sequence[RunScores],
                    n_resamples: int = 10000, seed: int = 0) -> GroupSummary:
    """Summarise one group's runs (one per seed) on one split, structure and metric."""
    runs = sorted(runs, key=lambda r: (r.run.seed is None, r.run.seed or 0))
    patients = sorted({c for r in runs for c in r.cases}, key=_natural_key)
    index = {p: i for i, p in enumerate(patients)}
    matrix = np.full((len(runs), len(patients)), np.nan)
    for row, r in enumerate(runs):
        vals = r.values.get(structure, {}).get(metric)
        if vals is not None:
            matrix[row, [index[c] for c in r.cases]] = vals
    seed_means = tuple(st.nanmean(matrix[i]) for i in range(len(runs)))
    over_seeds = st.seed_summary(seed_means)
    per_patient = st.seed_average(matrix) if runs else np.zeros(0)
    low, high = st.bootstrap_ci(per_patient, n_resamples, seed)
    return GroupSummary(group=group, split=split, structure=structure, metric=metric,
                        seeds=tuple(r.run.seed for r in runs), seed_means=seed_means, mean=over_seeds.mean,
                        std=over_seeds.std, n_seeds=over_seeds.n_seeds, patients=tuple(patients),
                        patient_scores=per_patient, patient_mean=st.nanmean(per_patient), ci_low=low, ci_high=high,
                        n_patients=int(np.isfinite(per_patient).sum()))


def paired_against(summary: GroupSummary, ref: GroupSummary) -> PairedTest:
    """Paired Wilcoxon test of a group's seed-averaged patient scores against the reference's."""
    a, b = summary.scores_by_patient(), ref.scores_by_patient()
    common = [p for p in summary.patients if p in b]
    res = st.paired_test([a[p] for p in common], [b[p] for p in common])
    stds = [s for s in (summary.std, ref.std) if math.isfinite(s)]
    seed_std = max(stds) if stds else math.nan
    noise = bool(stds) and math.isfinite(res.mean_diff) and abs(res.mean_diff) < seed_std
    return PairedTest(group=summary.group, reference=ref.group, split=summary.split, structure=summary.structure,
                      metric=summary.metric, mean_diff=res.mean_diff, p_value=res.p_value, statistic=res.statistic,
                      n_patients=res.n_pairs, seed_std=seed_std, within_seed_noise=noise, note=res.note)


def _fmt(value: float) -> str:
    return f"{value:+.2f}" if math.isfinite(value) else "n/a"


def make_notes(comp: Comparison) -> list[str]:
    """The caveats a reader needs next to the numbers (few seeds, seed noise, untested cells, mixed masks)."""
    notes = []
    few = False
    for group in comp.groups:
        n = len(comp.seeds(group))
        if n == 1:
            notes.append(f"group {group!r} has 1 seed: its seed-to-seed spread is not estimated (std n/a)")
        elif n == 2:
            notes.append(f"group {group!r} has 2 seeds: its seed-to-seed std is a rough estimate")
        few = few or n < FEW_SEEDS
    if few and len(comp.groups) > 1:
        notes.append("the Wilcoxon tests are over patients (seed-averaged scores): they measure how consistently "
                     "the gain holds across patients for these trained models, not whether training with another "
                     "seed would reproduce it; train at least 3 seeds per group to see the seed-to-seed spread")
    for group in comp.groups:
        for split in comp.splits:
            for metric in comp.metrics:
                tests = [comp.test(group, split, s, metric) for s in comp.structures]
                noisy = [t for t in tests if t is not None and t.within_seed_noise]
                if noisy:
                    cells = ", ".join(f"{t.structure} {_fmt(t.mean_diff)}" for t in noisy)
                    notes.append(f"{group} vs {comp.reference}, {split} {METRICS[metric][0]}: the difference "
                                 f"({cells} {METRICS[metric][1]}) is smaller than the larger seed-to-seed std of "
                                 "the two groups: within seed noise")
                untested = [t for t in tests if t is not None and t.note and not math.isfinite(t.p_value)]
                if untested:
                    notes.append(f"{group} vs {comp.reference}, {split} {METRICS[metric][0]}: "
                                 + "; ".join(f"{t.structure}: {t.note}" for t in untested))
    for group in comp.groups:
        for split in comp.splits:
            sets = {frozenset(r.cases) for r in comp.scores if r.run.group == group and r.split == split}
            if len(sets) > 1:
                notes.append(f"group {group!r}: its runs were evaluated on different {split} patients; each "
                             "patient is averaged over the seeds that have it")
    if not comp.raw:
        post = sorted({str(r.run.path) for r in comp.scores if r.postprocessed})
        if post and len(post) < len(comp.runs):
            notes.append(f"{len(post)} of {len(comp.runs)} runs are scored on post-processed masks "
                         f"({', '.join(post)}), the others on raw ones; --raw compares the network's raw masks")
    return notes


def summarize(runs: Sequence[RunInfo], scores: Sequence[RunScores], reference: str | None = None,
              splits: Sequence[str] = ("test",), checkpoint: str = "best", raw: bool = False,
              metrics: Sequence[str] = ("dice", "assd", "hd95"), n_resamples: int = 10000,
              seed: int = 0) -> Comparison:
    """Build the :class:`Comparison` of loaded scores: group summaries, tests against ``reference``, notes.

    Args:
        runs: the runs (their groups are compared).
        scores: their scores from :func:`load_scores`.
        reference: the group the others are tested against (default ``noadapt`` if present, else the first).
        splits, checkpoint, raw, metrics: as passed to :func:`load_scores` (recorded in the result).
        n_resamples: bootstrap resamples (0: no intervals).
        seed: seed of the bootstrap generator (each interval restarts it, so results are reproducible).

    Raises:
        UserError: a ``reference`` that is not one of the groups (the groups are listed).
    """
    appearance = list(dict.fromkeys(r.group for r in runs))
    if reference is None:
        reference = DEFAULT_REFERENCE if DEFAULT_REFERENCE in appearance else (appearance[0] if appearance else "")
    elif reference not in appearance:
        raise UserError(f"--reference {reference!r} is not one of the groups: {', '.join(appearance)}")
    groups = [reference, *(g for g in appearance if g != reference)]
    structures = list(dict.fromkeys([*(s for r in runs for s in r.structures),
                                     *(s for sc in scores for s in sc.values)]))
    summaries, tests = [], []
    for split in splits:
        for structure in structures:
            for metric in metrics:
                cell = {g: summarize_group(g, split, structure, metric,
                                           [s for s in scores if s.run.group == g and s.split == split],
                                           n_resamples, seed) for g in groups}
                summaries.extend(cell.values())
                tests.extend(paired_against(cell[g], cell[reference]) for g in groups if g != reference)
    comp = Comparison(runs=list(runs), scores=list(scores), groups=groups, reference=reference, splits=list(splits),
                      structures=structures, metrics=list(metrics), checkpoint=checkpoint, raw=raw,
                      n_resamples=n_resamples, seed=seed, summaries=summaries, tests=tests, notes=[])
    comp.notes = make_notes(comp)
    return comp


def compare(paths: Sequence[str], reference: str | None = None, splits: Sequence[str] = ("test", "val"),
            checkpoint: str = "best", raw: bool = False, metrics: Sequence[str] = ("dice", "assd", "hd95"),
            n_resamples: int = 10000, seed: int = 0) -> Comparison:
    """Find the runs under ``paths`` (``PATH`` or ``LABEL=PATH``), load their scores and summarise them.

    The reference is checked before any metrics file is read, so a typo is reported first.
    """
    runs = find_runs(paths)
    groups = list(dict.fromkeys(r.group for r in runs))
    if reference is not None and reference not in groups:
        raise UserError(f"--reference {reference!r} is not one of the groups: {', '.join(groups)}")
    scores = load_scores(runs, splits, checkpoint, raw, metrics)
    return summarize(runs, scores, reference, splits, checkpoint, raw, metrics, n_resamples, seed)

"""Comparing groups of trained models (methods x seeds) on their evaluated per-patient scores.

``udavae compare`` reads what ``udavae evaluate`` wrote into each model folder (``RUN/eval/<domain>_<split>_
<checkpoint>/metrics.csv``), groups the runs by method, and summarises every group, split, structure and metric
two ways (see :mod:`udavae.evaluation.statistics` for why both are needed):

- over **seeds**: each run's mean over patients, then mean ± std of those per-seed means;
- over **patients**: each patient's score averaged over the group's seeds, with a bootstrap interval of their
  mean, and a paired Wilcoxon test against a reference group on the same patients.

The steps are separate functions: :func:`find_runs` (folders -> :class:`RunInfo`) and :func:`load_scores`
(metrics files -> :class:`RunScores`), both in :mod:`udavae.evaluation.runs` and re-exported here, then
:func:`summarize` (scores -> :class:`Comparison`); :func:`compare` chains them. Rendering lives in
:mod:`udavae.reports.compare`. Nothing here trains or runs a network.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from udavae.errors import UserError
from udavae.evaluation import statistics as st
from udavae.evaluation.runs import (  # noqa: F401  (re-exported: the compare API in one place)
    DEFAULT_REFERENCE,
    FEW_SEEDS,
    METRICS,
    RunInfo,
    RunScores,
    default_out,
    evaluate_command,
    find_runs,
    load_scores,
)

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
            "group": self.group,
            "split": self.split,
            "structure": self.structure,
            "metric": self.metric,
            "unit": self.unit,
            "n_seeds": self.n_seeds,
            "seeds": self.seeds,
            "mean": self.mean,
            "std": self.std,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "n_patients": self.n_patients,
            "patient_mean": self.patient_mean,
            "seed_means": self.seed_means,
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
            "group": self.group,
            "reference": self.reference,
            "split": self.split,
            "structure": self.structure,
            "metric": self.metric,
            "unit": METRICS[self.metric][1],
            "mean_diff": self.mean_diff,
            "p_value": self.p_value,
            "statistic": self.statistic,
            "n_patients": self.n_patients,
            "seed_std": self.seed_std,
            "within_seed_noise": self.within_seed_noise,
            "note": self.note,
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
        return next(
            (t for t in self.tests if (t.group, t.split, t.structure, t.metric) == (group, split, structure, metric)),
            None,
        )

    def target_images(self, group: str) -> str:
        """What the group's method trained on from the target domain: none, unlabelled (or both, if mixed)."""
        return " / ".join(sorted({r.target_images for r in self.runs if r.group == group and r.target_images}))

    def seeds(self, group: str) -> list[int | None]:
        return sorted((r.seed for r in self.runs if r.group == group), key=lambda s: (s is None, s or 0))


def _natural_key(text: str) -> list[Any]:
    """Sort key for ids like patient6 < patient10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def summarize_group(
    group: str,
    split: str,
    structure: str,
    metric: str,
    runs: Sequence[RunScores],
    n_resamples: int = 10000,
    seed: int = 0,
) -> GroupSummary:
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
    return GroupSummary(
        group=group,
        split=split,
        structure=structure,
        metric=metric,
        seeds=tuple(r.run.seed for r in runs),
        seed_means=seed_means,
        mean=over_seeds.mean,
        std=over_seeds.std,
        n_seeds=over_seeds.n_seeds,
        patients=tuple(patients),
        patient_scores=per_patient,
        patient_mean=st.nanmean(per_patient),
        ci_low=low,
        ci_high=high,
        n_patients=int(np.isfinite(per_patient).sum()),
    )


def paired_against(summary: GroupSummary, ref: GroupSummary) -> PairedTest:
    """Paired Wilcoxon test of a group's seed-averaged patient scores against the reference's."""
    a, b = summary.scores_by_patient(), ref.scores_by_patient()
    common = [p for p in summary.patients if p in b]
    res = st.paired_test([a[p] for p in common], [b[p] for p in common])
    stds = [s for s in (summary.std, ref.std) if math.isfinite(s)]
    seed_std = max(stds) if stds else math.nan
    noise = bool(stds) and math.isfinite(res.mean_diff) and abs(res.mean_diff) < seed_std
    return PairedTest(
        group=summary.group,
        reference=ref.group,
        split=summary.split,
        structure=summary.structure,
        metric=summary.metric,
        mean_diff=res.mean_diff,
        p_value=res.p_value,
        statistic=res.statistic,
        n_patients=res.n_pairs,
        seed_std=seed_std,
        within_seed_noise=noise,
        note=res.note,
    )


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
        notes.append(
            "the Wilcoxon tests are over patients (seed-averaged scores): they measure how consistently "
            "the gain holds across patients for these trained models, not whether training with another "
            "seed would reproduce it; train at least 3 seeds per group to see the seed-to-seed spread"
        )
    untested: dict[tuple[str, str], dict[str, dict[str, list[str]]]] = {}
    for group in comp.groups:
        for split in comp.splits:
            for metric in comp.metrics:
                tests = [comp.test(group, split, s, metric) for s in comp.structures]
                noisy = [t for t in tests if t is not None and t.within_seed_noise]
                if noisy:
                    cells = ", ".join(f"{t.structure} {_fmt(t.mean_diff)}" for t in noisy)
                    notes.append(
                        f"{group} vs {comp.reference}, {split} {METRICS[metric][0]}: the difference "
                        f"({cells} {METRICS[metric][1]}) is smaller than the larger seed-to-seed std of "
                        "the two groups: within seed noise"
                    )
                for t in tests:
                    if t is not None and t.note and not math.isfinite(t.p_value):
                        untested.setdefault((split, t.note), {}).setdefault(group, {}).setdefault(
                            METRICS[metric][0], []
                        ).append(t.structure)
    # one line per reason and split (a 5-patient validation split gives the same reason in every cell)
    for (split, why), by_group in untested.items():
        cells = "; ".join(
            f"{group} (" + ", ".join(m + " " + "/".join(st) for m, st in by_metric.items()) + ")"
            for group, by_metric in by_group.items()
        )
        notes.append(f"{split}, vs {comp.reference}: {why}: {cells}")
    for group in comp.groups:
        for split in comp.splits:
            sets = {frozenset(r.cases) for r in comp.scores if r.run.group == group and r.split == split}
            if len(sets) > 1:
                notes.append(
                    f"group {group!r}: its runs were evaluated on different {split} patients; each "
                    "patient is averaged over the seeds that have it"
                )
    if not comp.raw:
        post = sorted({str(r.run.path) for r in comp.scores if r.postprocessed})
        if post and len(post) < len(comp.runs):
            notes.append(
                f"{len(post)} of {len(comp.runs)} runs are scored on post-processed masks "
                f"({', '.join(post)}), the others on raw ones; --raw compares the network's raw masks"
            )
    return notes


def summarize(
    runs: Sequence[RunInfo],
    scores: Sequence[RunScores],
    reference: str | None = None,
    splits: Sequence[str] = ("test",),
    checkpoint: str = "best",
    raw: bool = False,
    metrics: Sequence[str] = ("dice", "assd", "hd95"),
    n_resamples: int = 10000,
    seed: int = 0,
) -> Comparison:
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
    structures = list(
        dict.fromkeys([*(s for r in runs for s in r.structures), *(s for sc in scores for s in sc.values)])
    )
    summaries, tests = [], []
    for split in splits:
        for structure in structures:
            for metric in metrics:
                cell = {
                    g: summarize_group(
                        g,
                        split,
                        structure,
                        metric,
                        [s for s in scores if s.run.group == g and s.split == split],
                        n_resamples,
                        seed,
                    )
                    for g in groups
                }
                summaries.extend(cell.values())
                tests.extend(paired_against(cell[g], cell[reference]) for g in groups if g != reference)
    comp = Comparison(
        runs=list(runs),
        scores=list(scores),
        groups=groups,
        reference=reference,
        splits=list(splits),
        structures=structures,
        metrics=list(metrics),
        checkpoint=checkpoint,
        raw=raw,
        n_resamples=n_resamples,
        seed=seed,
        summaries=summaries,
        tests=tests,
        notes=[],
    )
    comp.notes = make_notes(comp)
    return comp


def compare(
    paths: Sequence[str],
    reference: str | None = None,
    splits: Sequence[str] = ("test", "val"),
    checkpoint: str = "best",
    raw: bool = False,
    metrics: Sequence[str] = ("dice", "assd", "hd95"),
    n_resamples: int = 10000,
    seed: int = 0,
) -> Comparison:
    """Find the runs under ``paths`` (``PATH`` or ``LABEL=PATH``), load their scores and summarise them.

    The reference is checked before any metrics file is read, so a typo is reported first.
    """
    runs = find_runs(paths)
    groups = list(dict.fromkeys(r.group for r in runs))
    if reference is not None and reference not in groups:
        raise UserError(f"--reference {reference!r} is not one of the groups: {', '.join(groups)}")
    scores = load_scores(runs, splits, checkpoint, raw, metrics)
    return summarize(runs, scores, reference, splits, checkpoint, raw, metrics, n_resamples, seed)

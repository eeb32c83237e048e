"""The statistics of ``udavae compare``, as pure functions on numpy arrays.

Two sources of variation are kept apart, because they answer different questions:

- *seed to seed*: the same method trained with different random seeds gives different models; the spread of
  their per-seed mean scores (:func:`seed_summary`) says how much a reported number would move on retraining;
- *patient to patient*: one set of models scores differently on each test patient; the bootstrap interval of
  the mean over patients (:func:`bootstrap_ci`) and the paired Wilcoxon test of two methods on the same patients
  (:func:`paired_test`) describe that variation only.

The tests themselves come from :mod:`scipy.stats` (``wilcoxon``, ``bootstrap``); this module only selects the
values (finite, paired) and handles the degenerate cases scipy would reject or answer unhelpfully (constant
data, all-zero differences, too few patients). Nothing here reads files or knows about runs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "MIN_PAIRS",
    "PairedResult",
    "SeedSummary",
    "bootstrap_ci",
    "finite",
    "nanmean",
    "paired_test",
    "seed_average",
    "seed_summary",
]

#: Fewest paired patients for which a Wilcoxon p-value is reported. With 5 pairs the smallest two-sided exact
#: p-value is 2 / 2**5 = 0.0625: no outcome could reach the usual 0.05, so a p-value would only mislead.
MIN_PAIRS = 6

_NAN = float("nan")


def finite(values: ArrayLike) -> np.ndarray:
    """The finite entries of ``values`` as a flat float64 array (NaN marks a missing score)."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def nanmean(values: ArrayLike) -> float:
    """Mean of the finite entries; NaN (without numpy's empty-slice warning) when there are none."""
    arr = finite(values)
    return float(arr.mean()) if arr.size else _NAN


@dataclass(frozen=True)
class SeedSummary:
    """Mean and spread over training seeds of one method's per-seed scores.

    Attributes:
        mean: mean of the finite per-seed values.
        std: their sample standard deviation (ddof=1); NaN with fewer than two seeds, where the seed-to-seed
            spread cannot be estimated.
        n_seeds: number of finite per-seed values.
    """

    mean: float
    std: float
    n_seeds: int


def seed_summary(per_seed: ArrayLike) -> SeedSummary:
    """Mean ± std (ddof=1) over seeds of per-seed scores (e.g. each seed's mean Dice over patients).

    A seed whose score is NaN (every patient missing) is left out and not counted.
    """
    arr = finite(per_seed)
    if arr.size == 0:
        return SeedSummary(_NAN, _NAN, 0)
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else _NAN
    return SeedSummary(float(np.mean(arr)), std, int(arr.size))


def seed_average(scores: ArrayLike) -> np.ndarray:
    """Per-patient scores averaged over seeds: ``scores`` is seeds x patients, NaN where missing.

    Each patient's value is the mean over the seeds that scored it (NaN only if none did), so a distance that
    is undefined for one seed's mask does not discard the patient's other seeds.
    """
    arr = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    counts = np.isfinite(arr).sum(axis=0)
    sums = np.where(np.isfinite(arr), arr, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def bootstrap_ci(
    values: ArrayLike, n_resamples: int = 10000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of the finite ``values`` (``scipy.stats.bootstrap``).

    The generator is created from ``seed`` for every call, so an interval does not depend on how many were
    computed before it and a rerun reproduces it exactly. Degenerate data do not raise: no finite value gives
    (NaN, NaN); one value, or all values equal, give (c, c), the only mean a resample can have;
    ``n_resamples <= 0`` disables the bootstrap (NaN, NaN).

    Args:
        values: one score per patient (NaN = missing, excluded).
        n_resamples: bootstrap resamples.
        seed: seed of the resampling generator.
        confidence: coverage of the two-sided interval.

    Returns:
        ``(low, high)``.
    """
    arr = finite(values)
    if arr.size == 0 or n_resamples <= 0:
        return _NAN, _NAN
    if arr.size == 1 or np.all(arr == arr[0]):
        c = float(arr[0])
        return c, c
    batch = max(1, min(n_resamples, 4_000_000 // arr.size))  # bounds memory; depends on the data size only
    res = stats.bootstrap(
        (arr,),
        np.mean,
        n_resamples=n_resamples,
        batch=batch,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    # floating-point summation order can put an interval bound a few ulps outside the data range
    lo_data, hi_data = float(arr.min()), float(arr.max())
    return min(max(low, lo_data), hi_data), min(max(high, lo_data), hi_data)


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison of two methods on the same patients.

    Attributes:
        mean_diff: mean over the paired patients of ``a - b``.
        p_value: two-sided Wilcoxon signed-rank p-value; 1.0 when every difference is zero; NaN when there are
            fewer than :data:`MIN_PAIRS` pairs.
        statistic: scipy's Wilcoxon statistic (the smaller of the positive and negative rank sums); NaN when
            not tested.
        n_pairs: patients with a finite score in both.
        note: why the p-value is 1 or NaN ("" otherwise).
    """

    mean_diff: float
    p_value: float
    statistic: float
    n_pairs: int
    note: str = ""


def paired_test(a: ArrayLike, b: ArrayLike, min_pairs: int = MIN_PAIRS) -> PairedResult:
    """Two-sided Wilcoxon signed-rank test of ``a - b`` over the pairs where both are finite.

    ``a`` and ``b`` hold one score per patient, in the same patient order. Pairs with a zero difference are
    dropped by the test (scipy's default ``zero_method="wilcox"``); when *every* difference is zero (e.g. a
    method compared with itself) scipy would drop every pair, so the result is stated directly: no evidence
    of a difference, p = 1.

    Args:
        a: scores of the compared method.
        b: scores of the reference, same length.
        min_pairs: fewest pairs for which a p-value is reported.

    Returns:
        The :class:`PairedResult`.

    Raises:
        ValueError: if ``a`` and ``b`` differ in length.
    """
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired scores differ in length: {x.size} and {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    n = int(d.size)
    mean_diff = float(d.mean()) if n else _NAN
    if n < min_pairs:
        return PairedResult(
            mean_diff,
            _NAN,
            _NAN,
            n,
            f"{n} paired patient(s): too few for a Wilcoxon test (needs {min_pairs}), no p-value",
        )
    if np.all(d == 0):
        return PairedResult(0.0, 1.0, 0.0, n, "every paired difference is zero: p = 1")
    with warnings.catch_warnings():  # scipy warns that few non-zero pairs make the normal approximation rough
        warnings.simplefilter("ignore", UserWarning)
        res = stats.wilcoxon(d, alternative="two-sided")
    p = float(res.pvalue)
    return PairedResult(mean_diff, p if not math.isnan(p) else _NAN, float(res.statistic), n)

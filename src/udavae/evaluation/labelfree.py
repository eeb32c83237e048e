"""Scores of a segmentation that need no target labels: for checkpoint selection and per-case quality control.

Every function takes arrays (probabilities or class maps) and returns numbers; running the network is the
engine's job (:mod:`udavae.engine.labelfree`). docs/selection.md explains each score and how they were measured.

* :func:`mean_entropy`: mean per-voxel entropy of the class probabilities, divided by log K (0 = certain, 1 =
  uniform). Lower is better.
* :func:`agreement`: mean Dice, over structures, between two class maps (a prediction and the prediction of a
  transformed input mapped back: flips, intensity changes). 1 = identical. Higher is better.
* :func:`slice_plausibility` / :func:`plausibility`: our cardiac rule set on each short-axis slice (below);
  the share of slices with a heart that pass. Higher is better.
* :func:`soft_neighbourhood_density`: SND (Saito et al., "Tune it the Right Way: Unsupervised Validation of
  Domain Adaptation via Soft Neighborhood Density", ICCV 2021) on sampled voxels' class-probability vectors.
  Higher is better.

Cardiac rules (one short-axis slice; structures LV blood pool, MYO myocardium, RV blood pool):

1. the LV, if present, is one piece (its largest connected component holds at least ``piece_min`` of it)
   without holes, and has a myocardium;
2. the myocardium encloses the LV as a ring: at least ``ring_min`` of the pixels bordering the LV are
   myocardium (an open ring, or an LV touching background or RV, fails), and LV + MYO has no holes;
3. the myocardium is one piece (largest component >= ``piece_min`` of it);
4. the RV, if present, has no holes, its largest component holds at least ``rv_piece_min`` of it (the basal
   RV is often split), and it lies within 3 pixels of the myocardium when the slice has one.

Slices without any structure are not counted. A slice with myocardium but no LV (the apex) passes rules 1-2.
The thresholds are calibrated on *source* labels, which a user has: on the 35 MS-CMRSeg bSSFP (C0) label
volumes, 5% of the LV borders are less than 74% myocardium (basal slices, the outflow tract), 10% of the RVs
are split with their largest piece under 74%, and 1% of the myocardia have a largest piece under 95%.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = [
    "CardiacRoles",
    "SlicePlausibility",
    "agreement",
    "mean_entropy",
    "plausibility",
    "slice_plausibility",
    "soft_neighbourhood_density",
]

_FOUR = ndimage.generate_binary_structure(2, 1)
_EIGHT = ndimage.generate_binary_structure(2, 2)


def mean_entropy(probs: np.ndarray, axis: int = 0) -> float:
    """Mean over voxels of the entropy of ``probs`` along ``axis`` (the classes), divided by log K."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0)
    k = p.shape[axis]
    h = -(p * np.log(p)).sum(axis=axis) / np.log(k)
    return float(h.mean())


def agreement(a: np.ndarray, b: np.ndarray, num_classes: int) -> float:
    """Mean Dice over the structures (classes 1..K-1) present in either map; 1.0 when neither has any."""
    scores = []
    for c in range(1, num_classes):
        ma, mb = a == c, b == c
        total = int(ma.sum()) + int(mb.sum())
        if total:
            scores.append(2.0 * np.logical_and(ma, mb).sum() / total)
    return float(np.mean(scores)) if scores else 1.0


@dataclass(frozen=True)
class CardiacRoles:
    """Class indices of the cardiac structures (None where the label map has no such structure)."""

    lv: int | None
    myo: int | None
    rv: int | None = None

    @classmethod
    def from_names(cls, class_names: Mapping[int, str]) -> CardiacRoles | None:
        """Find LV / MYO / RV among ``{index: name}`` (case-insensitive); None without both LV and MYO."""
        names = {str(n).strip().upper(): i for i, n in class_names.items()}
        lv = next((names[n] for n in ("LV", "LV_BLOOD_POOL", "LVBP") if n in names), None)
        myo = next((names[n] for n in ("MYO", "MYOCARDIUM", "LV_MYO", "LVM") if n in names), None)
        rv = next((names[n] for n in ("RV", "RV_BLOOD_POOL", "RVBP") if n in names), None)
        return cls(lv, myo, rv) if lv is not None and myo is not None else None


@dataclass
class SlicePlausibility:
    """Verdict on one slice: ``ok`` and the rules it broke."""

    ok: bool
    broken: list[str] = field(default_factory=list)


def _largest_share(mask: np.ndarray) -> float:
    """Share of ``mask``'s pixels in its largest (8-connected) component."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n <= 1:
        return 1.0
    sizes = np.bincount(labels.ravel())[1:]
    return float(sizes.max() / sizes.sum())


def _has_holes(mask: np.ndarray) -> bool:
    return bool((ndimage.binary_fill_holes(mask, structure=_FOUR) & ~mask).any())


def slice_plausibility(
    classes: np.ndarray, roles: CardiacRoles, ring_min: float = 0.7, piece_min: float = 0.9, rv_piece_min: float = 0.5
) -> SlicePlausibility | None:
    """The cardiac rules (module docstring) on one 2-D class map; None when the slice shows no structure."""
    lv = classes == roles.lv
    myo = classes == roles.myo
    rv = classes == roles.rv if roles.rv is not None else np.zeros_like(lv)
    if not (lv.any() or myo.any() or rv.any()):
        return None
    broken: list[str] = []
    if lv.any():
        if _largest_share(lv) < piece_min:
            broken.append("LV in several pieces")
        if _has_holes(lv):
            broken.append("hole in the LV")
        if not myo.any():
            broken.append("LV without myocardium")
        else:
            border = ndimage.binary_dilation(lv, structure=_FOUR) & ~lv
            if border.sum() and (myo & border).sum() / border.sum() < ring_min:
                broken.append("myocardium does not enclose the LV")
            if _has_holes(lv | myo):
                broken.append("hole in LV + myocardium")
    if myo.any() and _largest_share(myo) < piece_min:
        broken.append("myocardium in several pieces")
    if rv.any():
        if _largest_share(rv) < rv_piece_min:
            broken.append("RV in several pieces")
        if _has_holes(rv):
            broken.append("hole in the RV")
        if myo.any() and not (ndimage.binary_dilation(rv, structure=_EIGHT, iterations=3) & myo).any():
            broken.append("RV does not touch the myocardium")
    return SlicePlausibility(not broken, broken)


def plausibility(
    classes: np.ndarray, roles: CardiacRoles, slice_axis: int = -1, ring_min: float = 0.7
) -> tuple[float, int, int]:
    """(share of plausible slices, number of implausible slices, number of slices with a structure).

    The share is 1.0 when no slice shows a structure (nothing implausible was predicted).
    """
    vol = np.moveaxis(np.asarray(classes), slice_axis, 0)
    verdicts = [v for v in (slice_plausibility(s, roles, ring_min) for s in vol) if v is not None]
    bad = sum(not v.ok for v in verdicts)
    return (1.0 - bad / len(verdicts) if verdicts else 1.0), bad, len(verdicts)


def soft_neighbourhood_density(probs: np.ndarray, temperature: float = 0.05) -> float:
    """SND of N class-probability vectors (N x K): the mean entropy of each vector's softmax similarity to the
    others (cosine similarity / ``temperature``, itself excluded). Higher means denser neighbourhoods."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] < 2:
        raise ValueError(f"SND needs an N x K array with N >= 2, got shape {p.shape}")
    p = p / np.linalg.norm(p, axis=1, keepdims=True).clip(1e-12)
    sim = p @ p.T / temperature
    np.fill_diagonal(sim, -np.inf)
    sim -= sim.max(axis=1, keepdims=True)
    w = np.exp(sim)
    w /= w.sum(axis=1, keepdims=True)
    ent = -(w * np.log(np.clip(w, 1e-300, None))).sum(axis=1)
    return float(ent.mean())

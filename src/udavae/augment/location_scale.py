"""SLAug's location-scale augmentation (Su et al., "Rethinking Data Augmentation for Single-source Domain
Generalization in Medical Image Segmentation", AAAI 2023), on one 2-D crop in [0, 1].

Each view passes intensities through a random monotone curve, then a random affine map ("location-scale"):

* curve: a Bezier curve through ``points`` control points, the two ends at the range's ends and the inner ones
  drawn uniformly inside it; the curve's x and y samples are each sorted, so the map is monotone and takes the
  range onto itself (increasing; or decreasing when inverted, which swaps dark and bright);
* location-scale: ``x * s + l`` with ``s ~ N(1, 0.1)`` clipped to [0.9, 1.1] and ``l ~ N(0, 0.5)`` clipped so
  that the 20th-80th percentiles stay in range, then clipped to the range.

The *global* view (GLA) applies one increasing curve to the whole crop; the *class-level* view (LLA) applies
an independent curve and location-scale inside each labelled structure (inverted with probability 1/2) and in
the background (always inverted), and leaves voxels at or below ``background`` (air) as they were.
"""

from __future__ import annotations

import numpy as np
from scipy.special import comb

__all__ = ["bezier_curve", "class_location_scale", "global_location_scale", "local_location_scale"]

#: Samples along each Bezier curve (the map is piecewise linear between them).
_SAMPLES = 1000


def bezier_curve(
    rng: np.random.Generator, points: int = 4, inverse: bool = False, lo: float = 0.0, hi: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """A random monotone intensity curve on [lo, hi] as sample arrays (xs ascending, ys monotone).

    ``np.interp(v, xs, ys)`` applies it: ``lo -> lo`` and ``hi -> hi`` (``lo -> hi`` and ``hi -> lo`` when
    ``inverse``), and values stay in [lo, hi].
    """
    inner_x = np.sort(rng.uniform(lo, hi, points - 2))
    inner_y = rng.uniform(lo, hi, points - 2)
    px = np.concatenate([[lo], inner_x, [hi]])
    py = np.concatenate([[lo], inner_y, [hi]])
    t = np.linspace(0.0, 1.0, _SAMPLES)
    n = points - 1
    basis = np.stack([comb(n, i) * t**i * (1 - t) ** (n - i) for i in range(points)])  # points x samples
    xs, ys = np.sort(px @ basis), np.sort(py @ basis)
    xs[0], xs[-1], ys[0], ys[-1] = lo, hi, lo, hi
    return xs, (ys[::-1].copy() if inverse else ys)


def _location_scale(values: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """``values * s + l`` with SLAug's random scale and location, clipped to [lo, hi]."""
    if values.size == 0:
        return values
    scale = float(np.clip(rng.normal(1.0, 0.1), 0.9, 1.1))
    low, high = lo - np.percentile(values, 20), hi - np.percentile(values, 80)
    location = float(np.clip(rng.normal(0.0, 0.5), min(low, high), max(low, high)))
    return np.clip(values * scale + location, lo, hi)


def _curve_then_shift(values: np.ndarray, rng: np.random.Generator, points: int, inverse: bool) -> np.ndarray:
    xs, ys = bezier_curve(rng, points, inverse)
    return _location_scale(np.interp(values, xs, ys), rng, 0.0, 1.0)


def global_location_scale(image: np.ndarray, rng: np.random.Generator, points: int = 4) -> np.ndarray:
    """GLA: one increasing random curve and one location-scale for the whole crop (values in [0, 1])."""
    return _curve_then_shift(image, rng, points, inverse=False).astype(np.float32)


def class_location_scale(
    image: np.ndarray, region: np.ndarray, rng: np.random.Generator, points: int = 4, inverse_prob: float = 0.5
) -> np.ndarray:
    """The crop with a random curve and location-scale applied inside ``region`` (boolean) only."""
    out = image.astype(np.float32, copy=True)
    if region.any():
        out[region] = _curve_then_shift(image[region], rng, points, bool(rng.random() < inverse_prob))
    return out


def local_location_scale(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, points: int = 4, background: float = 0.01
) -> np.ndarray:
    """LLA: an independent curve per structure (inverted with p = 1/2) and for the background (always
    inverted); voxels at or below ``background`` keep their intensity."""
    out = image.astype(np.float32, copy=True)
    for c in np.unique(label):
        region = label == c
        out[region] = class_location_scale(image, region, rng, points, 1.0 if c == 0 else 0.5)[region]
    dark = image <= background
    out[dark] = image[dark]
    return out

"""Per-structure segmentation metrics on anisotropic 2-D/3-D volumes, as cardiac papers report them.

Overlap metrics (Dice, IoU) and surface-distance metrics (ASSD, HD95, HD, in mm) are computed per
binary structure, with the voxel spacing taken from the image header so that distances are physical.
The surface and distance definitions match MONAI's (``monai.metrics.compute_hausdorff_distance``,
``compute_average_surface_distance(symmetric=True)``) so numbers are comparable with published work;
the empty-mask conventions are explicit (NaN, never a silent 0 distance).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "DISTANCE_METRICS",
    "METRIC_NAMES",
    "binary_metrics",
    "multiclass_metrics",
    "summarize",
]

#: Surface-distance metrics (mm); NaN whenever either mask is empty.
DISTANCE_METRICS: tuple[str, ...] = ("assd", "hd95", "hd")
#: All quality metrics returned per structure (voxel counts come in addition).
METRIC_NAMES: tuple[str, ...] = ("dice", "iou", *DISTANCE_METRICS)

_NAN = float("nan")


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Return spacing as floats, rejecting wrong length or non-positive values (mm must be physical)."""
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"spacing must be a sequence of numbers, got {spacing!r}") from exc
    if len(values) != ndim:
        raise ValueError(f"spacing has {len(values)} values but the masks have {ndim} dimensions")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing values must be finite and positive, got {values}")
    return values


def _as_mask(arr: np.ndarray, name: str) -> np.ndarray:
    """Convert a 0/1 or boolean array to bool, refusing label maps so a class map is not binarised."""
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "uif":
        raise ValueError(f"{name} must be a boolean or 0/1 numeric mask, got dtype {arr.dtype}")
    if np.any((arr != 0) & (arr != 1)):
        raise ValueError(f"{name} must contain only 0 and 1; use multiclass_metrics for label maps")
    return arr.astype(bool)


def _check_pair(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[float, ...]:
    """Validate equal shapes, 2-D/3-D dimensionality and spacing; return the spacing as floats."""
    if a.shape != b.shape:
        raise ValueError(f"prediction shape {a.shape} does not match ground-truth shape {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"masks must be 2-D or 3-D, got {a.ndim}-D with shape {a.shape}")
    return _check_spacing(spacing, a.ndim)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Tight bounding box of a non-empty mask, so the distance transforms run on a small crop."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        idx = np.flatnonzero(np.any(mask, axis=other))
        slices.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(slices)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of a (zero-padded) mask with at least one face neighbour outside it.

    The caller pads the crop by one voxel of background, so voxels on the image border are
    surface voxels (the outside of the image counts as outside the mask), as in MONAI.
    """
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _directed_distances(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Return (pred-surface -> gt-surface, gt-surface -> pred-surface) distances in mm.

    Both masks must be non-empty. The EDTs run on the bounding box of P ∪ G padded by one voxel:
    every surface voxel lies in that box, so nearest-surface distances are exact on the crop.
    """
    box = _bounding_box(pred | gt)
    surf_p = _surface(np.pad(pred[box], 1))
    surf_g = _surface(np.pad(gt[box], 1))
    # distance_transform_edt measures the distance to the nearest zero, i.e. nearest surface voxel.
    dist_to_g = ndimage.distance_transform_edt(~surf_g, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~surf_p, sampling=spacing)
    return np.asarray(dist_to_g[surf_p], dtype=np.float64), np.asarray(dist_to_p[surf_g], dtype=np.float64)


def binary_metrics(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Overlap and surface-distance metrics of one binary structure, distances in mm.

    Definitions (P = prediction, G = ground truth, both boolean masks of equal 2-D/3-D shape):

    - Dice = 2|P∩G| / (|P|+|G|); IoU = |P∩G| / |P∪G|.
    - Surface of a mask: its voxels with at least one 6-connected (face; 4-connected in 2-D)
      neighbour outside the mask, i.e. ``mask XOR binary_erosion(mask, face structure)``; the
      image border counts as outside, so mask voxels on the border are surface voxels.
    - Directed distances P→G: for every surface voxel of P, the Euclidean distance in mm
      (``distance_transform_edt(..., sampling=spacing)``) to the nearest surface voxel of G;
      likewise G→P.
    - ASSD: mean of the pooled directed distances of both directions (each surface voxel weighs
      the same), equal to MONAI's ``compute_average_surface_distance(symmetric=True)``; this is
      *not* the mean of the two directed means used by some other tools.
    - HD: maximum over both directions. HD95: the larger of the two directed 95th percentiles
      (linear interpolation), MONAI's ``compute_hausdorff_distance(percentile=95)``.

    Empty masks, so that missing structures are visible rather than scored as perfect:

    - G non-empty, P empty ("missed") and G empty, P non-empty ("false positive"):
      dice = iou = 0, distances NaN.
    - Both empty: everything NaN (undefined; nan-aware means exclude it).

    Args:
        pred: predicted mask (bool or 0/1).
        gt: ground-truth mask (bool or 0/1), same shape as ``pred``.
        spacing: voxel size in mm per array axis, in array axis order (length = ndim).

    Returns:
        ``dice``, ``iou``, ``assd``, ``hd95``, ``hd``, ``gt_voxels``, ``pred_voxels``.

    Raises:
        ValueError: on shape mismatch, non-binary input, or invalid spacing.
    """
    p = _as_mask(pred, "pred")
    g = _as_mask(gt, "gt")
    sp = _check_pair(p, g, spacing)
    n_p = int(np.count_nonzero(p))
    n_g = int(np.count_nonzero(g))
    out: dict[str, float] = {name: _NAN for name in METRIC_NAMES}
    out["gt_voxels"] = float(n_g)
    out["pred_voxels"] = float(n_p)
    if n_p == 0 and n_g == 0:
        return out
    inter = int(np.count_nonzero(p & g))
    out["dice"] = 2.0 * inter / (n_p + n_g)
    out["iou"] = inter / (n_p + n_g - inter)
    if n_p == 0 or n_g == 0:
        return out
    d_pg, d_gp = _directed_distances(p, g, sp)
    out["assd"] = float(np.concatenate([d_pg, d_gp]).mean())
    out["hd95"] = float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
    out["hd"] = float(max(d_pg.max(), d_gp.max()))
    return out


def _as_labels(arr: np.ndarray, name: str) -> np.ndarray:
    """Return an integer class map; float maps (e.g. from NIfTI) are accepted if integral."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "iub":
        return arr
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise ValueError(f"{name} must be an integer class map, got dtype {arr.dtype} with non-integer values")


def multiclass_metrics(
    pred_labels: np.ndarray,
    gt_labels: np.ndarray,
    spacing: Sequence[float],
    class_names: Mapping[int, str],
) -> dict[str, dict[str, float]]:
    """Binary metrics for every foreground class of two integer class maps, keyed by structure name.

    Each class ``c`` in ``class_names`` (background 0 is skipped) is evaluated as the binary pair
    ``(pred_labels == c, gt_labels == c)`` with :func:`binary_metrics`; labels absent from
    ``class_names`` are ignored.

    Args:
        pred_labels: predicted class indices, 2-D or 3-D.
        gt_labels: ground-truth class indices, same shape.
        spacing: voxel size in mm per array axis.
        class_names: class index -> structure name (e.g. ``{1: "LV", 2: "MYO", 3: "RV"}``).

    Returns:
        ``{structure name: metrics dict}`` in ``class_names`` order.

    Raises:
        ValueError: on shape mismatch, non-integer maps, invalid spacing or duplicate names.
    """
    pl = _as_labels(pred_labels, "pred_labels")
    gl = _as_labels(gt_labels, "gt_labels")
    _check_pair(pl, gl, spacing)
    names = [name for idx, name in class_names.items() if int(idx) != 0]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicate structure names: {dict(class_names)}")
    return {
        name: binary_metrics(pl == int(idx), gl == int(idx), spacing)
        for idx, name in class_names.items()
        if int(idx) != 0
    }


def _is_number(value: Any) -> bool:
    """True for real numbers (not bools/strings), i.e. values a metric column may hold."""
    if isinstance(value, bool | np.bool_):
        return False
    return isinstance(value, int | float | np.integer | np.floating)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Aggregate per-case metric rows into per-structure mean/std over cases.

    Each row is ``{"case": ..., "structure": ..., <metric>: value, ...}``; every other numeric key is
    a metric. NaN values (and metrics a row lacks or holds as None) are missing: excluded from mean/std
    (``nanmean``/``nanstd``, ddof=0) and counted in ``n_missing``, so missed structures stay visible.

    Args:
        rows: one row per (case, structure).

    Returns:
        ``{structure: {metric: {"mean", "std", "n_missing", "n_cases"}}}``; ``n_cases`` is the number
        of rows (cases) for the structure; mean/std are NaN when every case is missing.

    Raises:
        ValueError: if a row lacks ``case``/``structure`` or a (case, structure) pair repeats.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(rows):
        if "case" not in row or "structure" not in row:
            raise ValueError(f"row {i} needs 'case' and 'structure' keys, got {sorted(row)}")
        key = (str(row["case"]), str(row["structure"]))
        if key in seen:
            raise ValueError(f"duplicate row for case {key[0]!r}, structure {key[1]!r}")
        seen.add(key)
        groups.setdefault(key[1], []).append(row)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for structure, group in groups.items():
        metrics = dict.fromkeys(
            k for row in group for k, v in row.items() if k not in ("case", "structure") and _is_number(v)
        )
        summary[structure] = {}
        for metric in metrics:
            values = np.array(
                [float(r[metric]) if _is_number(r.get(metric)) else _NAN for r in group], dtype=np.float64
            )
            valid = values[~np.isnan(values)]
            summary[structure][metric] = {
                "mean": float(valid.mean()) if valid.size else _NAN,
                "std": float(valid.std(ddof=0)) if valid.size else _NAN,
                "n_missing": int(values.size - valid.size),
                "n_cases": len(group),
            }
    return summary


def dice_per_class(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """Dice of classes 1..K-1 from two class maps (NaN where both are empty)."""
    p = pred.ravel().astype(np.int64)
    g = gt.ravel().astype(np.int64)
    inter = np.bincount(p[p == g], minlength=num_classes)[1:]
    sizes = np.bincount(p, minlength=num_classes)[1:] + np.bincount(g, minlength=num_classes)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sizes > 0, 2.0 * inter / np.maximum(sizes, 1), np.nan)

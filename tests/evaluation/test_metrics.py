"""Tests for udavae.evaluation.metrics: hand-computed values, edge cases, MONAI cross-check."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from udavae.evaluation.metrics import binary_metrics, multiclass_metrics, summarize


def _square(shape: tuple[int, int], r0: int, c0: int, size: int = 10) -> np.ndarray:
    """A size x size square with top-left corner (r0, c0)."""
    m = np.zeros(shape, dtype=bool)
    m[r0 : r0 + size, c0 : c0 + size] = True
    return m


def _reference(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Brute-force reference: explicit face-neighbour surfaces and all-pairs distances (no crop, no EDT)."""

    def surface_points(m: np.ndarray) -> np.ndarray:
        padded = np.pad(m, 1)
        surf = np.zeros_like(m)
        for axis in range(m.ndim):
            for step in (-1, 1):
                neighbour = np.roll(padded, step, axis=axis)[tuple(slice(1, -1) for _ in range(m.ndim))]
                surf |= m & ~neighbour
        return np.argwhere(surf) * np.asarray(spacing)

    sp, sg = surface_points(pred), surface_points(gt)
    d = cdist(sp, sg)
    d_pg, d_gp = d.min(axis=1), d.min(axis=0)
    return {
        "assd": float(np.concatenate([d_pg, d_gp]).mean()),
        "hd95": float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))),
        "hd": float(max(d_pg.max(), d_gp.max())),
    }


# --------------------------------------------------------------------------- hand-computed values


def test_offset_squares_isotropic() -> None:
    gt = _square((30, 30), 5, 5)
    pred = _square((30, 30), 5, 8)  # shifted by 3 along axis 1
    m = binary_metrics(pred, gt, (1.0, 1.0))
    assert m["dice"] == pytest.approx(2 * 70 / 200)
    assert m["dice"] == pytest.approx(0.7)
    assert m["iou"] == pytest.approx(70 / 130)
    assert m["hd"] == pytest.approx(3.0)
    assert m["gt_voxels"] == 100 and m["pred_voxels"] == 100


@pytest.mark.parametrize(
    ("axis", "expected_hd"),
    [(0, 3 * 2.0), (1, 3 * 0.5)],  # 3-voxel shift x spacing of the shifted axis
)
def test_offset_squares_anisotropic(axis: int, expected_hd: float) -> None:
    spacing = (2.0, 0.5)
    gt = _square((30, 30), 5, 5)
    pred = _square((30, 30), 8, 5) if axis == 0 else _square((30, 30), 5, 8)
    m = binary_metrics(pred, gt, spacing)
    assert m["dice"] == pytest.approx(0.7)
    assert m["iou"] == pytest.approx(70 / 130)
    assert m["hd"] == pytest.approx(expected_hd)
    ref = _reference(pred, gt, spacing)
    for key in ("assd", "hd95", "hd"):
        assert m[key] == pytest.approx(ref[key], rel=1e-12)
    # Symmetric metrics: swapping prediction and ground truth changes nothing.
    swapped = binary_metrics(gt, pred, spacing)
    for key in ("dice", "iou", "assd", "hd95", "hd"):
        assert swapped[key] == pytest.approx(m[key])


def test_3d_one_slice_shift_with_thick_slices() -> None:
    spacing = (1.5, 1.5, 10.0)
    gt = np.zeros((10, 10, 6), dtype=bool)
    pred = np.zeros_like(gt)
    gt[2:8, 2:8, 1:4] = True  # slices 1..3
    pred[2:8, 2:8, 2:5] = True  # slices 2..4: one-slice shift through-plane
    m = binary_metrics(pred, gt, spacing)
    assert m["dice"] == pytest.approx(2 * 72 / 216)  # 2 of 3 slices overlap
    assert m["iou"] == pytest.approx(72 / 144)
    assert m["hd"] == pytest.approx(10.0)  # the slice spacing, not 1 voxel
    ref = _reference(pred, gt, spacing)
    for key in ("assd", "hd95", "hd"):
        assert m[key] == pytest.approx(ref[key], rel=1e-12)


def test_assd_is_pooled_mean_not_mean_of_directed_means() -> None:
    # G: 3x3 block (surface = 8-voxel ring); P: its centre voxel. Spacing (2, 1).
    gt = np.zeros((7, 7), dtype=bool)
    gt[2:5, 2:5] = True
    pred = np.zeros_like(gt)
    pred[3, 3] = True
    m = binary_metrics(pred, gt, (2.0, 1.0))
    d_pg = [1.0]  # centre -> nearest ring voxel along axis 1
    d_gp = [2.0, 2.0, 1.0, 1.0] + [math.sqrt(5.0)] * 4  # edge-adjacent then corners
    assert m["dice"] == pytest.approx(2 / 10)
    assert m["iou"] == pytest.approx(1 / 9)
    assert m["assd"] == pytest.approx((7 + 4 * math.sqrt(5)) / 9)
    assert m["assd"] == pytest.approx(np.mean(d_pg + d_gp))
    assert m["assd"] != pytest.approx((np.mean(d_pg) + np.mean(d_gp)) / 2)
    assert m["hd"] == pytest.approx(math.sqrt(5.0))
    assert m["hd95"] == pytest.approx(math.sqrt(5.0))


def test_hd95_ignores_single_outlier_voxel() -> None:
    gt = np.zeros((11, 21), dtype=bool)
    gt[0, :] = True  # 21-voxel line: every voxel is surface
    pred = gt.copy()
    pred[10, 0] = True  # one stray voxel 10 mm away
    m = binary_metrics(pred, gt, (1.0, 1.0))
    assert m["dice"] == pytest.approx(42 / 43)
    assert m["hd"] == pytest.approx(10.0)
    assert m["hd95"] == pytest.approx(0.0)  # 95th percentile of 21 zeros and one 10
    assert m["assd"] == pytest.approx(10 / 43)


def test_image_border_counts_as_surface() -> None:
    gt = np.ones((5, 5), dtype=bool)  # fills the image: surface = 16-voxel border ring
    pred = gt.copy()
    pred[:, 4] = False  # 5x4 block: surface = 14 voxels
    m = binary_metrics(pred, gt, (1.0, 1.0))
    # P->G: 3 voxels of column 3 (rows 1..3) are 1 away; G->P: the 5 voxels of column 4 are 1 away.
    assert m["hd"] == pytest.approx(1.0)
    assert m["assd"] == pytest.approx(8 / 30)
    assert m["dice"] == pytest.approx(40 / 45)


def test_identical_masks() -> None:
    gt = _square((20, 20), 3, 4, size=7)
    m = binary_metrics(gt, gt.copy(), (1.3, 0.7))
    assert m["dice"] == 1.0 and m["iou"] == 1.0
    assert m["assd"] == 0.0 and m["hd95"] == 0.0 and m["hd"] == 0.0


# --------------------------------------------------------------------------- empty-mask conventions


def test_empty_prediction_is_missed() -> None:
    gt = _square((20, 20), 3, 3, size=5)
    m = binary_metrics(np.zeros_like(gt), gt, (1.0, 1.0))
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert all(math.isnan(m[k]) for k in ("assd", "hd95", "hd"))
    assert m["gt_voxels"] == 25 and m["pred_voxels"] == 0


def test_empty_ground_truth_is_false_positive() -> None:
    pred = _square((20, 20), 3, 3, size=5)
    m = binary_metrics(pred, np.zeros_like(pred), (1.0, 1.0))
    assert m["dice"] == 0.0 and m["iou"] == 0.0
    assert all(math.isnan(m[k]) for k in ("assd", "hd95", "hd"))


def test_both_empty_is_undefined() -> None:
    empty = np.zeros((8, 8, 3), dtype=bool)
    m = binary_metrics(empty, empty, (1.0, 1.0, 5.0))
    assert all(math.isnan(m[k]) for k in ("dice", "iou", "assd", "hd95", "hd"))
    assert m["gt_voxels"] == 0 and m["pred_voxels"] == 0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("pred_shape", "spacing", "match"),
    [
        ((8, 8), (1.0, 1.0), "shape"),
        ((8, 9), (1.0,), "spacing has 1 values"),
        ((8, 9), (1.0, 0.0), "positive"),
        ((8, 9), (1.0, -2.0), "positive"),
        ((8, 9), (1.0, float("nan")), "positive"),
    ],
)
def test_validation_errors(pred_shape: tuple[int, int], spacing: tuple[float, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        binary_metrics(np.zeros(pred_shape, bool), np.zeros((8, 9), bool), spacing)


def test_rejects_label_map_as_binary_mask_and_float_labels() -> None:
    labels = np.zeros((6, 6), dtype=np.int64)
    labels[1, 1] = 2
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_metrics(labels, labels, (1.0, 1.0))
    with pytest.raises(ValueError, match="integer class map"):
        multiclass_metrics(labels + 0.5, labels, (1.0, 1.0), {1: "LV"})
    with pytest.raises(ValueError, match="shape"):
        multiclass_metrics(labels, labels[:5], (1.0, 1.0), {1: "LV"})
    with pytest.raises(ValueError, match="2-D or 3-D"):
        binary_metrics(np.zeros(4, bool), np.zeros(4, bool), (1.0,))


# --------------------------------------------------------------------------- multiclass + summary


def test_multiclass_metrics_per_structure() -> None:
    gt = np.zeros((30, 30), dtype=np.uint8)
    pred = np.zeros_like(gt)
    gt[5:15, 5:15] = 1
    pred[5:15, 8:18] = 1  # LV: shifted by 3 along axis 1
    gt[20:25, 20:25] = 2  # MYO: missed entirely
    pred[0:2, 25:27] = 3  # RV: false positive
    names = {0: "BG", 1: "LV", 2: "MYO", 3: "RV", 4: "X"}
    res = multiclass_metrics(pred.astype(float), gt, (1.0, 2.0), names)
    assert list(res) == ["LV", "MYO", "RV", "X"]  # background skipped
    assert res["LV"]["dice"] == pytest.approx(0.7)
    assert res["LV"]["hd"] == pytest.approx(6.0)
    assert res["MYO"]["dice"] == 0.0 and math.isnan(res["MYO"]["hd"])
    assert res["RV"]["dice"] == 0.0 and math.isnan(res["RV"]["assd"])
    assert math.isnan(res["X"]["dice"])  # absent from both: undefined


def test_summarize_with_nan_row() -> None:
    rows = [
        {"case": "a", "structure": "LV", "dice": 0.8, "hd": 4.0},
        {"case": "b", "structure": "LV", "dice": 0.6, "hd": float("nan")},
        {"case": "c", "structure": "LV", "dice": 0.0, "hd": 10.0},
        {"case": "a", "structure": "RV", "dice": 0.5, "hd": 2.0, "note": "text is ignored"},
    ]
    s = summarize(rows)
    assert list(s) == ["LV", "RV"]
    assert s["LV"]["dice"] == {
        "mean": pytest.approx(1.4 / 3),
        "std": pytest.approx(np.std([0.8, 0.6, 0.0])),
        "n_missing": 0,
        "n_cases": 3,
    }
    assert s["LV"]["hd"]["mean"] == pytest.approx(7.0)
    assert s["LV"]["hd"]["std"] == pytest.approx(3.0)  # ddof=0 over {4, 10}
    assert s["LV"]["hd"]["n_missing"] == 1 and s["LV"]["hd"]["n_cases"] == 3
    assert s["RV"]["dice"] == {"mean": 0.5, "std": 0.0, "n_missing": 0, "n_cases": 1}
    assert "note" not in s["RV"]

    all_nan = summarize([{"case": "a", "structure": "LV", "hd": float("nan")}])
    assert math.isnan(all_nan["LV"]["hd"]["mean"]) and all_nan["LV"]["hd"]["n_missing"] == 1
    with pytest.raises(ValueError, match="duplicate"):
        summarize(rows + [rows[0]])
    with pytest.raises(ValueError, match="structure"):
        summarize([{"case": "a", "dice": 1.0}])


# --------------------------------------------------------------------------- MONAI cross-check


def _blob(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...], q: float) -> np.ndarray:
    """Random blob mask: Gaussian-smoothed noise thresholded at quantile q."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > np.quantile(field, q)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_monai_on_random_blobs(seed: int) -> None:
    monai_metrics = pytest.importorskip("monai.metrics")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    shape, spacing = (36, 30, 9), (1.25, 1.4, 8.0)
    gt = _blob(rng, shape, (3.0, 3.0, 1.0), 0.8)
    pred = gt ^ _blob(rng, shape, (2.0, 2.0, 0.7), 0.93)  # perturbed copy, touching the border

    ours = binary_metrics(pred, gt, spacing)
    ref = _reference(pred, gt, spacing)
    p_t = torch.from_numpy(pred[None, None].astype(np.float32))
    g_t = torch.from_numpy(gt[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m_hd = monai_metrics.compute_hausdorff_distance(p_t, g_t, include_background=True, spacing=spacing)
        m_hd95 = monai_metrics.compute_hausdorff_distance(
            p_t, g_t, include_background=True, percentile=95, spacing=spacing
        )
        m_assd = monai_metrics.compute_average_surface_distance(
            p_t, g_t, include_background=True, symmetric=True, spacing=spacing
        )
        m_dice = monai_metrics.compute_dice(p_t, g_t, include_background=True)
    assert ours["hd"] == pytest.approx(float(m_hd), rel=1e-5)
    assert ours["hd95"] == pytest.approx(float(m_hd95), rel=1e-5)
    assert ours["assd"] == pytest.approx(float(m_assd), rel=1e-5)
    assert ours["dice"] == pytest.approx(float(m_dice), rel=1e-5)
    for key in ("assd", "hd95", "hd"):
        assert ours[key] == pytest.approx(ref[key], rel=1e-12)
    assert 0.0 < ours["dice"] < 1.0 and ours["hd95"] <= ours["hd"]

"""Preprocessing is invertible: predictions return to the original grid and geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from udavae.data.nifti import load_volume, save_like
from udavae.data.preprocessing import Preprocessing, crop_or_pad, uncrop_or_unpad


def _labels(shape: tuple[int, int, int]) -> np.ndarray:
    x, y, _ = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cx, cy = shape[0] / 2, shape[1] / 2
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    lab = np.zeros(shape, np.uint8)
    lab[np.broadcast_to(r < 14, shape)] = 1
    lab[np.broadcast_to(r < 9, shape)] = 2
    lab[np.broadcast_to((np.abs(x - cx - 18) < 4) & (np.abs(y - cy) < 10), shape)] = 3
    return lab


def _one_hot(slices: torch.Tensor, k: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(slices.long(), k).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("shape", [(70, 50, 3), (40, 64, 2), (64, 64, 1)])
def test_crop_pad_round_trip_is_exact(shape: tuple[int, int, int]) -> None:
    """Without resampling, labels inside the crop come back bit-identical on the original grid."""
    prep = Preprocessing(size=(48, 64))
    lab = _labels(shape)
    geom = prep.geometry(lab.shape, (1.0, 1.0, 5.0))
    net_grid = prep.label(lab, (1.0, 1.0, 5.0))
    assert tuple(net_grid.shape) == (shape[2], 48, 64)
    back = prep.invert_probabilities(_one_hot(net_grid), geom).argmax(0).numpy()
    assert back.shape == shape
    # every voxel the crop kept is identical; cropped-away border (if any) is background
    x0 = max(0, (shape[0] - 48) // 2)
    y0 = max(0, (shape[1] - 64) // 2)
    keep = np.zeros(shape, bool)
    keep[x0 : x0 + min(48, shape[0]), y0 : y0 + min(64, shape[1])] = True
    assert np.array_equal(back[keep], lab[keep])
    assert not back[~keep].any()


def test_resampling_round_trip_returns_original_grid() -> None:
    prep = Preprocessing(target_spacing=(1.0, 1.0), size=(64, 64))
    spacing = (0.75, 1.5, 8.0)
    lab = _labels((80, 40, 2))
    slices = prep.label(lab, spacing)
    geom = prep.geometry(lab.shape, spacing)
    assert geom.resampled == (60, 60)
    back = prep.invert_probabilities(_one_hot(slices), geom).argmax(0).numpy()
    assert back.shape == lab.shape
    assert (back == lab).mean() > 0.97  # only boundary voxels may move by one
    for c in (1, 2, 3):
        assert abs(int((back == c).sum()) - int((lab == c).sum())) <= 0.15 * (lab == c).sum()


def test_uncrop_is_inverse_of_crop() -> None:
    x = torch.rand(2, 37, 50)
    y = crop_or_pad(x, (32, 64))
    back = uncrop_or_unpad(y[:, None], (37, 50))[:, 0]
    assert torch.equal(back[:, 2:34, :], x[:, 2:34, :])


def test_intensity_normalisation() -> None:
    prep = Preprocessing(intensity="percentile", lower=1, upper=99)
    img = np.linspace(-100, 300, 1000, dtype=np.float32).reshape(10, 10, 10)
    out = prep.normalize(img)
    assert out.min() == 0.0 and out.max() == 1.0
    lo, hi = np.percentile(img, [1, 99])
    assert out.flat[500] == pytest.approx((img.flat[500] - lo) / (hi - lo), abs=1e-6)
    assert not Preprocessing().normalize(np.full((4, 4, 2), 7.0)).any()  # constant image -> zeros


def test_preprocessing_serialises() -> None:
    prep = Preprocessing(intensity="minmax", target_spacing=(1.25, 1.25), size=(160, 192))
    assert Preprocessing.from_dict(prep.to_dict()) == prep
    with pytest.raises(ValueError, match="intensity"):
        Preprocessing(intensity="zscore")
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({"sizes": [1, 2]})


def test_mask_written_like_input_keeps_geometry(tmp_path: Path) -> None:
    aff = np.array([[0.0, -0.8, 0.1, 12.5], [0.9, 0.0, 0.0, -40.0], [0.0, 0.05, 4.9, 7.25], [0, 0, 0, 1]])
    img = nib.Nifti1Image(np.random.rand(20, 30, 5).astype(np.float32), aff)
    img.header.set_qform(aff, code=1)
    img.header.set_sform(aff, code=2)
    nib.save(img, tmp_path / "in.nii.gz")
    ref = load_volume(tmp_path / "in.nii.gz")
    save_like(np.ones((20, 30, 5), np.int16) * 500, ref, tmp_path / "mask.nii.gz")
    out = nib.load(tmp_path / "mask.nii.gz")
    assert out.shape == (20, 30, 5)
    assert np.allclose(out.affine, aff)
    assert np.allclose(out.header.get_zooms(), ref.header.get_zooms())
    assert int(out.header["sform_code"]) == 2
    assert np.asarray(out.dataobj).dtype == np.int16 and np.all(np.asarray(out.dataobj) == 500)
    with pytest.raises(ValueError, match="shape"):
        save_like(np.zeros((2, 2, 2)), ref, tmp_path / "bad.nii.gz")
    assert not (tmp_path / "bad.nii.gz").exists()


def test_pixel_zoom_round_trip() -> None:
    prep = Preprocessing(zoom=2 / 3, size=(128, 128))
    lab = _labels((192, 192, 2))
    geom = prep.geometry(lab.shape, (1.25, 1.25, 10.0))
    assert geom.resampled == (128, 128)
    back = prep.invert_probabilities(_one_hot(prep.label(lab, (1.25, 1.25, 10.0))), geom).argmax(0).numpy()
    assert back.shape == lab.shape and (back == lab).mean() > 0.98
    with pytest.raises(ValueError, match="zoom"):
        Preprocessing(zoom=0)

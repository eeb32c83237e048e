"""Issue 21, item 10: labels beyond the training crop are named in a warning, and prediction covers the whole image.

Training sees a centre crop of ``size`` pixels; prediction used to see it too, so masks were background outside
it (cut by a straight edge). Now ``data check``, import and train name the cases whose labels leave the crop,
and prediction pads instead of cropping (the network is fully convolutional). Where nothing is cut, the slices
and hence the results are exactly those of before.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from udavae.cli import main
from udavae.data.nifti import load_volume
from udavae.data.preprocessing import Preprocessing
from udavae.data.volumes import load_image
from udavae.engine.inference import Predictor
from udavae.engine.model_folder import open_model

LABELS = "MYO=200,LV=500,RV=600"


def _set_size(json_path: Path, size: int) -> None:
    d = json.loads(json_path.read_text())
    d["preprocessing"]["size"] = [size, size]
    json_path.write_text(json.dumps(d))


def test_data_check_warns_naming_labels_beyond_the_crop(data_copy: Path, capsys) -> None:
    _set_size(data_copy / "dataset.json", 16)
    assert main(["data", "check", str(data_copy)]) == 0  # usable: a warning, not a problem
    err = capsys.readouterr().err
    label = data_copy / "LGE" / "labels" / "case001.nii.gz"
    assert f"warning: {label}: 33.5% of the labelled voxels lie outside the 16x16 centre crop" in err
    _set_size(data_copy / "dataset.json", 48)
    assert main(["data", "check", str(data_copy)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_import_warns_naming_labels_beyond_the_crop(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "import",
                "folder",
                str(trained["data"] / "C0"),
                str(out),
                "--domain",
                "C0",
                "--labels",
                LABELS,
                "--size",
                "16",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"warning: {out / 'C0' / 'labels' / 'case002.nii.gz'}: 28.7% of the labelled voxels" in err


def test_train_warns_naming_the_cut_cases(
    trained: dict[str, Path], tmp_path: Path, tiny_train_args: list[str], capsys
) -> None:
    # slices zoomed 2x (96 x 96) and cropped to 48 x 48: the hearts' edges are cut
    assert (
        main(
            [
                "train",
                "--dataset",
                str(trained["data"]),
                "--out",
                str(tmp_path / "run"),
                *tiny_train_args,
                "data.zoom=2",
                "data.size=48",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "warning: the labels of 2 C0 training case(s) reach beyond the 48x48 centre crop" in err
    assert "case001 (3.0%), case002 (1.3%)" in err


class _Threshold(torch.nn.Module):
    """A fully convolutional stand-in: class 1 where the normalised intensity exceeds 0.5."""

    stride = 16

    def forward(self, x: torch.Tensor, sample: bool = False) -> SimpleNamespace:
        assert x.shape[-2] % self.stride == 0 and x.shape[-1] % self.stride == 0
        return SimpleNamespace(logits=torch.cat((torch.full_like(x, 0.5), x), dim=1) * 20)


def test_prediction_covers_the_whole_image(tmp_path: Path) -> None:
    """A 40 x 44 scan and a 16 x 16 training size: the mask covers every voxel, not the centre crop alone."""
    rng = np.random.default_rng(0)
    data = rng.random((40, 44, 2)).astype(np.float32)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.25, 1.25, 8.0, 1.0])), path)
    prep = Preprocessing(intensity="minmax", size=(16, 16))
    vol, slices, geom = load_image(path, prep)
    assert tuple(slices.shape) == (2, 40, 44)  # padded (to at least 16), never cropped
    pred = Predictor(_Threshold(), prep, torch.device("cpu"), batch_size=1).predict(slices, geom)
    expected = prep.normalize(vol.data) > 0.5
    assert pred.classes.shape == data.shape
    assert np.array_equal(pred.classes.astype(bool), expected)  # everywhere, border included


@pytest.mark.parametrize("size", [48, 64])
def test_nothing_changes_where_nothing_is_cut(trained: dict[str, Path], size: int) -> None:
    prep = Preprocessing(size=(size, size))
    vol = load_volume(trained["images"] / "case001.nii.gz")
    whole, _ = prep.image(vol.data, vol.spacing, whole=True)
    crop, _ = prep.image(vol.data, vol.spacing)
    assert torch.equal(whole, crop)


def test_evaluate_masks_do_not_depend_on_the_training_crop(
    trained: dict[str, Path], run_copy: Path, tmp_path: Path
) -> None:
    """The same weights with a 16 x 16 training size give the masks and metrics of the 48 x 48 size."""
    args = ["--device", "cpu", "--no-qc", "--save-masks", "--checkpoint", "last"]
    assert main(["evaluate", str(trained["run"]), "--out", str(tmp_path / "e48"), *args]) == 0
    _set_size(run_copy / "model.json", 16)
    assert open_model(run_copy, "last", "cpu").info.preprocessing.size == (16, 16)
    assert main(["evaluate", str(run_copy), "--out", str(tmp_path / "e16"), *args]) == 0
    outside = np.ones((48, 48), bool)
    outside[16:32, 16:32] = False  # what a 16 x 16 centre crop of a 48 x 48 slice leaves out
    beyond = False
    for mask in sorted((tmp_path / "e48" / "masks").iterdir()):
        a = np.asarray(nib.load(mask).dataobj)
        b = np.asarray(nib.load(tmp_path / "e16" / "masks" / mask.name).dataobj)
        assert np.array_equal(a, b), mask.name
        beyond |= bool(a[outside].any())
    assert beyond  # the masks do reach beyond the 16 x 16 crop: a cut would show
    assert (tmp_path / "e48" / "metrics.csv").read_text() == (tmp_path / "e16" / "metrics.csv").read_text()
    shutil.rmtree(tmp_path / "e16")

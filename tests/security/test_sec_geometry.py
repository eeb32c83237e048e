"""Issue 21, item 5: absurd geometry is one clear error at import, check and predict; ``optim.lr=nan`` is refused.

A zero spacing was silently read as 1 mm (nibabel "fixes" a zero ``pixdim``), so every mm metric was wrong; a
1e6 mm spacing imported into a dataset of declared size 64,000,000 pixels that failed later with an allocator
traceback naming nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from udavae.cli import main
from udavae.data.check import check_files
from udavae.data.nifti import GeometryError, load_volume
from udavae.data.preprocessing import MAX_SIDE, Preprocessing
from udavae.data.spec import LabelMap
from udavae.data.volumes import load_image
from udavae.errors import DataError

LABELS = "MYO=200,LV=500,RV=600"


def _with_spacing(src: Path, dest: Path, zooms: tuple[float, float, float]) -> Path:
    """Copy NIfTI ``src`` to ``dest`` with the voxel sizes in its header set to ``zooms`` (0 allowed)."""
    img = nib.load(src)
    out = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, header=img.header.copy())
    out.header["pixdim"][1:4] = zooms  # raw write: set_zooms refuses 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, dest)
    return dest


@pytest.mark.parametrize("zooms", [(0.0, 1.25, 10.0), (1e6, 1e6, 10.0), (1.25, 1.25, float("nan"))])
def test_implausible_spacing_is_refused_when_read(trained: dict[str, Path], tmp_path: Path, zooms: tuple) -> None:
    path = _with_spacing(trained["images"] / "case001.nii.gz", tmp_path / "odd.nii.gz", zooms)
    with pytest.raises(GeometryError, match=r"odd\.nii\.gz: implausible voxel spacing"):
        load_volume(path)


def test_zero_spacing_is_reported_by_data_check(data_copy: Path, capsys) -> None:
    image = data_copy / "LGE" / "images" / "case002.nii.gz"
    _with_spacing(image, image, (0.0, 0.0, 10.0))
    assert main(["data", "check", str(data_copy)]) == 2
    err = capsys.readouterr().err
    assert f"{image}: image: implausible voxel spacing (0, 0, 10) mm" in err


def test_import_refuses_absurd_spacing_and_writes_nothing(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    for sub in ("images", "labels"):
        for f in sorted((trained["data"] / "C0" / sub).iterdir()):
            _with_spacing(f, src / sub / f.name, (1e6, 1e6, 10.0) if f.name == "case001.nii.gz" else (1.25, 1.25, 10))
    out = tmp_path / "out"
    assert (
        main(["data", "import", "folder", str(src), str(out), "--domain", "C0", "--labels", LABELS, "--spacing", "1"])
        == 2
    )
    err = capsys.readouterr().err
    assert "case001.nii.gz" in err and "implausible voxel spacing (1e+06, 1e+06, 10)" in err
    assert not out.exists()


def test_resampled_size_over_the_limit_is_one_error_naming_the_file(trained: dict[str, Path]) -> None:
    prep = Preprocessing(target_spacing=(0.001, 0.001), size=(64, 64))
    image = trained["images"] / "case001.nii.gz"
    with pytest.raises(DataError, match=rf"case001\.nii\.gz: .* over the limit of {MAX_SIDE}"):
        load_image(image, prep)
    problems = check_files(image, None, LabelMap({"MYO": 200}), prep)
    assert any(f"over the limit of {MAX_SIDE}" in p.message for p in problems)
    with pytest.raises(ValueError, match="exceeds the limit"):
        Preprocessing(size=(64_000_000, 64_000_000))


def test_dataset_declaring_an_absurd_size_fails_check(data_copy: Path, capsys) -> None:
    spec = json.loads((data_copy / "dataset.json").read_text())
    spec["preprocessing"]["size"] = [64_000_000, 64_000_000]
    (data_copy / "dataset.json").write_text(json.dumps(spec))
    assert main(["data", "check", str(data_copy)]) == 2
    assert "exceeds the limit" in capsys.readouterr().err


def test_predict_refuses_zero_spacing_and_absurd_model_size(
    trained: dict[str, Path], run_copy: Path, tmp_path: Path, capsys
) -> None:
    inp = _with_spacing(trained["images"] / "case001.nii.gz", tmp_path / "in" / "zero.nii.gz", (0.0, 1.25, 10.0))
    out = tmp_path / "out"
    assert main(["predict", str(run_copy), str(inp), str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "zero.nii.gz: implausible voxel spacing (0, 1.25, 10)" in err and "Traceback" not in err
    assert not out.exists()
    model = json.loads((run_copy / "model.json").read_text())
    model["preprocessing"]["size"] = [64_000_000, 64_000_000]
    (run_copy / "model.json").write_text(json.dumps(model))
    shutil.copy(trained["images"] / "case001.nii.gz", inp)
    assert main(["predict", str(run_copy), str(inp), str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(run_copy / "model.json") in err and "exceeds the limit" in err and len(err.strip().splitlines()) == 1


def test_nan_learning_rate_is_refused_and_leaves_no_folder(
    trained: dict[str, Path], tmp_path: Path, tiny_train_args: list[str], capsys
) -> None:
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(trained["data"]), "--out", str(out), *tiny_train_args, "optim.lr=nan"]) == 2
    assert "optim.lr" in capsys.readouterr().err
    assert not out.exists()

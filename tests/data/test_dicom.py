"""DICOM input (udavae.data.dicom): series found in nested folders, geometry and voxels read back exactly (LPS ->
RAS), bad series refused with one error naming the folder, and ``predict`` on DICOM giving the masks it gives on
the same scan as NIfTI."""

from __future__ import annotations

import csv
import locale
import os
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import udavae
from udavae.cli import main
from udavae.data.dicom import find_series, series_stem
from udavae.data.nifti import save_volume
from udavae.engine.predict import input_files
from udavae.errors import DataError, UserError

MSCMRSEG = Path(os.environ.get("UDAVAE_MSCMRSEG", Path(__file__).resolve().parents[3] / "shared/data/mscmrseg"))
UID = "1.2.826.0.1.3680043.8.498.1001"


def oblique_affine(spacing, origin, left_handed: bool = False) -> np.ndarray:  # noqa: ANN001
    """A NIfTI affine with a rotated direction (25 deg about x, -40 about z); ``left_handed``: slice axis reversed."""
    a, b = np.deg2rad(25.0), np.deg2rad(-40.0)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    rot = rz @ rx
    if left_handed:
        rot[:, 2] *= -1
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def reversed_slices(affine: np.ndarray, nz: int) -> np.ndarray:
    """The affine of the same grid with the slice axis reversed (voxel k -> nz - 1 - k)."""
    out = affine.copy()
    out[:3, 3] = affine[:3, 3] + (nz - 1) * affine[:3, 2]
    out[:3, 2] = -affine[:3, 2]
    return out


def smooth_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    return (300 + 200 * np.sin(6 * x) * np.cos(4 * y) + 50 * z + rng.uniform(0, 20, shape)).astype(np.float64)


@pytest.mark.parametrize("left_handed", [False, True])
def test_series_geometry_and_voxels_round_trip(write_dicom_series, tmp_path: Path, left_handed: bool) -> None:
    import SimpleITK as sitk

    data = smooth_volume((20, 16, 6))
    affine = oblique_affine((0.8, 0.9, 2.5), (12.5, -30.0, 41.0), left_handed)
    held = write_dicom_series(data, affine, tmp_path / "in" / "patient" / "study" / "series", UID)
    (tmp_path / "in" / "DICOMDIR").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # a media index: not a scan
    before = locale.setlocale(locale.LC_ALL)
    (series,) = find_series(tmp_path / "in")  # found two folders down
    assert series.uid == UID and len(series.files) == 6 and series.stem == UID
    assert dict(series.info) == {
        "patient_id": "PAT-7",
        "study_description": "cardiac MR",
        "series_description": "LGE short axis",
        "modality": "MR",
    }
    vol = series.load()
    assert locale.setlocale(locale.LC_ALL) == before  # reading leaves the process's locale alone
    assert vol.data.dtype == np.float32 and vol.spacing == pytest.approx((0.8, 0.9, 2.5), abs=1e-4)
    if left_handed:  # DICOM orders slices along the plane's normal: the same grid, slice axis reversed
        assert np.array_equal(vol.data, held[:, :, ::-1])
        assert np.allclose(vol.affine, reversed_slices(affine, 6), atol=1e-4)
    else:
        assert np.array_equal(vol.data, held)
        assert np.allclose(vol.affine, affine, atol=1e-4)
    # SimpleITK's own NIfTI writer/reader (its LPS <-> RAS) agrees with the geometry udavae states
    nifti = save_volume(vol.data, vol.affine, tmp_path / "read.nii.gz")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in series.files])
    from_dicom, from_nifti = reader.Execute(), sitk.ReadImage(str(nifti))
    for get in ("GetSpacing", "GetOrigin", "GetDirection"):
        assert np.allclose(getattr(from_dicom, get)(), getattr(from_nifti, get)(), atol=1e-4), get


def _bad_series(kind: str, folder: Path, write) -> str:  # noqa: ANN001
    """Write a bad series of ``kind`` into ``folder``; return the phrase its error must hold."""
    data, affine = smooth_volume((16, 16, 5)), oblique_affine((1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    if kind == "single":
        write(data[:, :, :1], affine, folder, UID)
        return "single file"
    if kind == "sizes":
        write(data, affine, folder, UID)
        shifted = affine.copy()
        shifted[:3, 3] += 5 * affine[:3, 2]
        write(smooth_volume((20, 16, 1)), shifted, folder, UID, {"0008|0018": f"{UID}.99"}, lambda k: "extra.dcm")
        return "different sizes"
    if kind == "same-position":
        write(data, affine, folder, UID)
        write(data, affine, folder, UID, {"0008|0018": f"{UID}.7"}, lambda k: f"phase2_{k}.dcm")
        return "several slices at one position"
    if kind == "uneven":
        write(data, affine, folder, UID)
        (folder / "IM0002.dcm").unlink()
        return "unevenly spaced"
    write(data, affine, folder, UID)
    if kind == "corrupt":
        (folder / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"junk" * 10)
    else:  # truncated
        f = folder / "IM0003.dcm"
        f.write_bytes(f.read_bytes()[:300])
    return "cannot be read as part of a series"


@pytest.mark.parametrize("kind", ["single", "sizes", "same-position", "uneven", "corrupt", "truncated"])
def test_bad_series_give_one_error_naming_the_folder(write_dicom_series, tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "scans" / "s1"
    phrase = _bad_series(kind, folder, write_dicom_series)
    with pytest.raises(DataError, match=phrase) as err:
        for series in input_files(tmp_path / "scans"):
            series.load()
    assert str(err.value).startswith(str(folder)) and "\n" not in str(err.value)


def test_one_series_in_two_folders_is_refused(write_dicom_series, tmp_path: Path) -> None:
    data, affine = smooth_volume((8, 8, 4)), oblique_affine((1.0, 1.0, 3.0), (0.0, 0.0, 0.0))
    write_dicom_series(data, affine, tmp_path / "in" / "a", UID)
    shifted = affine.copy()
    shifted[:3, 3] += 4 * affine[:3, 2]
    write_dicom_series(data, shifted, tmp_path / "in" / "b", UID, {"0008|0018": f"{UID}.50"})
    with pytest.raises(DataError, match=f"DICOM series {UID} is split between .*/a and .*/b"):
        find_series(tmp_path / "in")


def test_series_stem_is_a_safe_file_name() -> None:
    assert series_stem("1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"
    assert series_stem(" 1.2/3\\4 x ") == "1.2_3_4_x"
    assert series_stem("../..//1..2") == "1.2"
    with pytest.raises(UserError, match="DICOM series UID"):
        series_stem("...")


def test_missing_simpleitk_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_volume(np.zeros((4, 4, 2), np.float32), np.eye(4), tmp_path / "a.nii.gz")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK -> ImportError
    assert input_files(tmp_path) == [tmp_path / "a.nii.gz"]  # NIfTI only: SimpleITK is not needed
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)
    with pytest.raises(UserError, match=r"pip install 'udavae\[dicom\]'"):
        input_files(tmp_path)


# --------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: dict) -> tuple[Path, Path]:
    from udavae.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("dicom")
    generate_dataset(root / "data", n_source=3, n_target=3, size=64, slices=4, seed=4, n_val=1)
    overrides = {**tiny_overrides, "optim.epochs": 1}
    cfg = udavae.Config.from_preset("noadapt", "tiny", overrides=overrides, data__dataset=str(root / "data"))
    udavae.train(cfg, root / "run")
    return root / "run", root / "data"


def _masks_equal(a: Path, b: Path, reverse: bool = False) -> None:
    """Two written masks hold the same voxels at the same places (``reverse``: b's slice axis reversed)."""
    ia, ib = nib.load(a), nib.load(b)
    da, db = np.asarray(ia.dataobj), np.asarray(ib.dataobj)
    assert np.array_equal(da, db[:, :, ::-1] if reverse else db)
    expected = reversed_slices(ib.affine, db.shape[2]) if reverse else ib.affine
    assert np.allclose(ia.affine, expected, atol=1e-4)
    assert ia.header.get_zooms() == pytest.approx(ib.header.get_zooms(), abs=1e-4)


def test_predict_dicom_series_gives_the_masks_of_the_same_nifti_scan(
    write_dicom_series, tiny_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = tiny_run
    scan = nib.load(data / "LGE" / "images" / "case001.nii.gz")
    values = np.asarray(scan.dataobj, np.float64)
    spacing = tuple(float(s) for s in scan.header.get_zooms()[:3])
    affine = oblique_affine(spacing, (-20.0, 35.0, 10.0))
    held = write_dicom_series(values, affine, tmp_path / "in" / "PAT-7" / "cine", UID)
    left = oblique_affine(spacing, (5.0, 5.0, 5.0), left_handed=True)
    write_dicom_series(values, left, tmp_path / "in" / "b", "9.8")  # read back with its slice axis reversed
    save_volume(held, affine, tmp_path / "in" / "scan.nii.gz", spacing=spacing)  # the same voxels as NIfTI

    assert main(["predict", str(run), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu", "--html"]) == 0
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{UID}.nii.gz", "9.8.nii.gz", "scan.nii.gz", "qc.csv", "series.csv", "report.html"]
    )
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "<h2>DICOM series</h2>" in page and f"<h3>{UID}" in page and "LGE short axis" in page
    _masks_equal(out / f"{UID}.nii.gz", out / "scan.nii.gz")
    mask = nib.load(out / "9.8.nii.gz")
    assert np.array_equal(np.asarray(mask.dataobj), np.asarray(nib.load(out / "scan.nii.gz").dataobj)[:, :, ::-1])
    assert np.allclose(mask.affine, reversed_slices(left, values.shape[2]), atol=1e-4)
    with open(out / "series.csv", newline="") as f:
        rows = {r["series_uid"]: r for r in csv.DictReader(f)}
    assert rows[UID] == {
        "series_uid": UID,
        "patient_id": "PAT-7",
        "study_description": "cardiac MR",
        "series_description": "LGE short axis",
        "modality": "MR",
        "n_slices": str(values.shape[2]),
        "folder": str(tmp_path / "in" / "PAT-7" / "cine"),
        "mask": f"{UID}.nii.gz",
    }
    assert set(rows) == {UID, "9.8"}
    with open(out / "qc.csv", newline="") as f:
        qc = {r["case"]: r for r in csv.DictReader(f)}
    assert qc[UID]["input"] == f"{tmp_path / 'in' / 'PAT-7' / 'cine'} (DICOM series {UID})"
    assert "series.csv" in capsys.readouterr().out
    # the Python API: a folder of one series is a scan too
    model = udavae.load(run, device="cpu")
    pred = model.predict(tmp_path / "in" / "PAT-7")
    assert np.array_equal(pred.codes, np.asarray(nib.load(out / f"{UID}.nii.gz").dataobj))


def test_predict_refuses_a_bad_series_before_writing(
    write_dicom_series, tiny_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = tiny_run
    folder = tmp_path / "in" / "s1"
    _bad_series("sizes", folder, write_dicom_series)
    capsys.readouterr()
    assert main(["predict", str(run), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err and "different sizes" in err
    assert not (tmp_path / "out").exists()
    # --skip-bad: the good scans are segmented, the bad series is named on stderr (exit status 1)
    shutil.copy(data / "LGE" / "images" / "case001.nii.gz", tmp_path / "in" / "good.nii.gz")
    args = ["predict", str(run), str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu", "--skip-bad"]
    assert main(args) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "qc.csv"]
    assert f"skipped {folder}: DICOM series {UID}: slices of different sizes" in capsys.readouterr().err


# --------------------------------------------------------------------------- real data
@pytest.mark.realdata
@pytest.mark.skipif(not (MSCMRSEG / "Patch192").is_dir(), reason="../shared/data/mscmrseg not available")
@pytest.mark.parametrize("name", ["LGE/patient6_LGE", "C0/patient10_C0"])
def test_real_scans_through_dicom(write_dicom_series, tiny_run: tuple[Path, Path], tmp_path: Path, name: str) -> None:
    """MS-CMRSeg scans (oblique, left-handed affines) written as DICOM: geometry and voxels come back, and the
    masks and class probabilities equal those of the same voxels read from NIfTI."""
    import SimpleITK as sitk

    original = nib.load(MSCMRSEG / "Patch192" / f"{name}.nii.gz")
    values, affine = np.asarray(original.dataobj, np.float64), original.affine
    nz = values.shape[2]
    assert np.linalg.det(affine[:3, :3]) < 0  # the files' own geometry: slices against the plane's normal
    # 1. the scan as a scanner would store it along its normal: spacing, origin, direction and voxels exact
    straight = reversed_slices(affine, nz)
    held = write_dicom_series(values[:, :, ::-1], straight, tmp_path / "straight", UID)
    (series,) = find_series(tmp_path / "straight")
    vol = series.load()
    assert np.array_equal(vol.data, held)
    assert np.allclose(vol.affine, straight, atol=1e-4)
    image = sitk.ImageSeriesReader()
    image.SetFileNames([str(f) for f in series.files])
    image = image.Execute()
    lps = np.diag([-1.0, -1.0, 1.0])
    spacing = np.linalg.norm(straight[:3, :3], axis=0)
    assert np.allclose(image.GetSpacing(), spacing, atol=1e-4)
    assert np.allclose(image.GetOrigin(), lps @ straight[:3, 3], atol=1e-4)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), lps @ straight[:3, :3] / spacing, atol=1e-4)
    # 2. the file's own slice order: the same grid, read along the normal
    scan_dir = tmp_path / "in" / "dicom"
    held = write_dicom_series(values, affine, scan_dir, "2.25.77")
    vol = find_series(scan_dir)[0].load()
    assert np.array_equal(vol.data, held[:, :, ::-1])
    assert np.allclose(vol.affine, straight, atol=1e-4)
    # 3. predict on DICOM == predict on the same voxels as NIfTI (original header)
    header = original.header.copy()
    header.set_data_dtype(np.float32)
    nib.save(nib.Nifti1Image(held, affine, header), tmp_path / "in" / "scan.nii.gz")
    run, _ = tiny_run
    model = udavae.load(run, device="cpu")
    from_dicom = model.predict(scan_dir, probabilities=True)
    from_nifti = model.predict(tmp_path / "in" / "scan.nii.gz", probabilities=True)
    assert np.allclose(from_dicom.probabilities, from_nifti.probabilities[..., ::-1], atol=1e-5)
    assert np.array_equal(from_dicom.classes, from_nifti.classes[:, :, ::-1])
    result = model.predict_folder(tmp_path / "in", tmp_path / "out", qc=False)
    assert len(result.masks) == 2
    _masks_equal(tmp_path / "out" / "2.25.77.nii.gz", tmp_path / "out" / "scan.nii.gz", reverse=True)

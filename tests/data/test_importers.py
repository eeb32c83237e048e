"""Importers: MS-CMRSeg (real data when available), MM-WHS and user folders -> canonical datasets."""

from __future__ import annotations

import filecmp
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from udavae.cli import main
from udavae.data.check import check_dataset
from udavae.data.importers import (
    INCOMPLETE_MARKER,
    MSCMRSEG_LABELS,
    import_folder,
    import_mmwhs,
    import_mscmrseg,
    mmwhs_label_map,
)
from udavae.data.spec import SPEC_FILE, DatasetSpec, LabelMap
from udavae.errors import DataError, UserError

MSCMRSEG = Path(os.environ.get("UDAVAE_MSCMRSEG", Path(__file__).resolve().parents[3] / "shared/data/mscmrseg"))


def write_nifti(path: Path, data: np.ndarray, spacing: tuple[float, float, float] = (1.25, 1.25, 8.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


def image(shape: tuple[int, int, int] = (16, 16, 4), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def label(shape: tuple[int, int, int], codes: list[int]) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.int16)
    for k, code in enumerate(codes):
        lab[2 + 2 * k : 4 + 2 * k, 2:6] = code
    return lab


# --------------------------------------------------------------------------- label mapping
def test_label_mapping_round_trip() -> None:
    lm = LabelMap(dict(MSCMRSEG_LABELS))
    codes = np.array([[0, 200], [500, 600]], dtype=np.float64)
    classes = lm.to_classes(codes)
    assert classes.tolist() == [[0, 1], [2, 3]] and classes.dtype == np.uint8
    assert lm.to_codes(classes).tolist() == codes.astype(int).tolist()


def test_label_mapping_unknown_code_names_file() -> None:
    with pytest.raises(DataError, match=r"patient7_LGE_manual\.nii\.gz.*\[300\]"):
        LabelMap(dict(MSCMRSEG_LABELS)).to_classes(np.array([0, 300, 200]), source="patient7_LGE_manual.nii.gz")


def test_mmwhs_label_map_unselected_become_background() -> None:
    lm = mmwhs_label_map(("MYO", "LV", "RV"))
    assert lm.codes == {"MYO": 205, "LV": 500, "RV": 600}
    assert set(lm.background_codes) == {0, 420, 550, 820, 850}
    assert lm.to_classes(np.array([0, 205, 420, 500, 600, 820, 850])).tolist() == [0, 1, 0, 2, 3, 0, 0]
    with pytest.raises(UserError, match="unknown MM-WHS structures"):
        mmwhs_label_map(("MYO", "AORTA"))


# --------------------------------------------------------------------------- MS-CMRSeg
@pytest.mark.realdata
@pytest.mark.skipif(not (MSCMRSEG / "Patch192").is_dir(), reason="../shared/data/mscmrseg not available")
def test_mscmrseg_real_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ms"
    spec = import_mscmrseg(MSCMRSEG, out, link=True)  # the parent of Patch192 is accepted
    assert [sum(1 for c in spec.domains[d] if c.label) for d in ("C0", "LGE")] == [35, 45]
    assert len(spec.splits["C0"]["train"]) == 35
    assert spec.splits["C0"]["val"] == [f"patient{i}" for i in range(1, 6)]  # LGE -> C0 direction
    assert spec.splits["C0"]["test"] == [f"patient{i}" for i in range(6, 36)]
    assert spec.splits["LGE"]["val"] == [f"patient{i}" for i in range(1, 6)]
    assert spec.splits["LGE"]["test"] == [f"patient{i}" for i in range(6, 46)]
    assert spec.labels.codes == {"MYO": 200, "LV": 500, "RV": 600}
    assert spec.preprocessing.intensity == "percentile" and spec.preprocessing.size == (192, 192)
    original = MSCMRSEG / "Patch192/LGE/patient7_LGE_manual.nii.gz"
    assert (out / "LGE/labels/patient7.nii.gz").resolve() == original.resolve()
    capsys.readouterr()
    assert main(["data", "check", str(out)]) == 0
    assert capsys.readouterr().out.strip() == "OK: 2 domains, 80 cases (80 labelled)"


def fake_patch192(root: Path, n_c0: int = 3, n_lge: int = 7) -> Path:
    for seq, n in (("C0", n_c0), ("LGE", n_lge)):
        for i in range(1, n + 1):
            write_nifti(root / "Patch192" / seq / f"patient{i}_{seq}.nii.gz", image(seed=i))
            write_nifti(
                root / "Patch192" / seq / f"patient{i}_{seq}_manual.nii.gz", label((16, 16, 4), [200, 500, 600])
            )
    return root / "Patch192"


def test_mscmrseg_layout_copies_bytes(tmp_path: Path) -> None:
    patch = fake_patch192(tmp_path / "src", n_c0=7, n_lge=12)
    spec = import_mscmrseg(patch, tmp_path / "out")
    c0 = [f"patient{i}" for i in range(1, 8)]
    assert spec.splits["C0"] == {"train": c0, "val": c0[:5], "test": c0[5:]}
    assert spec.splits["LGE"] == {
        "val": [f"patient{i}" for i in range(1, 6)],
        "test": [f"patient{i}" for i in range(6, 13)],
    }
    assert [c.id for c in spec.domains["LGE"]][8:10] == ["patient9", "patient10"]  # numeric order
    assert filecmp.cmp(tmp_path / "out/C0/images/patient2.nii.gz", patch / "C0/patient2_C0.nii.gz", shallow=False)
    assert filecmp.cmp(
        tmp_path / "out/LGE/labels/patient11.nii.gz", patch / "LGE/patient11_LGE_manual.nii.gz", shallow=False
    )
    assert not (tmp_path / "out" / INCOMPLETE_MARKER).exists()
    assert check_dataset(tmp_path / "out") == []
    # Re-importing into the same (complete) dataset is allowed.
    assert import_mscmrseg(patch, tmp_path / "out").domains.keys() == {"C0", "LGE"}


def test_mscmrseg_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        import_mscmrseg(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no C0/ or LGE/"):
        import_mscmrseg(tmp_path / "empty", tmp_path / "out")
    patch = fake_patch192(tmp_path / "src")
    (patch / "LGE/patient4_LGE_manual.nii.gz").unlink()
    with pytest.raises(UserError, match=r"without their _manual label file: patient4_LGE\.nii\.gz"):
        import_mscmrseg(patch, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written before the source is known good


# --------------------------------------------------------------------------- MM-WHS
def fake_mmwhs(root: Path) -> Path:
    """CT files at the top level, MR in mr_train/; labels include AA (820) and PA (850)."""
    codes = [205, 420, 500, 550, 600, 820, 850]
    for n in range(1001, 1006):
        write_nifti(root / f"ct_train_{n}_image.nii.gz", image((20, 16, 4), n), (0.4, 0.4, 0.6))
        write_nifti(root / f"ct_train_{n}_label.nii.gz", label((20, 16, 4), codes), (0.4, 0.4, 0.6))
    for n in range(1001, 1004):
        write_nifti(root / "mr_train" / f"mr_train_{n}_image.nii.gz", image((16, 16, 4), n), (1.0, 1.0, 1.0))
        write_nifti(root / "mr_train" / f"mr_train_{n}_label.nii.gz", label((16, 16, 4), codes), (1.0, 1.0, 1.0))
    write_nifti(root / "ct_test_2001_image.nii.gz", image((20, 16, 4), 7), (0.4, 0.4, 0.6))
    return root


def test_mmwhs_import(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = fake_mmwhs(tmp_path / "mmwhs")
    out = tmp_path / "out"
    rc = main(["data", "import", "mmwhs", str(src), str(out), "--val-count", "1", "--test-count", "2"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "CT: 6 cases, 5 labelled; splits: train 2, val 1, test 2, unlabelled 1" in printed
    assert "MR: 3 cases, 3 labelled; splits: val 1, test 2" in printed
    assert printed.strip().endswith("OK: 2 domains, 9 cases (8 labelled)")  # AA/PA accepted as background
    spec = DatasetSpec.load(out)
    assert spec.splits["CT"] == {
        "train": ["ct_train_1001", "ct_train_1002"],
        "val": ["ct_train_1003"],
        "test": ["ct_train_1004", "ct_train_1005"],
        "unlabelled": ["ct_test_2001"],
    }
    assert list(spec.labels.codes) == ["MYO", "LA", "LV", "RA", "RV"]
    assert {820, 850} <= set(spec.labels.background_codes)
    assert spec.preprocessing.target_spacing == (1.25, 1.25) and spec.preprocessing.size == (192, 192)
    assert next(c for c in spec.domains["CT"] if c.id == "ct_test_2001").label is None


def test_mmwhs_errors(tmp_path: Path) -> None:
    src = fake_mmwhs(tmp_path / "mmwhs")
    with pytest.raises(UserError, match="fewer than val_count"):
        import_mmwhs(src, tmp_path / "out", modalities=("mr",), val_count=2, test_count=2)
    with pytest.raises(UserError, match="unknown MM-WHS modalities"):
        import_mmwhs(src, tmp_path / "out", modalities=("pet",))
    (src / "ct_train_1002_label.nii.gz").unlink()
    with pytest.raises(UserError, match="ct_train_1002"):
        import_mmwhs(src, tmp_path / "out", modalities=("ct",))


# --------------------------------------------------------------------------- user folder
def fake_folder(
    root: Path, shapes: dict[str, tuple[int, int, int]], codes: list[int], unlabelled: tuple[str, ...] = ()
) -> Path:
    for k, (case_id, shape) in enumerate(shapes.items()):
        write_nifti(root / f"{case_id}.nii.gz", image(shape, k), (0.75 + 0.1 * k, 0.75 + 0.1 * k, 5.0))
        if case_id not in unlabelled:
            write_nifti(root / f"{case_id}_label.nii.gz", label(shape, codes), (0.75 + 0.1 * k, 0.75 + 0.1 * k, 5.0))
    return root


def test_folder_import_and_second_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = fake_folder(
        tmp_path / "a",
        {"case1": (20, 24, 3), "case2": (16, 16, 4), "case10": (12, 18, 5)},
        [200, 500, 600],
        unlabelled=("case10",),
    )
    out = tmp_path / "ds"
    spec = import_folder(src, out, "bSSFP", {"MYO": 200, "LV": 500, "RV": 600}, test=["case2"])
    assert [c.id for c in spec.domains["bSSFP"]] == ["case1", "case2", "case10"]
    assert [c.label is not None for c in spec.domains["bSSFP"]] == [True, True, False]
    assert spec.splits["bSSFP"] == {"train": ["case1", "case10"], "test": ["case2"]}
    assert spec.preprocessing.size == (32, 32)  # largest in-plane 24, rounded up to 16
    assert check_dataset(out) == []

    src_b = fake_folder(tmp_path / "b", {"p1": (16, 16, 4), "p2": (16, 16, 4)}, [200, 500])
    rc = main(
        [
            "data",
            "import",
            "folder",
            str(src_b),
            str(out),
            "--domain",
            "LGE",
            "--labels",
            "MYO=200,LV=500,RV=600",
            "--val",
            "p1",
            "--link",
        ]
    )
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert "LGE: 2 cases, 2 labelled; splits: train 1, val 1" in printed
    assert "OK: 2 domains, 5 cases (4 labelled)" in printed
    spec = DatasetSpec.load(out)
    assert list(spec.domains) == ["bSSFP", "LGE"] and spec.preprocessing.size == (32, 32)
    assert (out / "LGE/images/p2.nii.gz").is_symlink()

    with pytest.raises(UserError, match=r"label map .*differs"):
        import_folder(src_b, out, "T2", {"MYO": 200, "LV": 500})
    assert "T2" not in DatasetSpec.load(out).domains


def test_folder_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labels = {"MYO": 200}
    with pytest.raises(UserError, match="input folder .* not found"):
        import_folder(tmp_path / "missing", tmp_path / "out", "A", labels)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no NIfTI images"):
        import_folder(tmp_path / "empty", tmp_path / "out", "A", labels)
    src = fake_folder(tmp_path / "src", {"c1": (16, 16, 4), "c2": (16, 16, 4)}, [200], unlabelled=("c2",))
    with pytest.raises(UserError, match=r"without a label file .*c2\.nii\.gz"):
        import_folder(src, tmp_path / "out", "A", labels, require_labels=True)
    with pytest.raises(UserError, match=r"test cases \['c9'\]"):
        import_folder(src, tmp_path / "out", "A", labels, test=["c9"])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and is not a udavae dataset"):
        import_folder(src, tmp_path / "busy", "A", labels)
    assert main(["data", "import", "folder", str(src), str(tmp_path / "out"), "--domain", "A", "--labels", "MYO"]) == 2
    assert "--labels: expected NAME=CODE" in capsys.readouterr().err


def test_interrupted_import_is_redone(tmp_path: Path) -> None:
    src = fake_folder(tmp_path / "src", {"c1": (16, 16, 4)}, [200])
    out = tmp_path / "out"
    out.mkdir()
    (out / INCOMPLETE_MARKER).write_text("")
    (out / "A/images").mkdir(parents=True)
    (out / "A/images/c1.nii.gz").write_bytes(b"half")
    spec = import_folder(src, out, "A", {"MYO": 200}, size=16, target_spacing=(1.0, 1.0))
    assert spec.preprocessing.target_spacing == (1.0, 1.0) and spec.preprocessing.size == (16, 16)
    assert not (out / INCOMPLETE_MARKER).exists()
    assert json.loads((out / SPEC_FILE).read_text())["domains"]["A"][0]["label"] == "A/labels/c1.nii.gz"
    assert check_dataset(out) == []


# --------------------------------------------------------------------------- label maps with folded codes
MYOPS_CODES = [200, 1220, 2221, 500, 600]  # MYO normal, edema, scar; LV; RV


def test_labels_fold_several_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = fake_folder(tmp_path / "src", {"p1": (16, 16, 6), "p2": (16, 16, 6)}, MYOPS_CODES)
    out = tmp_path / "out"
    rc = main(
        [
            "data",
            "import",
            "folder",
            str(src),
            str(out),
            "--domain",
            "LGE",
            "--labels",
            "MYO=200+1220+2221,LV=500,RV=600",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "OK: 1 domains, 2 cases (2 labelled)" in captured.out  # data check accepts 1220 and 2221
    assert json.loads((out / SPEC_FILE).read_text())["labels"]["codes"] == {
        "MYO": [200, 1220, 2221],
        "LV": 500,
        "RV": 600,
    }
    spec = DatasetSpec.load(out)
    codes = np.asarray(nib.load(out / "LGE/labels/p1.nii.gz").dataobj)
    classes = spec.labels.to_classes(codes)
    for code, cls in ((200, 1), (1220, 1), (2221, 1), (500, 2), (600, 3), (0, 0)):
        assert set(np.unique(classes[codes == code]).tolist()) == {cls}
    written = spec.labels.to_codes(classes)  # predicted masks carry the primary code
    assert set(np.unique(written[np.isin(codes, [200, 1220, 2221])]).tolist()) == {200}
    assert main(["data", "info", str(out)]) == 0
    assert "1 MYO (codes 200+1220+2221), 2 LV (code 500)" in capsys.readouterr().out


def test_label_map_json_forms() -> None:
    old = LabelMap.from_dict({"codes": {"MYO": 200, "LV": 500}, "background_codes": [0, 420]})
    assert old.codes == {"MYO": 200, "LV": 500} and old.extra_codes == {}
    assert old.to_dict() == {"codes": {"MYO": 200, "LV": 500}, "background_codes": [0, 420]}  # stays plain ints
    folded = LabelMap.from_dict({"codes": {"MYO": [200, 1220], "LV": [500]}})
    assert folded.codes == {"MYO": 200, "LV": 500} and folded.extra_codes == {"MYO": (1220,)}
    assert LabelMap.from_dict(folded.to_dict()) == folded
    for bad in ({"MYO": []}, {"MYO": ["x"]}, {"MYO": [200, 200]}, {"MYO": 200, "LV": [500, 200]}):
        with pytest.raises((ValueError, TypeError)):
            LabelMap.from_dict({"codes": bad})


def test_model_json_with_plain_codes_loads() -> None:
    from udavae.engine.model_folder import ModelInfo

    info = ModelInfo.from_dict(
        {
            "labels": {"codes": {"MYO": 200, "LV": 500, "RV": 600}, "background_codes": [0]},
            "preprocessing": {},
            "dataset": {"name": "x", "path": "x"},
            "source": "C0",
            "target": "LGE",
        }
    )
    assert info.labels.to_codes(np.array([0, 1, 2, 3])).tolist() == [0, 200, 500, 600]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            "MYO=200,MYO=1220",
            "--labels: structure 'MYO' is named twice; to fold several codes into one structure write MYO=200+CODE",
        ),
        ("MYO=200,LV=200", "--labels: label code 200 is given for both MYO and LV"),
        ("MYO=200+1220+200,LV=500", "--labels: label code 200 is given twice for MYO"),
        ("MYO=200+x", "--labels: codes of 'MYO' must be integers joined by '+'"),
    ],
)
def test_labels_repeated_name_or_code_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], labels: str, message: str
) -> None:
    src = fake_folder(tmp_path / "src", {"p1": (16, 16, 4)}, [200, 1220])
    out = tmp_path / "out"
    assert main(["data", "import", "folder", str(src), str(out), "--domain", "A", "--labels", labels]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_labels_help_documents_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["data", "import", "folder", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "MYO=200+1220+2221" in text and "--unlabelled" in text and "'all'" in text


def test_no_label_files_needs_unlabelled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = fake_folder(tmp_path / "src", {"p1": (16, 16, 4), "p2": (16, 16, 4)}, [200], unlabelled=("p1", "p2"))
    out = tmp_path / "out"
    args = ["data", "import", "folder", str(src), str(out), "--domain", "LGE", "--labels", "MYO=200"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{src}: no label files found (looked for *_label.nii.gz, flat folder layout)" in err
    assert "pass --unlabelled" in err and not out.exists()
    assert main([*args, "--unlabelled"]) == 0
    spec = DatasetSpec.load(out)
    assert [c.label for c in spec.domains["LGE"]] == [None, None]
    labelled = fake_folder(tmp_path / "labelled", {"p1": (16, 16, 4)}, [200])
    assert (
        main(
            [
                "data",
                "import",
                "folder",
                str(labelled),
                str(tmp_path / "o2"),
                "--domain",
                "A",
                "--labels",
                "MYO=200",
                "--unlabelled",
            ]
        )
        == 2
    )
    assert "declared unlabelled but 1 label files were found" in capsys.readouterr().err


# --------------------------------------------------------------------------- layouts and splits
def test_images_labels_layout(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for k, case_id in enumerate(["p1", "p2", "p10"]):
        write_nifti(src / "images" / f"{case_id}.nii.gz", image((16, 16, 4), k))
        if case_id != "p10":
            write_nifti(src / "labels" / f"{case_id}.nii.gz", label((16, 16, 4), [200, 500]))
    spec = import_folder(src, tmp_path / "out", "T2", {"MYO": 200, "LV": 500}, val=["p2"])
    assert [(c.id, c.label) for c in spec.domains["T2"]] == [
        ("p1", "T2/labels/p1.nii.gz"),
        ("p2", "T2/labels/p2.nii.gz"),
        ("p10", None),
    ]
    assert spec.splits["T2"] == {"train": ["p1", "p10"], "val": ["p2"]}
    assert filecmp.cmp(tmp_path / "out/T2/labels/p2.nii.gz", src / "labels/p2.nii.gz", shallow=False)
    write_nifti(src / "labels" / "p3.nii.gz", label((16, 16, 4), [200]))
    with pytest.raises(UserError, match=r"without an image of the same name in images/: p3\.nii\.gz"):
        import_folder(src, tmp_path / "out2", "T2", {"MYO": 200, "LV": 500})


def fake_nnunet(root: Path) -> Path:
    for k, case_id in enumerate(["heart_001", "heart_002", "heart_003"]):
        write_nifti(root / "imagesTr" / f"{case_id}_0000.nii.gz", image((16, 16, 4), k))
        write_nifti(root / "labelsTr" / f"{case_id}.nii.gz", label((16, 16, 4), [1, 2]))
    write_nifti(root / "imagesTs" / "heart_010_0000.nii.gz", image((16, 16, 4), 9))
    (root / "dataset.json").write_text('{"labels": {"background": 0, "MYO": 1, "LV": 2}}')
    return root


def test_nnunet_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = fake_nnunet(tmp_path / "Dataset001_Heart")
    out = tmp_path / "out"
    rc = main(
        [
            "data",
            "import",
            "folder",
            str(src),
            str(out),
            "--domain",
            "MR",
            "--labels",
            "MYO=1,LV=2",
            "--val",
            "heart_001",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    spec = DatasetSpec.load(out)
    assert [(c.id, c.label is not None) for c in spec.domains["MR"]] == [
        ("heart_001", True),
        ("heart_002", True),
        ("heart_003", True),
        ("heart_010", False),
    ]
    assert spec.splits["MR"] == {"train": ["heart_002", "heart_003"], "val": ["heart_001"], "unlabelled": ["heart_010"]}
    assert filecmp.cmp(out / "MR/images/heart_002.nii.gz", src / "imagesTr/heart_002_0000.nii.gz", shallow=False)
    write_nifti(src / "imagesTr" / "heart_001_0001.nii.gz", image((16, 16, 4), 5))
    with pytest.raises(UserError, match=r"heart_001_0001\.nii\.gz: channel 0001 of a multi-channel case"):
        import_folder(src, tmp_path / "out2", "MR", {"MYO": 1, "LV": 2})


def test_split_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = fake_folder(tmp_path / "src", {"p1": (16, 16, 4), "p2": (16, 16, 4), "p3": (16, 16, 4)}, [200])
    base = ["data", "import", "folder", str(src)]
    assert main([*base, str(tmp_path / "a"), "--domain", "LGE", "--labels", "MYO=200", "--test", "all"]) == 0
    assert DatasetSpec.load(tmp_path / "a").splits["LGE"] == {"test": ["p1", "p2", "p3"]}
    assert (
        main([*base, str(tmp_path / "b"), "--domain", "LGE", "--labels", "MYO=200", "--val", "p2", "--test", "all"])
        == 0
    )
    assert DatasetSpec.load(tmp_path / "b").splits["LGE"] == {"val": ["p2"], "test": ["p1", "p3"]}
    spec = import_folder(src, tmp_path / "c", "LGE", {"MYO": 200}, val="all")
    assert spec.splits["LGE"] == {"val": ["p1", "p2", "p3"]}
    capsys.readouterr()
    assert (
        main([*base, str(tmp_path / "d"), "--domain", "LGE", "--labels", "MYO=200", "--val", "all", "--test", "all"])
        == 2
    )
    assert "val and test cannot both be 'all'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("label_suffix", "hint"),
    [
        ("_gd", "images look like Case1_C0.nii.gz: pass --image-suffix _C0"),
        (None, "files look like Case1_C0.nii.gz + Case1_gd.nii.gz: pass --label-suffix _gd --image-suffix _C0"),
    ],
)
def test_image_suffix_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], label_suffix: str | None, hint: str
) -> None:
    src = tmp_path / "src"
    for k in (1, 2, 10):
        write_nifti(src / f"Case{k}_C0.nii.gz", image((16, 16, 4), k))
        write_nifti(src / f"Case{k}_gd.nii.gz", label((16, 16, 4), [200]))
    extra = ["--label-suffix", label_suffix] if label_suffix else []
    args = ["data", "import", "folder", str(src), str(tmp_path / "out"), "--domain", "C0", "--labels", "MYO=200"]
    assert main([*args, *extra]) == 2
    assert hint in capsys.readouterr().err
    assert main([*args, "--label-suffix", "_gd", "--image-suffix", "_C0"]) == 0


def test_image_suffix_hint_default_label_suffix(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for k in (1, 2):
        write_nifti(src / f"Case{k}_LGE.nii.gz", image((16, 16, 4), k))
        write_nifti(src / f"Case{k}_label.nii.gz", label((16, 16, 4), [200]))
    with pytest.raises(
        UserError,
        match=r"label files without an image: Case1_label\.nii\.gz, Case2_label\.nii\.gz; "
        r"images look like Case1_LGE\.nii\.gz: pass --image-suffix _LGE",
    ):
        import_folder(src, tmp_path / "out", "LGE", {"MYO": 200})


def test_folded_codes_extend_existing_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    import_folder(
        fake_folder(tmp_path / "c0", {"p1": (16, 16, 4)}, [200, 500, 600]),
        out,
        "C0",
        {"MYO": 200, "LV": 500, "RV": 600},
    )
    lge = fake_folder(tmp_path / "lge", {"q1": (16, 16, 6)}, MYOPS_CODES)
    spec = import_folder(lge, out, "LGE", {"MYO": [200, 1220, 2221], "LV": 500, "RV": 600}, test="all")
    assert spec.labels.structure_codes == {"MYO": (200, 1220, 2221), "LV": (500,), "RV": (600,)}
    assert DatasetSpec.load(out).labels == spec.labels and check_dataset(out) == []
    with pytest.raises(
        UserError,
        match=r"label map MYO=200\+1220\+2221, LV=500, RV=600 \(background 0\) of the "
        r"existing dataset differs from the imported one MYO=1220",
    ):
        import_folder(lge, out, "T2", {"MYO": [1220, 200, 2221], "LV": 500, "RV": 600})

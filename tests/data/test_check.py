"""Dataset checking: every kind of bad file is reported by ``udavae data check``, naming the file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from udavae.cli import main
from udavae.data.check import Problem, check_dataset
from udavae.data.importers import INCOMPLETE_MARKER
from udavae.data.spec import SPEC_FILE, Case, DatasetSpec, LabelMap, case_relpaths

SHAPE = (16, 16, 4)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Save a small NIfTI volume (default affine: 1.25 x 1.25 x 8 mm, RAS)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.25, 1.25, 8.0, 1.0]) if affine is None else affine), str(path))
    return path


def make_image(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def make_label(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.int16)
    lab[4:8, 4:8] = 200
    lab[8:12, 4:8] = 500
    lab[4:8, 8:12] = 600
    return lab


def make_dataset(root: Path) -> DatasetSpec:
    """A valid two-domain dataset: A (2 labelled cases) and B (2 labelled, 1 unlabelled)."""
    domains: dict[str, list[Case]] = {}
    for dom, ids in (("A", ["case1", "case2"]), ("B", ["case1", "case2", "case3"])):
        cases = []
        for k, case_id in enumerate(ids):
            img, lab = case_relpaths(dom, case_id)
            write_nifti(root / img, make_image(k))
            labelled = case_id != "case3"
            if labelled:
                write_nifti(root / lab, make_label())
            cases.append(Case(case_id, img, lab if labelled else None))
        domains[dom] = cases
    spec = DatasetSpec(
        name="toy",
        labels=LabelMap({"MYO": 200, "LV": 500, "RV": 600}),
        domains=domains,
        splits={"A": {"train": ["case1", "case2"]}, "B": {"val": ["case1"], "test": ["case2"]}},
        root=root,
    )
    spec.save()
    return spec


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    make_dataset(root)
    return root


def run_check(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["data", "check", str(root)])
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def assert_reported(root: Path, capsys: pytest.CaptureFixture[str], name: str, *words: str) -> str:
    """``data check`` exits 2 and names ``name`` (with ``words``) on stderr, like every other command's errors."""
    rc = main(["data", "check", str(root)])
    captured = capsys.readouterr()
    out = captured.err
    assert rc == 2, captured.out + captured.err
    assert captured.out == "", "problems must go to stderr"
    lines = [line for line in out.splitlines() if name in line]
    assert lines, f"{name} not named in:\n{out}"
    for word in words:
        assert any(word in line for line in lines), f"{word!r} not in lines naming {name}:\n{out}"
    return out


def test_valid_dataset_passes(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_dataset(dataset) == []
    rc, out = run_check(dataset, capsys)
    assert rc == 0
    assert out.strip() == "OK: 2 domains, 5 cases (4 labelled)"


def test_problem_str() -> None:
    assert str(Problem(Path("a/b.nii.gz"), "broken")) == "a/b.nii.gz: broken"


def test_missing_file(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (dataset / "B/images/case2.nii.gz").unlink()
    assert_reported(dataset, capsys, "B/images/case2.nii.gz", "not found")


def test_corrupt_gzip_truncated(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = dataset / "A/images/case1.nii.gz"
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    assert_reported(dataset, capsys, "A/images/case1.nii.gz", "unreadable")


def test_corrupt_gzip_garbage(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (dataset / "A/labels/case2.nii.gz").write_bytes(b"this is not gzip")
    assert_reported(dataset, capsys, "A/labels/case2.nii.gz", "unreadable")


def test_shape_mismatch(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_nifti(dataset / "A/labels/case1.nii.gz", make_label((16, 16, 3)))
    assert_reported(dataset, capsys, "A/labels/case1.nii.gz", "shape", "case1.nii.gz")


def test_spacing_mismatch(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_nifti(dataset / "B/labels/case2.nii.gz", make_label(), np.diag([1.3, 1.25, 8.0, 1.0]))
    assert_reported(dataset, capsys, "B/labels/case2.nii.gz", "spacing")


def test_orientation_mismatch(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_nifti(dataset / "B/labels/case1.nii.gz", make_label(), np.diag([-1.25, 1.25, 8.0, 1.0]))
    assert_reported(dataset, capsys, "B/labels/case1.nii.gz", "orientation LAS differs")


def test_origin_mismatch(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    affine = np.diag([1.25, 1.25, 8.0, 1.0])
    affine[:3, 3] = [5.0, 0.0, 0.0]
    write_nifti(dataset / "B/labels/case1.nii.gz", make_label(), affine)
    assert_reported(dataset, capsys, "B/labels/case1.nii.gz", "affine")


def test_unknown_label_codes(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lab = make_label()
    lab[0, 0, 0], lab[1, 0, 0] = 700, 17
    write_nifti(dataset / "A/labels/case2.nii.gz", lab)
    assert_reported(dataset, capsys, "A/labels/case2.nii.gz", "[17, 700]")


def test_nan_and_inf(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = make_image(3)
    img[0, 0, 0], img[1, 1, 1] = np.nan, np.inf
    write_nifti(dataset / "B/images/case3.nii.gz", img)
    assert_reported(dataset, capsys, "B/images/case3.nii.gz", "1 NaN and 1 Inf")


def test_not_3d(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_nifti(dataset / "A/images/case2.nii.gz", make_image(1, (16, 16)))
    write_nifti(dataset / "B/images/case1.nii.gz", make_image(1, (16, 16, 4, 2)))
    out = assert_reported(dataset, capsys, "A/images/case2.nii.gz", "not 3-D")
    assert "B/images/case1.nii.gz: image is not 3-D" in out


def test_empty_volume_constant_image(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_nifti(dataset / "A/images/case1.nii.gz", np.zeros(SHAPE, np.float32))
    assert_reported(dataset, capsys, "A/images/case1.nii.gz", "empty image", "constant")


def test_empty_volume_zero_voxels(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_nifti(dataset / "B/images/case3.nii.gz", np.zeros((16, 16, 0), np.float32))
    assert_reported(dataset, capsys, "B/images/case3.nii.gz", "zero voxels")


def test_empty_domain(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = json.loads((dataset / SPEC_FILE).read_text())
    d["domains"]["B"] = []
    del d["splits"]["B"]
    (dataset / SPEC_FILE).write_text(json.dumps(d))
    assert_reported(dataset, capsys, SPEC_FILE, "'B' has no cases")


def test_split_ids_that_do_not_exist(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = json.loads((dataset / SPEC_FILE).read_text())
    d["splits"]["B"]["test"] = ["case2", "case9"]
    (dataset / SPEC_FILE).write_text(json.dumps(d))
    (dataset / "A/images/case1.nii.gz").unlink()  # files are still checked
    out = assert_reported(dataset, capsys, SPEC_FILE, "B/test", "case9")
    assert "A/images/case1.nii.gz" in out


@pytest.mark.parametrize("content", [None, "{not json", '{"name": "x"}'])
def test_missing_or_malformed_description(
    dataset: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    if content is None:
        (dataset / SPEC_FILE).unlink()
    else:
        (dataset / SPEC_FILE).write_text(content)
    assert_reported(dataset, capsys, SPEC_FILE, "missing" if content is None else "malformed")


def test_interrupted_import_reported(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (dataset / INCOMPLETE_MARKER).write_text("")
    assert_reported(dataset, capsys, INCOMPLETE_MARKER, "did not finish")


def test_every_bad_file_reported(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (dataset / "A/images/case1.nii.gz").unlink()
    raw = gzip.compress(b"x" * 1000)
    (dataset / "B/labels/case2.nii.gz").write_bytes(raw)
    write_nifti(dataset / "B/labels/case1.nii.gz", make_label((16, 16, 3)))
    problems = check_dataset(dataset, progress=False)
    names = {str(p.path.relative_to(dataset)) for p in problems}
    assert names == {"A/images/case1.nii.gz", "B/labels/case2.nii.gz", "B/labels/case1.nii.gz"}
    assert main(["data", "check", str(dataset)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.splitlines()
    assert len(err) == 4 and err[-1] == f"FAILED: 3 problems in 3 files of {dataset}"
    assert {line.split(":")[0] for line in err[:3]} == {str(dataset / n) for n in names}


def test_folded_label_codes_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A structure may fold several codes (MYO = 200 + edema 1220 + scar 2221); other codes are still reported."""
    root = tmp_path / "ds"
    spec = make_dataset(root)
    spec.labels = LabelMap.from_structures({"MYO": [200, 1220, 2221], "LV": 500, "RV": 600})
    spec.save()
    lab = make_label()
    lab[4:6, 4:6], lab[6:8, 4:6] = 1220, 2221
    write_nifti(root / "A/labels/case1.nii.gz", lab)
    assert check_dataset(root) == []
    lab[0, 0, 0] = 1221
    write_nifti(root / "A/labels/case2.nii.gz", lab)
    assert_reported(
        root,
        capsys,
        "A/labels/case2.nii.gz",
        "label codes [1221] are not in the label map MYO=200+1220+2221, LV=500, RV=600",
    )

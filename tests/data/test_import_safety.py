"""A failed import writes nothing: every source file is vetted first and problems name the user's files.

Reported defect: an import with a bad source file (corrupt or truncated NIfTI, NaN image, image/label
shape mismatch, unknown label codes) wrote a complete-looking dataset and ``dataset.json``, then
reported FAILED, naming the copies instead of the user's files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_importers import fake_mmwhs, fake_patch192, image, label, write_nifti

from udavae.cli import main
from udavae.data import importers
from udavae.data.check import check_dataset
from udavae.data.importers import INCOMPLETE_MARKER
from udavae.data.spec import SPEC_FILE, DatasetSpec
from udavae.errors import UserError

SHAPE = (16, 16, 4)


def make_source(root: Path, n: int = 4) -> Path:
    """A flat folder ``patientN_C0.nii.gz`` + ``patientN_label.nii.gz`` (import with --image-suffix _C0)."""
    for i in range(1, n + 1):
        write_nifti(root / f"patient{i}_C0.nii.gz", image(SHAPE, i))
        write_nifti(root / f"patient{i}_label.nii.gz", label(SHAPE, [200, 500, 600]))
    return root


def truncate(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def with_nan(path: Path) -> None:
    img = image(SHAPE, 9)
    img[1, 2, 3] = np.nan
    write_nifti(path, img)


def import_cli(src: Path, out: Path, domain: str = "C0", *extra: str) -> list[str]:
    return [
        "data",
        "import",
        "folder",
        str(src),
        str(out),
        "--domain",
        domain,
        "--labels",
        "MYO=200,LV=500,RV=600",
        "--image-suffix",
        "_C0",
        *extra,
    ]


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` (hidden ones too) with its bytes and modification time."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()
    }


DEFECTS = {
    "truncated image": ("patient3_C0.nii.gz", truncate, "unreadable image"),
    "garbage image": ("patient3_C0.nii.gz", lambda p: p.write_bytes(b"not a nifti"), "unreadable image"),
    "NaN image": ("patient3_C0.nii.gz", with_nan, "image holds 1 NaN and 0 Inf values"),
    "shape mismatch": (
        "patient3_label.nii.gz",
        lambda p: write_nifti(p, label((16, 16, 3), [200])),
        "shape (16, 16, 3) differs from image patient3_C0.nii.gz shape (16, 16, 4)",
    ),
    "unknown codes": (
        "patient3_label.nii.gz",
        lambda p: write_nifti(p, label(SHAPE, [200, 700])),
        "label codes [700] are not in the label map",
    ),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_bad_source_file_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str], defect: str) -> None:
    src = make_source(tmp_path / "src")
    name, damage, message = DEFECTS[defect]
    damage(src / name)
    out = tmp_path / "out"
    rc = main(import_cli(src, out))
    captured = capsys.readouterr()
    assert not out.exists()
    assert rc == 2
    assert f"{src / name}: {message}" in captured.err
    assert f"nothing was written to {out}" in captured.err
    assert str(out / "C0") not in captured.err + captured.out  # the user's file is named, not a copy
    assert "FAILED" not in captured.out


def test_every_problem_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_source(tmp_path / "src")
    truncate(src / "patient1_C0.nii.gz")
    with_nan(src / "patient2_C0.nii.gz")
    write_nifti(src / "patient3_label.nii.gz", label((16, 16, 3), [200]))
    write_nifti(src / "patient4_label.nii.gz", label(SHAPE, [200, 700]))
    out = tmp_path / "new" / "deeper" / "out"
    rc = main(import_cli(src, out))
    err = capsys.readouterr().err
    assert not (tmp_path / "new").exists()  # no parent folder created either
    assert rc == 2
    assert f"4 problems in 4 source files; nothing was written to {out}:" in err
    problem_lines = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert [line.split(":")[0] for line in problem_lines] == [
        str(src / f)
        for f in ("patient1_C0.nii.gz", "patient2_C0.nii.gz", "patient3_label.nii.gz", "patient4_label.nii.gz")
    ]


@pytest.mark.parametrize("domain", ["C0", "LGE"])  # replace an existing domain / add a new one
def test_existing_dataset_left_exactly_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], domain: str
) -> None:
    out = tmp_path / "out"
    assert main(import_cli(make_source(tmp_path / "good"), out)) == 0
    before = snapshot(out)
    bad = make_source(tmp_path / "bad", n=5)
    with_nan(bad / "patient5_C0.nii.gz")
    capsys.readouterr()
    rc = main(import_cli(bad, out, domain))
    assert snapshot(out) == before
    assert list(DatasetSpec.load(out).domains) == ["C0"]
    assert rc == 2
    assert f"{bad / 'patient5_C0.nii.gz'}: image holds 1 NaN" in capsys.readouterr().err


def test_existing_empty_output_folder_stays_empty(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    truncate(src / "patient2_label.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError, match=r"patient2_label\.nii\.gz: unreadable label"):
        importers.import_folder(src, out, "C0", {"MYO": 200, "LV": 500, "RV": 600}, image_suffix="_C0")
    assert list(out.iterdir()) == []


def test_mscmrseg_bad_file_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patch = fake_patch192(tmp_path / "src")
    write_nifti(patch / "LGE/patient4_LGE.nii.gz", np.full(SHAPE, np.nan, np.float32))
    out = tmp_path / "out"
    rc = main(["data", "import", "mscmrseg", str(patch), str(out)])
    err = capsys.readouterr().err
    assert not out.exists()
    assert rc == 2
    assert f"{patch / 'LGE/patient4_LGE.nii.gz'}: image holds {16 * 16 * 4} NaN" in err


def test_mmwhs_bad_label_writes_nothing(tmp_path: Path) -> None:
    src = fake_mmwhs(tmp_path / "mmwhs")
    write_nifti(src / "mr_train" / "mr_train_1002_label.nii.gz", label((16, 16, 4), [205, 999]), (1.0, 1.0, 1.0))
    with pytest.raises(UserError, match=r"mr_train_1002_label\.nii\.gz: label codes \[999\]"):
        importers.import_mmwhs(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def failing_place(monkeypatch: pytest.MonkeyPatch, exc: BaseException, after: int) -> None:
    """Make the ``after``-th file placement of an import raise ``exc``."""
    place = importers._place
    calls = []

    def flaky(src: Path, dest: Path, link: bool) -> None:
        calls.append(dest)
        if len(calls) == after:
            raise exc
        place(src, dest, link)

    monkeypatch.setattr(importers, "_place", flaky)


def test_failed_write_removes_new_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_source(tmp_path / "src")
    failing_place(monkeypatch, UserError("disk full"), after=3)
    with pytest.raises(UserError, match="disk full"):
        importers.import_folder(src, tmp_path / "out", "C0", {"MYO": 200, "LV": 500, "RV": 600}, image_suffix="_C0")
    assert not (tmp_path / "out").exists()


def test_interrupted_write_keeps_marker_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_source(tmp_path / "src")
    out = tmp_path / "out"
    labels = {"MYO": 200, "LV": 500, "RV": 600}
    failing_place(monkeypatch, KeyboardInterrupt(), after=3)
    with pytest.raises(KeyboardInterrupt):
        importers.import_folder(src, out, "C0", labels, image_suffix="_C0")
    assert (out / INCOMPLETE_MARKER).exists() and not (out / SPEC_FILE).exists()
    monkeypatch.undo()
    importers.import_folder(src, out, "C0", labels, image_suffix="_C0")
    assert not (out / INCOMPLETE_MARKER).exists()
    assert check_dataset(out) == []

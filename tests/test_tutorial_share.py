"""docs/tutorials/share-a-model.md, run as written: every command of its bash and Python blocks, in order, on a
tiny synthetic model, then the promises it makes checked (zip masks = run-folder masks = MONAI bundle masks,
DICOM series segmented with series.csv, report.html and qc.csv written)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "tutorials" / "share-a-model.md"


def blocks(kind: str) -> list[str]:
    """The fenced ``kind`` blocks of the tutorial, in order."""
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


def commands() -> list[str]:
    """Every command line of the bash blocks (comments and blank lines dropped)."""
    return [ln for b in blocks("bash") for ln in b.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def test_the_page_has_the_commands_it_promises() -> None:
    cmds = commands()
    assert cmds[0].startswith("udavae export runs/mine mine.zip")
    assert any("--format monai-bundle" in c for c in cmds) and any("python -m monai.bundle run" in c for c in cmds)
    assert any(c.startswith("udavae predict elsewhere/mine.zip dicom/") for c in cmds)


@pytest.fixture
def workdir(tmp_path: Path, tiny_overrides: dict, write_dicom_series) -> Path:  # noqa: ANN001
    """A trained model ``runs/mine``, NIfTI scans ``scans/`` and one DICOM series under ``dicom/``."""
    pytest.importorskip("fire")  # the monai.bundle command line
    from udavae.data.synthetic import generate_dataset
    from udavae.engine.trainer import train
    from udavae.methods.presets import build_config

    data = tmp_path / "data"
    generate_dataset(data, n_source=3, n_target=2, size=64, slices=3, seed=4, n_val=1)
    train(build_config("noadapt", "tiny", {**tiny_overrides, "data.dataset": str(data)}), tmp_path / "runs" / "mine")
    (tmp_path / "scans").mkdir()
    for f in sorted((data / "LGE" / "images").glob("*.nii.gz")):
        shutil.copy(f, tmp_path / "scans" / f.name)
    first = nib.load(sorted((tmp_path / "scans").glob("*.nii.gz"))[0])
    data_ = np.asarray(first.dataobj, dtype=np.float32)
    write_dicom_series(data_ - data_.min(), first.affine, tmp_path / "dicom" / "pat1" / "lge", "1.2.826.0.1.7")
    return tmp_path


def _mask(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_every_command_of_the_tutorial_runs_and_keeps_its_promises(workdir: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in commands():
        if cmd.startswith("python "):
            cmd = f"{sys.executable} {cmd[len('python ') :]}"
        done = subprocess.run(cmd, shell=True, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{cmd}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    for code in blocks("python"):
        done = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]

    # the same masks from the run folder, from the zip on "the other machine" and from the MONAI bundle
    ref = workdir / "masks_run"
    subprocess.run(["udavae", "predict", "runs/mine", "scans/", str(ref)], cwd=workdir, env=env, check=True)
    scans = sorted(p.name for p in (workdir / "scans").glob("*.nii.gz"))
    assert scans and sorted(p.name for p in (workdir / "masks").glob("*.nii.gz")) == scans
    for name in scans:
        expected = _mask(ref / name)
        assert np.array_equal(_mask(workdir / "masks" / name), expected)
        bundle = list((workdir / "masks_bundle").rglob(name))
        assert len(bundle) == 1 and np.array_equal(_mask(bundle[0]), expected)
    assert (workdir / "masks" / "report.html").is_file()
    with open(workdir / "masks" / "qc.csv", newline="", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == len(scans)

    # one DICOM series -> one mask named by its UID, in the scan's grid, and its row in series.csv
    with open(workdir / "masks_dicom" / "series.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["series_uid"] for r in rows] == ["1.2.826.0.1.7"]
    first = nib.load(workdir / "scans" / scans[0])
    mask = nib.load(workdir / "masks_dicom" / rows[0]["mask"])
    assert mask.shape == first.shape and np.allclose(mask.affine, first.affine, atol=1e-4)

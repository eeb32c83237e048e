"""Issue 21, items 8 and 9: write order, leftovers of killed processes, and no empty folder after a failure.

``last.pt`` is written before ``best.pt``; a mask and its uncertainty map are written as one unit; temporary
files a killed process left are removed when ``train`` / ``predict`` start and never taken as inputs; a failed
``evaluate`` leaves no empty output folder.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from udavae import fileio
from udavae.cli import main
from udavae.engine import model_folder as mf


def test_last_checkpoint_is_written_before_best(
    trained: dict[str, Path], tmp_path: Path, tiny_train_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    written: list[str] = []
    save = mf.save_checkpoint

    def recording(path: Path, state: dict) -> None:
        written.append(path.stem)
        save(path, state)

    monkeypatch.setattr(mf, "save_checkpoint", recording)
    assert main(["train", "--dataset", str(trained["data"]), "--out", str(tmp_path / "run"), *tiny_train_args]) == 0
    assert "best" in written and written.index("last") < written.index("best")


def test_mask_and_uncertainty_map_are_one_unit(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between the two renames never leaves a new mask beside the old map of an earlier run."""
    images = sorted(trained["images"].iterdir())
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    shutil.copy(images[0], inp / "scan.nii.gz")
    predict = ["predict", str(trained["run"]), str(inp), str(out), "--device", "cpu", "--samples", "2", "--no-qc"]
    assert main(predict) == 0
    old_mask, old_map = (out / "scan.nii.gz").read_bytes(), (out / "scan_uncertainty.nii.gz").read_bytes()
    shutil.copy(images[1], inp / "scan.nii.gz")  # another scan under the same name: new mask, new map
    replace, calls = os.replace, []

    def killed_at_second_rename(src, dst) -> None:  # noqa: ANN001
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies here
        replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", killed_at_second_rename)
    assert main(predict) == 130
    monkeypatch.undo()
    mask, umap = out / "scan.nii.gz", out / "scan_uncertainty.nii.gz"
    assert mask.read_bytes() != old_mask  # the new mask is in place...
    assert not umap.exists() or umap.read_bytes() != old_map  # ...never beside the old map
    assert not [p for p in out.iterdir() if fileio.is_temporary(p.name)]


def test_train_removes_stale_temporaries(trained: dict[str, Path], tmp_path: Path, tiny_train_args: list[str]) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = [run / ".config-0123456789ab.yaml", run / "checkpoints" / ".last-0123456789ab.pt"]
    for p in stale:
        p.write_bytes(b"x" * 1000)  # what a kill -9 during the first checkpoint write leaves
    shutil.copy(trained["run"] / "model.json", run / "model.json")  # written when training starts
    assert main(["train", "--dataset", str(trained["data"]), "--out", str(run), *tiny_train_args]) == 0
    assert not any(p.exists() for p in stale)
    assert not [p for p in run.rglob(".*") if fileio.is_temporary(p.name)]


def test_predict_ignores_hidden_inputs_and_removes_old_temporaries(
    trained: dict[str, Path], tmp_path: Path, capsys
) -> None:
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    out.mkdir()
    good = sorted(trained["images"].iterdir())[0]
    shutil.copy(good, inp / "a.nii.gz")
    shutil.copy(good, inp / ".a-0123456789ab.nii.gz")  # a killed writer's temporary beside the inputs
    old = out / ".a-00000000beef.nii.gz"
    fresh = out / ".b-00000000cafe.nii.gz"  # may belong to a predict at work right now
    for p in (old, fresh):
        p.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert main(["predict", str(trained["run"]), str(inp), str(out), "--device", "cpu", "--no-qc"]) == 0
    assert "wrote 1 mask(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [fresh.name, "a.nii.gz"]


def test_failed_evaluate_leaves_no_empty_folder(
    trained: dict[str, Path], data_copy: Path, tmp_path: Path, capsys
) -> None:
    image = data_copy / "LGE" / "images" / "case003.nii.gz"
    image.write_bytes(image.read_bytes()[:100])  # truncated
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                str(trained["run"]),
                "--dataset",
                str(data_copy),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-qc",
            ]
        )
        == 2
    )
    assert "case003.nii.gz" in capsys.readouterr().err
    assert not out.exists()

"""Issue 21, item 7: a full disk, a file size limit or corrupt metadata give one line naming the file.

Before: ``OSError: [Errno 27]`` or torch's ``RuntimeError: unexpected pos`` tracebacks during predict or
checkpointing, and an ``AttributeError`` traceback for a ``model.json`` holding ``{"labels": 5}``. Files
already there stay intact.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch

from udavae.cli import main
from udavae.data.nifti import load_volume, save_like
from udavae.engine import model_folder as mf
from udavae.errors import UserError


@pytest.mark.parametrize(
    "content",
    [
        {"labels": 5},
        [],
        {},
        "just text",
        {"labels": {"codes": {"MYO": 200}}, "preprocessing": {}, "dataset": "x", "source": "C0", "target": "LGE"},
    ],
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_corrupt_model_json_is_one_line_naming_it(
    trained: dict[str, Path], run_copy: Path, tmp_path: Path, capsys, content: object, command: str
) -> None:
    (run_copy / "model.json").write_text(json.dumps(content))
    argv = (
        ["predict", str(run_copy), str(trained["images"]), str(tmp_path / "out"), "--device", "cpu"]
        if command == "predict"
        else ["evaluate", str(run_copy), "--device", "cpu"]
    )
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(run_copy / "model.json") in err and "corrupt" in err


def test_failed_checkpoint_write_names_the_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last.pt"
    mf.save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()

    def full(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 128 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(UserError, match=rf"cannot write checkpoint {path}: .*unexpected pos"):
        mf.save_checkpoint(path, {"epoch": 2})
    assert path.read_bytes() == before and os.listdir(path.parent) == ["last.pt"]


def test_disk_full_while_writing_a_mask_names_the_file(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vol = load_volume(trained["images"] / "case001.nii.gz")
    mask = tmp_path / "case001.nii.gz"
    save_like(vol.data.astype("int16") * 0, vol, mask)
    before = mask.read_bytes()

    def full(img, filename) -> None:  # noqa: ANN001
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(nib, "save", full)
    with pytest.raises(UserError, match=rf"cannot write {mask}: No space left on device"):
        save_like(vol.data.astype("int16"), vol, mask)
    assert mask.read_bytes() == before and os.listdir(tmp_path) == ["case001.nii.gz"]


def _limited(argv: list[str], limit: int) -> subprocess.CompletedProcess:
    """Run ``udavae ARGV`` with files limited to ``limit`` bytes (``ulimit -f``): writes past it fail (EFBIG)."""

    def setlimit() -> None:  # pragma: no cover - runs in the child
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = {**os.environ, "UDAVAE_NO_MALLOC_TUNING": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "udavae", *argv],
        env=env,
        preexec_fn=setlimit,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_file_size_limit_during_predict_is_one_line(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = _limited(
        [
            "predict",
            str(trained["run"]),
            str(trained["images"] / "case001.nii.gz"),
            str(out),
            "--device",
            "cpu",
            "--no-qc",
        ],
        limit=100,
    )
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(err) == 1
    assert f"cannot write {out / 'case001.nii.gz'}: File too large" in err[0]
    assert [p.name for p in out.iterdir()] == []  # no half-written mask, no temporary


def test_file_size_limit_during_checkpointing_is_one_line(
    trained: dict[str, Path], tmp_path: Path, tiny_train_args: list[str]
) -> None:
    out = tmp_path / "run"
    r = _limited(["train", "--dataset", str(trained["data"]), "--out", str(out), *tiny_train_args], limit=100_000)
    assert r.returncode == 2, r.stderr
    last = [ln for ln in r.stderr.strip().splitlines() if ln.strip()][-1]
    assert "Traceback" not in r.stderr
    assert last.startswith(f"udavae train: error: cannot write checkpoint {out / 'checkpoints' / 'last.pt'}: ")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == []

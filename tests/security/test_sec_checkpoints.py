"""Issue 21, item 1: a crafted checkpoint never runs code; it is refused with one error naming the file.

The crafted file is a real attack: its pickle holds an object whose ``__reduce__`` calls ``os.system`` (the
test first proves that an unsafe ``torch.load`` does run it). ``predict``, ``evaluate`` and ``train --resume``
must refuse it without running anything.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import torch

from udavae.cli import main
from udavae.engine.model_folder import checkpoint_path, resolve_checkpoint


class _Payload:
    """Unpickling this object runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def _plant(path: Path, marker: Path) -> None:
    """Replace the checkpoint ``path`` by a malicious one that looks like a udavae checkpoint."""
    torch.save({"method": _Payload(marker), "epoch": 1, "config": {}}, path)


def test_crafted_checkpoint_would_run_code_when_loaded_unsafely(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    _plant(tmp_path / "evil.pt", marker)
    torch.load(tmp_path / "evil.pt", weights_only=False)  # what an unsafe loader does
    assert marker.exists()


@pytest.mark.parametrize("command", ["predict", "evaluate", "train --resume"])
def test_crafted_checkpoint_runs_no_code_and_is_refused(
    trained: dict[str, Path], run_copy: Path, tmp_path: Path, tiny_train_args: list[str], capsys, command: str
) -> None:
    marker = tmp_path / "PWNED"
    if command == "train --resume":
        ckpt = checkpoint_path(run_copy, "last")
        argv = [
            "train",
            "--dataset",
            str(trained["data"]),
            "--out",
            str(run_copy),
            *tiny_train_args,
            "--epochs",
            "2",
            "--resume",
        ]
    else:
        ckpt = checkpoint_path(run_copy, resolve_checkpoint(run_copy, "selected"))
        argv = (
            ["predict", str(run_copy), str(trained["images"]), str(tmp_path / "masks"), "--device", "cpu"]
            if command == "predict"
            else ["evaluate", str(run_copy), "--device", "cpu", "--no-qc"]
        )
    _plant(ckpt, marker)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "the checkpoint's code ran"
    assert str(ckpt) in err and "could run code" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "masks").exists()

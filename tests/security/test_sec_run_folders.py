"""Issue 21, items 3 and 4: ``train`` never overwrites a folder that is not its own, and one folder has one writer.

``train --out`` refuses a non-empty folder that is not a udavae model folder; a model folder in use by another
process (an atomic ``flock``) is refused, and a process killed with ``kill -9`` leaves no stale lock. The sweep
lock is the same atomic lock.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from udavae.cli import main
from udavae.engine.model_folder import check_new_run_folder
from udavae.engine.sweep import sweep_lock
from udavae.errors import UserError
from udavae.fileio import FolderLock

_HOLD = (
    "import sys, time\nfrom udavae.fileio import FolderLock\nFolderLock(sys.argv[1]).acquire()\n"
    "print('locked', flush=True)\ntime.sleep(120)\n"
)


def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that takes the folder's lock and keeps it until killed."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_refuses_a_users_folder_and_leaves_it_intact(
    trained: dict[str, Path], tmp_path: Path, tiny_train_args: list[str], capsys
) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    for name, text in (("config.yaml", "my: settings\n"), ("log.csv", "a,b\n1,2\n"), ("model.json", '{"mine": 1}')):
        (proj / name).write_text(text)
    before = _snapshot(proj)
    assert main(["train", "--dataset", str(trained["data"]), "--out", str(proj), *tiny_train_args]) == 2
    err = capsys.readouterr().err
    assert str(proj) in err and "not a udavae model folder" in err
    assert _snapshot(proj) == before


def test_new_run_folder_rules(trained: dict[str, Path], tmp_path: Path) -> None:
    check_new_run_folder(tmp_path / "new")  # not there yet
    (tmp_path / "empty").mkdir()
    check_new_run_folder(tmp_path / "empty")
    sweep_run = tmp_path / "sweep_run"
    sweep_run.mkdir()
    (sweep_run / "sweep_run.json").write_text("{}")  # what a sweep writes before training
    (sweep_run / ".config-0123456789ab.yaml").write_text("")  # a killed run's temporaries
    (sweep_run / "checkpoints").mkdir()
    (sweep_run / "checkpoints" / ".last-0123456789ab.pt").write_text("")
    check_new_run_folder(sweep_run)
    check_new_run_folder(trained["run"])  # a udavae model folder (train then asks for --resume)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"notes\.txt"):
        check_new_run_folder(tmp_path / "other")


def test_train_refuses_a_folder_in_use_and_a_killed_holder_leaves_no_lock(
    trained: dict[str, Path], tmp_path: Path, tiny_train_args: list[str], capsys
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    holder = _hold_lock(out)
    try:
        assert main(["train", "--dataset", str(trained["data"]), "--out", str(out), *tiny_train_args]) == 2
        err = capsys.readouterr().err
        assert f"in use by process {holder.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written by the refused run
    finally:
        _kill(holder)
    # the kernel released the dead holder's lock: training now runs, and removes the lock file when done
    assert main(["train", "--dataset", str(trained["data"]), "--out", str(out), *tiny_train_args]) == 0
    assert (out / "checkpoints" / "last.pt").is_file() and not (out / ".lock").exists()


def test_lock_is_exclusive_even_within_one_process(tmp_path: Path) -> None:
    first = FolderLock(tmp_path, "model folder").acquire()
    with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
        FolderLock(tmp_path, "model folder").acquire()
    first.release()
    with FolderLock(tmp_path):
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_sweep_lock_is_atomic_and_not_left_by_a_killed_sweep(tmp_path: Path) -> None:
    # a second sweep, even of the same process
    with sweep_lock(tmp_path), pytest.raises(UserError, match="sweep .* is in use"), sweep_lock(tmp_path):
        pass
    holder = _hold_lock(tmp_path)
    try:
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"), sweep_lock(tmp_path):
            pass
    finally:
        _kill(holder)
    assert (tmp_path / ".lock").exists()  # the killed sweep's file is still there, but not its lock
    with sweep_lock(tmp_path):
        pass
    assert not (tmp_path / ".lock").exists()

"""Issue 21, item 6: a sweep checks its dataset, domains, evaluated splits and presets before the first run.

A typo'd ``--splits tset`` or a missing dataset used to surface only at each run's evaluation, after training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from udavae.cli import main
from udavae.engine.sweep import open_sweep
from udavae.engine.sweep_plan import build_plan

TINY = [
    "--profile",
    "tiny",
    "--presets",
    "noadapt",
    "--seeds",
    "0",
    "--device",
    "cpu",
    "--epochs",
    "1",
    "--iters-per-epoch",
    "1",
    "--batch-size",
    "2",
    "model.base_width=4",
    "data.crop=48",
]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--splits", "tset"], "evaluated split(s) ['tset'] are not splits of the target domain 'LGE'"),
        (["--splits", "val,test,source-holdout"], None),  # valid: refused only by the missing-dataset case below
        (["--target", "NOPE"], "the target domain 'NOPE' is not in the dataset"),
        (["--source", "NOPE"], "the source domain 'NOPE' is not in the dataset"),
    ],
)
def test_sweep_checks_splits_and_domains_before_any_run(
    trained: dict[str, Path], tmp_path: Path, capsys, args: list[str], message: str | None
) -> None:
    folder = tmp_path / "sweep"
    if message is None:  # the same grid on a dataset that does not exist
        argv = ["sweep", "--out", str(folder), "--dataset", str(tmp_path / "nodata"), *TINY, *args]
        message = "nodata not found"
    else:
        argv = ["sweep", "--out", str(folder), "--dataset", str(trained["data"]), *TINY, *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not folder.exists()  # nothing created, nothing trained


def test_sweep_resume_checks_the_stored_plan_before_any_run(trained: dict[str, Path], tmp_path: Path, capsys) -> None:
    data = Path(shutil.copytree(trained["data"], tmp_path / "data"))
    folder = tmp_path / "sweep"
    open_sweep(folder, build_plan({"dataset": str(data), "profile": "tiny", "presets": "noadapt"}), resume=False)
    spec = json.loads((data / "dataset.json").read_text())
    del spec["splits"]["LGE"]["test"]  # the dataset changed since the sweep was planned
    (data / "dataset.json").write_text(json.dumps(spec))
    capsys.readouterr()
    assert main(["sweep", "--out", str(folder), "--resume", "--device", "cpu"]) == 2
    assert "['test'] are not splits" in capsys.readouterr().err
    assert not (folder / "runs").exists() and not (folder / ".lock").exists()

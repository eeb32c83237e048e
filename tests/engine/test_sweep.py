"""``udavae sweep``: grid expansion and validation, and a real sweep that is killed, resumed and has a failing run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from udavae.data.synthetic import generate_dataset
from udavae.engine.sweep import Sweep, open_sweep
from udavae.engine.sweep_plan import build_plan, load_grid_file
from udavae.errors import UserError

TINY = ["model.base_width=4", "model.recon_width=8", "data.crop=48", "data.jitter=8"]


def _spec(tmp_path: Path, **kw) -> dict:
    return {"dataset": str(tmp_path), "profile": "tiny", **kw}


def test_grid_expands_seed_major_with_groups(tmp_path: Path) -> None:
    plan = build_plan(
        _spec(
            tmp_path,
            presets="noadapt,udavae++",
            seeds=[0, 1],
            overrides=TINY,
            variants={"": {}, "aug": {"augment.spatial": True}},
        )
    )
    assert [r.name for r in plan.runs] == [
        "noadapt_seed0",
        "noadapt+aug_seed0",
        "udavae++_seed0",
        "udavae+++aug_seed0",
        "noadapt_seed1",
        "noadapt+aug_seed1",
        "udavae++_seed1",
        "udavae+++aug_seed1",
    ]
    r = plan.run("udavae+++aug_seed1")
    assert (r.group, r.preset, r.variant, r.seed) == ("udavae++/aug", "udavae++", "aug", 1)
    assert r.overrides == (*TINY, "augment.spatial=true")
    assert plan.run("noadapt_seed0").overrides == tuple(TINY)
    # a variant key that one of the presets does not have is refused before anything runs
    with pytest.raises(UserError, match="method.mi_prior is not an option of method 'noadapt'"):
        build_plan(
            _spec(
                tmp_path,
                presets="noadapt,udavae++",
                seeds=[0],
                overrides=TINY,
                variants={"no-prior": {"method.mi_prior": False}},
            )
        )


def test_grid_file_with_several_grids(tmp_path: Path) -> None:
    f = tmp_path / "grid.yaml"
    f.write_text(
        "dataset: data\nprofile: tiny\nsplits: [test]\noverrides: {optim.epochs: 1}\n"
        "grids:\n  - presets: [noadapt, cfdnet]\n    seeds: [0, 1, 2]\n"
        "  - presets: [abl-base]\n    seeds: [0]\n"
    )
    plan = build_plan(load_grid_file(f), f.parent)
    assert len(plan.runs) == 7 and plan.runs[-1].name == "abl-base_seed0"
    assert plan.dataset == str((tmp_path / "data").resolve()) and plan.splits == ("test",)
    assert all(r.overrides == ("optim.epochs=1",) for r in plan.runs)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"presets": "noadapt,nosuch"}, "unknown preset(s) ['nosuch']"),
        ({"presets": "noadapt", "seeds": "0,0"}, "repeated seeds"),
        ({"presets": "noadapt", "seeds": "zero"}, "not an integer"),
        ({"presets": "noadapt", "overrides": ["optim.epoch=3"]}, "run noadapt_seed0"),
        ({"presets": "noadapt", "overrides": ["optim.epochs=three"]}, "run noadapt_seed0"),
        ({"presets": "noadapt", "variants": {"a b": {}}}, "variant 'a b'"),
        ({"presets": "noadapt", "grids": []}, "either 'grids' or top-level"),
        ({"presets": "noadapt", "epochs": 3}, "unknown key(s) ['epochs']"),
    ],
)
def test_bad_grids_fail_before_training(tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(UserError) as err:
        build_plan(_spec(tmp_path, **kw))
    assert message in str(err.value)


def test_open_sweep_refuses_clobbering_and_dropping_runs(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    plan = build_plan(_spec(tmp_path, presets="noadapt", seeds="0,1"))
    open_sweep(folder, plan, resume=False)
    with pytest.raises(UserError, match="pass --resume"):
        open_sweep(folder, plan, resume=False)
    assert open_sweep(folder, None, resume=True) == plan  # the stored plan, reloaded
    fewer = build_plan(_spec(tmp_path, presets="noadapt", seeds="0"))
    with pytest.raises(UserError, match="noadapt_seed1 would be dropped"):
        open_sweep(folder, fewer, resume=True)
    more = build_plan(_spec(tmp_path, presets="noadapt", seeds="0,1,2"))
    assert len(open_sweep(folder, more, resume=True).runs) == 3
    assert len(json.loads((folder / "sweep.json").read_text())["runs"]) == 3
    with pytest.raises(UserError, match="no sweep"):
        open_sweep(tmp_path / "other", None, resume=True)


def test_gpu_slots_and_child_environment(tmp_path: Path) -> None:
    plan = build_plan(_spec(tmp_path, presets="noadapt"))
    sweep = Sweep(tmp_path / "s", plan, "cuda", gpus=[0, 3], jobs=2)
    assert sweep.slots == ["cuda:0", "cuda:0", "cuda:3", "cuda:3"]
    assert sweep._child_env("cuda:3")["CUDA_VISIBLE_DEVICES"] == "3"
    train = sweep.steps(plan.runs[0], "cuda:3")[0][1]
    assert train[train.index("--device") + 1] == "cuda"
    with pytest.raises(UserError, match="--jobs"):
        Sweep(tmp_path / "s", plan, "cpu", jobs=0)


def _sweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "udavae", "sweep", *args]


def _status(folder: Path) -> dict:
    f = folder / "status.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except json.JSONDecodeError:  # pragma: no cover - written atomically; never half-read
        return {}


@pytest.mark.slow
def test_killed_sweep_resumes_skips_finished_and_reports_failure(tmp_path: Path) -> None:
    """2 presets x 2 seeds plus a run that fails at data loading; the sweep is SIGKILLed after its first
    run, then resumed: the finished run is not touched, the rest finish, the failure is reported."""
    data = tmp_path / "data"
    generate_dataset(data, n_source=3, n_target=4, size=48, slices=3, seed=2, n_val=1)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"dataset: {data}\nprofile: tiny\nsplits: [test]\n"
        "overrides: [optim.epochs=1, optim.iters_per_epoch=2, optim.batch_size=2, " + ", ".join(TINY) + "]\n"
        "grids:\n  - presets: [noadapt, udavae++]\n    seeds: [0, 1]\n"
        "  - presets: [noadapt]\n    seeds: [5]\n    variants: {broken: {data.val_split: nosuch}}\n"
    )
    folder = tmp_path / "sweep"
    env = {**os.environ, "UDAVAE_NO_MALLOC_TUNING": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _sweep("--out", str(folder), "--grid", str(grid), "--device", "cpu"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (
        _status(folder).get("noadapt_seed0", {}).get("state") == "done"
        and _status(folder).get("udavae++_seed0", {}).get("state") == "running"
    ):
        assert proc.poll() is None and time.time() < deadline, "first run did not finish"
        time.sleep(0.2)
    time.sleep(1.0)  # the second run's training is under way
    proc.send_signal(signal.SIGKILL)  # no cleanup: the children die by PR_SET_PDEATHSIG
    proc.wait()
    first = folder / "runs" / "noadapt_seed0" / "checkpoints" / "last.pt"
    stamp = first.stat().st_mtime_ns
    assert _status(folder)["udavae++_seed0"]["state"] == "running"  # as the killed sweep left it

    r = subprocess.run(
        _sweep("--out", str(folder), "--grid", str(grid), "--device", "cpu"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 2 and "pass --resume" in r.stderr
    r = subprocess.run(
        _sweep("--out", str(folder), "--resume", "--device", "cpu"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "1 of 5 runs already done: skipped" in out
    assert first.stat().st_mtime_ns == stamp  # the finished run was not trained again
    status = _status(folder)
    assert {n: s["state"] for n, s in status.items()} == {
        "noadapt_seed0": "done",
        "udavae++_seed0": "done",
        "noadapt_seed1": "done",
        "udavae++_seed1": "done",
        "noadapt+broken_seed5": "failed",
    }
    assert status["noadapt+broken_seed5"]["returncode"] == 2 and "nosuch" in status["noadapt+broken_seed5"]["error"]
    assert "run noadapt+broken_seed5 failed" in r.stderr and "nosuch" in r.stderr
    for name in ("noadapt_seed0", "udavae++_seed0", "noadapt_seed1", "udavae++_seed1"):
        run = folder / "runs" / name
        summary = json.loads((run / "eval" / "LGE_test_best" / "summary.json").read_text())
        assert summary["split"] == "test" and summary["seed"] == int(name[-1])
        assert json.loads((run / "sweep_run.json").read_text())["group"] == name.rsplit("_", 1)[0]
    assert not (folder / ".lock").exists()

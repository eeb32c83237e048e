"""``udavae sweep --launcher slurm``: what is handed to ``sbatch`` (a stub on PATH records it), ``--status`` and
``--resume`` against the scheduler's word (a stub ``sacct``), and real jobs through submitit's local executor:
a grid killed half-way and resumed trains each run exactly once, and a preempted job is requeued and resumes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from udavae.cli import main
from udavae.data.synthetic import generate_dataset
from udavae.engine.launchers import parse_extra, parse_time
from udavae.errors import UserError

submitit = pytest.importorskip("submitit")

TINY = ["model.base_width=4", "model.recon_width=8", "data.crop=48", "data.jitter=8", "optim.batch_size=2"]

_SBATCH = """#!/bin/sh
# records the script it is given, answers as sbatch does (job ids from 123 on)
n=$(ls "$STUB_DIR"/sbatch_*.sh 2>/dev/null | wc -l)
cp "$1" "$STUB_DIR/sbatch_$n.sh"
echo "Submitted batch job $((123 + n))"
"""
_SACCT = """#!/bin/sh
# answers from the file the test writes: lines JobID|State
cat "$STUB_DIR/sacct.txt" 2>/dev/null
"""


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, n_source=3, n_target=4, size=48, slices=3, seed=2, n_val=1)
    return root


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``sbatch``, ``srun`` and ``sacct`` stubs first on PATH; returns the folder they record into."""
    stub = tmp_path / "stub"
    stub.mkdir()
    for name, text in (("sbatch", _SBATCH), ("sacct", _SACCT), ("srun", "#!/bin/sh\nexit 0\n")):
        (stub / name).write_text(text)
        (stub / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{stub}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_DIR", str(stub))
    return stub


def test_time_and_extra_options() -> None:
    assert [parse_time(t) for t in ("90", "90:30", "1:30:00", "2-00", "1-02:03", "0-00:00:30")] == [
        90,
        91,
        90,
        2880,
        1563,
        1,
    ]
    with pytest.raises(UserError, match="--time"):
        parse_time("1h")
    assert parse_extra(["account=lab", "--qos=high", "exclusive"]) == {
        "account": "lab",
        "qos": "high",
        "exclusive": True,
    }
    with pytest.raises(UserError, match="--slurm-extra"):
        parse_extra(["=x"])


def test_slurm_jobs_scripts_status_and_resume(
    tmp_path: Path, dataset: Path, fake_slurm: Path, capsys: pytest.CaptureFixture
) -> None:
    sweep = tmp_path / "sweep"
    args = ["sweep", "--out", str(sweep), "--dataset", str(dataset), "--profile", "tiny", "--presets", "noadapt"]
    args += ["--seeds", "0,1", "--splits", "test", "--launcher", "slurm", "--slurm-partition", "gpu"]
    args += ["--gpus-per-run", "2", "--cpus-per-run", "8", "--time", "2:30:00", "--slurm-extra", "account=lab"]
    args += ["--slurm-extra", "qos=high", *TINY]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "noadapt_seed0: job 123" in out and "noadapt_seed1: job 124" in out

    scripts = sorted(fake_slurm.glob("sbatch_*.sh"))
    assert len(scripts) == 2
    text = scripts[0].read_text()
    jobs = sweep.resolve() / "slurm" / "%j"
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --time=150",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --job-name=udavae-noadapt_seed0",
        f"#SBATCH --output={jobs}/%j_0_log.out",
        f"#SBATCH --error={jobs}/%j_0_log.err",
        "#SBATCH --signal=USR2@90",  # submitit's warning before the time limit: checkpoint and requeue
    ):
        assert line in text.splitlines(), line
    command = text.strip().splitlines()[-1]
    assert command.startswith(f"srun --unbuffered --output {jobs}/%j_%t_log.out")
    assert command.endswith(f"{sys.executable} -u -m submitit.core._submit {jobs}")
    assert "udavae-noadapt_seed1" in scripts[1].read_text()

    # the job submitit will run: the run's udavae commands, training under torchrun on the run's 2 GPUs
    job = submitit.core.utils.DelayedSubmission.load(sweep / "slurm" / "123" / "123_submitted.pkl").function
    (train_step, train), (eval_step, evaluate) = job.commands()
    assert (train_step, eval_step) == ("train", "evaluate-test")
    assert train[:9] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "udavae",
        "train",
    ]
    assert train[train.index("--device") + 1] == "cuda" and train[train.index("--out") + 1].endswith("noadapt_seed0")
    assert evaluate[2:5] == ["udavae", "evaluate", str(sweep / "runs" / "noadapt_seed0")]
    status = json.loads((sweep / "status.json").read_text())
    assert {n: (s["state"], s["job_id"], s["launcher"]) for n, s in status.items()} == {
        "noadapt_seed0": ("pending", "123", "slurm"),
        "noadapt_seed1": ("pending", "124", "slurm"),
    }

    # the scheduler says job 123 runs and 124 timed out; job 123 recorded its progress
    (fake_slurm / "sacct.txt").write_text("123|RUNNING\n123.batch|RUNNING\n124|TIMEOUT\n")
    running = {**status["noadapt_seed0"], "state": "running", "steps_done": []}
    (sweep / "jobs").mkdir()
    (sweep / "logs").mkdir()
    (sweep / "jobs" / "noadapt_seed0.json").write_text(json.dumps(running))
    (sweep / "logs" / "noadapt_seed0.log").write_text("$ udavae train ...\nepoch 1/2: loss 0.9\n")
    assert main(["sweep", "--out", str(sweep), "--status"]) == 0
    out = capsys.readouterr().out
    row0 = next(line for line in out.splitlines() if line.startswith("noadapt_seed0"))
    row1 = next(line for line in out.splitlines() if line.startswith("noadapt_seed1"))
    assert "running" in row0 and "123 (RUNNING)" in row0 and "epoch 1/2: loss 0.9" in row0
    assert "interrupted" in row1 and "124 (TIMEOUT)" in row1

    # a local run of the sweep is refused while a job may still run it
    assert main(["sweep", "--out", str(sweep), "--resume", "--device", "cpu"]) == 2
    assert "may still run: noadapt_seed0 (job 123)" in capsys.readouterr().err

    # --resume submits only the run whose job ended unfinished
    assert main(["sweep", "--out", str(sweep), "--resume", "--launcher", "slurm", "--gpus-per-run", "1"]) == 0
    out = capsys.readouterr().out
    assert "noadapt_seed0: job 123 is running: left to it" in out and "noadapt_seed1: job 125" in out
    assert len(list(fake_slurm.glob("sbatch_*.sh"))) == 3
    status = json.loads((sweep / "status.json").read_text())
    assert status["noadapt_seed1"]["job_id"] == "125" and status["noadapt_seed0"]["job_id"] == "123"

    # a failed run shows the last line of its log
    failed = {**running, "job_id": "125", "state": "failed", "returncode": 1, "error": "train exited with status 1"}
    (sweep / "jobs" / "noadapt_seed1.json").write_text(json.dumps(failed))
    (sweep / "logs" / "noadapt_seed1.log").write_text("$ udavae train ...\nValueError: boom\n")
    (fake_slurm / "sacct.txt").write_text("123|COMPLETED\n125|FAILED\n")
    assert main(["sweep", "--out", str(sweep), "--status"]) == 0
    row1 = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("noadapt_seed1"))
    assert "failed" in row1 and "ValueError: boom" in row1


def test_status_of_a_local_sweep(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture) -> None:
    """A run the local launcher left ``running`` is running while a sweep process holds the folder, else it was
    interrupted; a failed run shows its log's last line."""
    from udavae.fileio import FolderLock

    sweep = tmp_path / "sweep"
    args = ["sweep", "--out", str(sweep), "--dataset", str(dataset), "--presets", "noadapt", "--seeds", "0,1,2"]
    assert main([*args, "--dry-run"]) == 0 and not sweep.exists()
    capsys.readouterr()
    from udavae.engine.sweep import open_sweep
    from udavae.engine.sweep_plan import build_plan

    open_sweep(sweep, build_plan({"dataset": str(dataset), "presets": "noadapt", "seeds": "0,1,2"}), resume=False)
    (sweep / "logs").mkdir()
    (sweep / "logs" / "noadapt_seed1.log").write_text("$ python -m udavae train ...\nepoch 3/30: loss 0.5\n")
    (sweep / "logs" / "noadapt_seed2.log").write_text("$ python -m udavae train ...\nudavae train: error: boom\n")
    states = {
        "noadapt_seed0": {"state": "done", "steps_done": ["train", "evaluate-val", "evaluate-test"], "elapsed_s": 65},
        "noadapt_seed1": {"state": "running", "steps_done": [], "launcher": "local"},
        "noadapt_seed2": {"state": "failed", "steps_done": [], "returncode": 2},
    }
    (sweep / "status.json").write_text(json.dumps(states))
    assert main(["sweep", "--out", str(sweep), "--status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("3 runs: 1 finished, 1 interrupted, 1 failed")
    assert "1m05s" in lines[2] and "finished" in lines[2]
    assert "interrupted" in lines[3] and "epoch 3/30: loss 0.5" in lines[3]
    assert "failed" in lines[4] and "udavae train: error: boom" in lines[4]
    with FolderLock(sweep, "sweep"):  # a sweep is running it
        assert main(["sweep", "--out", str(sweep), "--status"]) == 0
    assert "running" in capsys.readouterr().out.splitlines()[3]
    assert main(["sweep", "--out", str(tmp_path / "none"), "--status"]) == 2


def test_slurm_launcher_needs_a_cluster(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["sweep", "--out", str(tmp_path / "s"), "--dataset", str(dataset), "--presets", "noadapt"]
    assert main([*args, "--launcher", "slurm", "--device", "cpu"]) == 2  # no srun on this machine
    assert "no SLURM on this machine" in capsys.readouterr().err
    assert main([*args, "--launcher", "slurm", "--gpus", "0"]) == 2
    assert "--gpus-per-run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ local executor

#: Drives submitit's local executor through the launcher: ``first`` submits the plan's first run and waits for
#: it, then the run named by argv[3] (the test kills it half-way); ``resume`` submits what is unfinished.
_DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from udavae.engine.launchers import JobResources, SubmititLauncher
    from udavae.engine.sweep import Sweep, open_sweep
    from udavae.engine.sweep_plan import build_plan, load_grid_file

    folder, grid, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    plan = open_sweep(folder, build_plan(load_grid_file(grid), grid.parent), resume=mode != "first")
    sweep = Sweep(folder, plan, "cpu")
    sweep.load_status()
    launcher = SubmititLauncher(sweep, JobResources(time_min=30), cluster="local")
    if mode == "first":
        batches = [[plan.runs[0]], [plan.run(sys.argv[4])]]
    else:
        todo, left = launcher.to_submit()
        print("left:", left, flush=True)
        batches = [todo]
    for runs in batches:
        print("submitted:", launcher.submit(runs), flush=True)
        launcher.wait(poll_s=0.1)
    print({n: s.state for n, s in sweep.status.items()}, flush=True)
    """
)


def _driver(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "UDAVAE_NO_MALLOC_TUNING": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _DRIVER, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the test kills the driver and every job at once
    )


def _epochs(run: Path) -> list[int]:
    f = run / "log.jsonl"
    return [json.loads(x)["epoch"] for x in f.read_text().splitlines()] if f.is_file() else []


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:  # noqa: ANN001
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"driver ended before {what}: {proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _train_commands(log: Path) -> list[str]:
    return [ln for ln in log.read_text().splitlines() if ln.startswith("$ ") and " udavae train " in ln]


def _job_tasks(controller: str) -> list[int]:
    """The processes a local job's controller started (the job's task): children of its pid."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] == controller:
                pids.append(int(stat.parent.name))
    return pids


def test_local_executor_grid_killed_half_way_then_preempted_trains_each_epoch_once(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    """A two-run grid: the first run finishes, everything is SIGKILLed half-way through the second run's training;
    resumed, that run is also preempted once (SIGUSR2, as SLURM warns a job) and requeued. Each epoch is trained
    exactly once, the finished run is not touched, and ``compare`` reads the sweep."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"dataset: {dataset}\nprofile: tiny\nsplits: [test]\noverrides: [{', '.join(TINY)}]\n"
        "grids:\n  - presets: [noadapt]\n    seeds: [0]\n    overrides: [optim.epochs=1, optim.iters_per_epoch=1]\n"
        "  - presets: [noadapt]\n    seeds: [1]\n    overrides: [optim.epochs=4, optim.iters_per_epoch=6]\n"
    )
    sweep, runs, logs = tmp_path / "sweep", tmp_path / "sweep" / "runs", tmp_path / "sweep" / "logs"
    second = runs / "noadapt_seed1"
    proc = _driver(tmp_path, str(sweep), str(grid), "first", "noadapt_seed1")
    try:
        _wait_for(lambda: len(_epochs(second)) >= 1, proc, "the second run's first epoch")
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, the job processes and their udavae children
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = len(_epochs(second))
    assert 1 <= killed_at <= 2  # half-way through its training
    status = json.loads((sweep / "status.json").read_text())
    assert status["noadapt_seed0"]["state"] == "done" and status["noadapt_seed1"]["launcher"] == "submitit-local"
    first_done = (runs / "noadapt_seed0" / "checkpoints" / "last.pt").stat().st_mtime_ns

    proc = _driver(tmp_path, str(sweep), str(grid), "resume")
    try:
        _wait_for(lambda: len(_epochs(second)) > killed_at, proc, "an epoch of the resumed run")
        controller = json.loads((sweep / "status.json").read_text())["noadapt_seed1"]["job_id"]
        for pid in _job_tasks(controller):
            os.kill(pid, signal.SIGUSR2)  # preemption: submitit checkpoints the job and requeues it
        out, _ = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert "{'noadapt_seed0': 'done', 'noadapt_seed1': 'done'}" in out, out[-3000:]
    assert (runs / "noadapt_seed0" / "checkpoints" / "last.pt").stat().st_mtime_ns == first_done
    assert len(_train_commands(logs / "noadapt_seed0.log")) == 1 and _epochs(runs / "noadapt_seed0") == [1]
    # the second run: trained fresh once, then continued from its checkpoint after the kill and after the requeue
    trains = _train_commands(logs / "noadapt_seed1.log")
    assert len(trains) == 3 and "--resume" not in trains[0] and all(t.endswith("--resume") for t in trains[1:])
    lines = (logs / "noadapt_seed1.log").read_text().splitlines()
    assert [ln.split(":")[0] for ln in lines if re.match(r"epoch \d+/4:", ln)] == [f"epoch {e}/4" for e in range(1, 5)]
    assert sum(ln.startswith("resuming ") and "after epoch" in ln for ln in lines) == 2
    assert _epochs(second) == [1, 2, 3, 4]
    job = json.loads((sweep / "jobs" / "noadapt_seed1.json").read_text())
    assert (job["state"], job["steps_done"], job["job_id"]) == ("done", ["train", "evaluate-test"], controller)
    for name in ("noadapt_seed0", "noadapt_seed1"):
        assert (runs / name / "eval" / "LGE_test_best" / "summary.json").is_file()
        assert json.loads((runs / name / "sweep_run.json").read_text())["group"] == "noadapt"
    capsys.readouterr()
    assert main(["sweep", "--out", str(sweep), "--status"]) == 0
    out = capsys.readouterr().out
    assert "2 runs: 2 finished" in out
    assert f"noadapt_seed1  finished  submitit-local  {controller}" in out
    assert main(["compare", str(sweep), "--splits", "test", "--out", str(tmp_path / "cmp")]) == 0

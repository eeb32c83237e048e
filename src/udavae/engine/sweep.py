"""Run a sweep: train and evaluate every run of a :class:`~udavae.engine.sweep_plan.SweepPlan`, resumably.

Each run is a chain of steps (``train``, then ``evaluate`` on each split), each a ``udavae`` subprocess writing to
``SWEEP/logs/<run>.log``. Subprocesses keep the runs apart: a run that fails (bad data, diverged loss, out of
memory) is reported and the others go on, and several runs can share a GPU (one paper-size run leaves an H200
mostly idle) or spread over GPUs through ``CUDA_VISIBLE_DEVICES``. The scheduler is one thread polling its
children, so a sweep killed by a signal stops its children too (on Linux they also get SIGTERM if the sweep
dies without cleaning up), and ``SWEEP/status.json`` always says which steps of which runs are done:
``--resume`` skips finished runs and steps and continues an interrupted training from its last checkpoint.

This module is the ``local`` launcher; :mod:`udavae.engine.launchers` submits the same steps as SLURM jobs, each
job recording its run's progress in ``SWEEP/jobs/<run>.json`` (merged into the status by :meth:`Sweep.load_status`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from udavae.engine.sweep_plan import PLAN_FILE, RunSpec, SweepPlan
from udavae.errors import UserError
from udavae.fileio import LOCK_FILE, FolderLock, read_json, write_json
from udavae.layout import checkpoint_file, eval_folder

STATUS_FILE = "status.json"
RUN_INFO_FILE = "sweep_run.json"
JOBS_DIR = "jobs"
_LOCK_FILE = LOCK_FILE
_POLL_S = 0.5


@dataclass
class RunStatus:
    """Progress of one run, kept in ``status.json``.

    Attributes:
        state: ``pending``, ``running``, ``done``, ``failed`` or ``interrupted`` (a sweep stopped mid-run);
            ``pending`` with a ``job_id``: submitted, waiting in the scheduler's queue.
        steps_done: finished steps (``train``, ``evaluate-val`` ...), skipped on ``--resume``.
        elapsed_s: wall time spent on the run, over every sweep invocation.
        error: the failed step and the last lines of its log.
        job_id: the scheduler's job running the run (empty under the ``local`` launcher).
        launcher: ``local``, ``slurm`` or ``submitit-local`` (the launcher that last started the run).
    """

    state: str = "pending"
    steps_done: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    returncode: int | None = None
    error: str = ""
    slot: str = ""
    job_id: str = ""
    launcher: str = ""


@dataclass
class _Active:
    """A run whose current step is executing."""

    spec: RunSpec
    steps: list[tuple[str, list[str]]]
    proc: subprocess.Popen
    log: Any
    slot: str
    started: float
    step_started: float
    full_run: bool = False


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGTERM this child when the sweep process dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _fmt_time(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _log_tail(path: Path, n: int = 4) -> str:
    """The last ``n`` non-empty lines of a log (progress-bar carriage returns folded)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.split("\r")[-1].strip() for ln in text.splitlines()]
    return " | ".join([ln for ln in lines if ln][-n:])


class Sweep:
    """Schedules the runs of a plan over execution slots and records their progress.

    Args:
        folder: the sweep folder (``sweep.json``, ``status.json``, ``runs/``, ``logs/``).
        plan: what to run.
        device: ``cpu`` or ``cuda``, passed to every ``udavae`` subprocess.
        gpus: GPU indices to spread runs over (``CUDA_VISIBLE_DEVICES`` of each child); empty on the CPU.
        jobs: runs at once per GPU (or on the CPU).
        python: interpreter of the subprocesses (default: this one).
    """

    def __init__(
        self,
        folder: Path,
        plan: SweepPlan,
        device: str = "cpu",
        gpus: list[int] | None = None,
        jobs: int = 1,
        python: str = sys.executable,
    ) -> None:
        if jobs < 1:
            raise UserError("--jobs must be >= 1")
        self.folder, self.plan, self.device, self.python = Path(folder), plan, device, python
        self.slots = [f"cuda:{g}" for g in (gpus or []) for _ in range(jobs)] or [device] * jobs
        self.status: dict[str, RunStatus] = {r.name: RunStatus() for r in plan.runs}
        self._active: dict[str, _Active] = {}
        self._durations: list[float] = []

    # ----------------------------------------------------------------- paths and files
    def run_dir(self, spec: RunSpec) -> Path:
        return self.folder / "runs" / spec.name

    def log_path(self, spec: RunSpec) -> Path:
        return self.folder / "logs" / f"{spec.name}.log"

    def job_file(self, name: str) -> Path:
        """``SWEEP/jobs/<run>.json``: the progress a scheduler's job records for its run."""
        return self.folder / JOBS_DIR / f"{name}.json"

    def load_status(self, running: bool = False) -> None:
        """Read ``status.json`` and the job files of submitted runs.

        A run left ``running`` by a killed local sweep becomes ``interrupted`` (unless ``running``: another process
        is driving the sweep now); a submitted run takes the state its job recorded (when the job file is of the
        job submitted last), which the launcher checks against the scheduler.
        """
        path = self.folder / STATUS_FILE
        if not path.is_file():
            return
        for name, d in read_json(path, "sweep status").items():
            if name in self.status:
                st = _run_status(d)
                if st.job_id and self.job_file(name).is_file():
                    with contextlib.suppress(UserError):
                        job = _run_status(read_json(self.job_file(name), "sweep job status"))
                        st = job if job.job_id == st.job_id else st
                elif st.state == "running" and not running:
                    st.state = "interrupted"
                self.status[name] = st

    def save_status(self) -> None:
        write_json(self.folder / STATUS_FILE, {k: asdict(v) for k, v in self.status.items()})

    # ----------------------------------------------------------------- steps
    def steps(self, spec: RunSpec, slot: str) -> list[tuple[str, list[str]]]:
        """The ``udavae`` commands of a run not done yet, as (step name, argv)."""
        p, run = self.plan, self.run_dir(spec)
        device = "cuda" if slot.startswith("cuda") else slot
        out: list[tuple[str, list[str]]] = []
        done = set(self.status[spec.name].steps_done)
        if "train" not in done:
            argv = [
                self.python,
                "-m",
                "udavae",
                "train",
                "--dataset",
                p.dataset,
                "--source",
                p.source,
                "--target",
                p.target,
                "--preset",
                spec.preset,
                "--profile",
                p.profile,
                "--seed",
                str(spec.seed),
                "--out",
                str(run),
                "--device",
                device,
                *spec.overrides,
            ]
            if checkpoint_file(run, "last").is_file():
                argv.append("--resume")
            out.append(("train", argv))
        for split in p.splits:
            if f"evaluate-{split}" not in done:
                out.append(
                    (
                        f"evaluate-{split}",
                        [self.python, "-m", "udavae", "evaluate", str(run), "--split", split, "--device", device],
                    )
                )
        return out

    def _child_env(self, slot: str) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if slot.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"] = slot.split(":", 1)[1]
        elif len(self.slots) > 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(self.slots)))
        return env

    def _start_step(self, act: _Active | None, spec: RunSpec, slot: str) -> _Active | None:
        """Start the next step of ``spec`` (None when it has none left)."""
        steps = act.steps if act else self.steps(spec, slot)
        if not steps:
            return None
        name, argv = steps[0]
        log = act.log if act else open(self.log_path(spec), "a", encoding="utf-8")  # noqa: SIM115
        log.write(f"\n$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self._child_env(slot),
            preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
        )
        now = time.time()
        if act:
            act.proc, act.step_started = proc, now
            return act
        fresh = steps[0][0] == "train" and "--resume" not in steps[0][1]
        return _Active(spec, steps, proc, log, slot, now, now, fresh)

    # ----------------------------------------------------------------- the loop
    def pending(self) -> list[RunSpec]:
        return [r for r in self.plan.runs if self.status[r.name].state != "done" and r.name not in self._active]

    def execute(self, retry_failed: bool = True) -> dict[str, RunStatus]:
        """Run every run not done yet; return the final status of all runs.

        Args:
            retry_failed: also retry runs that failed in an earlier invocation.
        """
        (self.folder / "logs").mkdir(parents=True, exist_ok=True)
        todo = [r for r in self.pending() if retry_failed or self.status[r.name].state != "failed"]
        n_done = sum(s.state == "done" for s in self.status.values())
        bar = tqdm(
            total=len(self.plan.runs), initial=n_done, desc="sweep", unit="run", disable=None, dynamic_ncols=True
        )
        if n_done:
            tqdm.write(f"{n_done} of {len(self.plan.runs)} runs already done: skipped")
        free = list(self.slots)
        t0 = time.time()
        try:
            while todo or self._active:
                while todo and free:
                    spec, slot = todo.pop(0), free.pop(0)
                    act = self._launch(spec, slot)
                    if act is None:
                        free.append(slot)
                        bar.update(1)
                for name in list(self._active):
                    act = self._active[name]
                    rc = act.proc.poll()
                    if rc is None:
                        continue
                    finished = self._step_finished(act, rc)
                    if finished:
                        del self._active[name]
                        act.log.close()
                        free.append(act.slot)
                        bar.update(1)
                        self._report(act.spec, t0)
                bar.set_postfix_str(self._postfix(len(todo)), refresh=False)
                if self._active:
                    time.sleep(_POLL_S)
        except BaseException:
            self._stop_children()
            raise
        finally:
            self.save_status()
            bar.close()
        return self.status

    def write_run_info(self, spec: RunSpec) -> None:
        """Create the run's folder with ``sweep_run.json`` (its group, preset, variant and seed, for ``compare``)."""
        run = self.run_dir(spec)
        run.mkdir(parents=True, exist_ok=True)
        write_json(
            run / RUN_INFO_FILE,
            {
                "group": spec.group,
                "preset": spec.preset,
                "variant": spec.variant,
                "seed": spec.seed,
                "sweep": str(self.folder.resolve()),
            },
        )

    def _launch(self, spec: RunSpec, slot: str) -> _Active | None:
        st = self.status[spec.name]
        self.write_run_info(spec)
        act = self._start_step(None, spec, slot)
        if act is None:  # nothing left (status said otherwise): mark done
            st.state = "done"
            self.save_status()
            return None
        was = st.state
        st.state, st.returncode, st.error, st.slot = "running", None, "", slot
        st.job_id, st.launcher = "", "local"
        self.save_status()
        self._active[spec.name] = act
        verb = "resuming" if was in ("interrupted", "failed") or st.steps_done else "starting"
        tqdm.write(f"{verb} {spec.name} on {slot}: {act.steps[0][0]} (log {self.log_path(spec)})")
        return act

    def _step_finished(self, act: _Active, rc: int) -> bool:
        """Record the end of the current step; start the next one. True when the run is over."""
        st = self.status[act.spec.name]
        step, _ = act.steps.pop(0)
        st.elapsed_s += time.time() - act.step_started
        if rc != 0:
            st.state, st.returncode = "failed", rc
            st.error = f"{step} exited with status {rc}: {_log_tail(self.log_path(act.spec))}"
            self.save_status()
            return True
        st.steps_done.append(step)
        if self._start_step(act, act.spec, act.slot) is None:
            st.state, st.returncode = "done", 0
            if act.full_run:  # only whole runs predict the time of the runs still to come
                self._durations.append(time.time() - act.started)
            self.save_status()
            return True
        self.save_status()
        return False

    def _report(self, spec: RunSpec, t0: float) -> None:
        st = self.status[spec.name]
        counts = self.counts()
        head = (
            f"[{_fmt_time(time.time() - t0)}] {counts['done']}/{len(self.plan.runs)} done, "
            f"{counts['running']} running, {counts['failed']} failed"
        )
        if st.state == "done":
            tqdm.write(f"{head}: {spec.name} done in {_fmt_time(st.elapsed_s)}")
        else:
            tqdm.write(f"{head}: {spec.name} FAILED: {st.error} (log {self.log_path(spec)})")

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("pending", "running", "done", "failed", "interrupted")}
        for s in self.status.values():
            out[s.state] += 1
        return out

    def eta_s(self, n_todo: int) -> float | None:
        """Seconds left: runs not started and the rest of the running ones, at the mean run time seen so far."""
        if not self._durations:
            return None
        mean = sum(self._durations) / len(self._durations)
        now = time.time()
        left = n_todo * mean + sum(max(mean - (now - a.started), 0.0) for a in self._active.values())
        return left / len(self.slots)

    def _postfix(self, n_todo: int) -> str:
        c = self.counts()
        eta = self.eta_s(n_todo)
        return f"running {c['running']}, failed {c['failed']}, ETA " + (
            _fmt_time(eta) if eta is not None else "after the first run"
        )

    def _stop_children(self) -> None:
        """SIGTERM every running step, then SIGKILL what has not exited after 10 s; mark them interrupted."""
        for act in self._active.values():
            with contextlib.suppress(ProcessLookupError):
                act.proc.terminate()
        deadline = time.time() + 10
        for act in self._active.values():
            try:
                act.proc.wait(timeout=max(deadline - time.time(), 0.1))
            except subprocess.TimeoutExpired:
                act.proc.kill()
            st = self.status[act.spec.name]
            st.state = "interrupted"
            st.elapsed_s += time.time() - act.step_started
            act.log.close()
        self._active.clear()


def _run_status(d: dict[str, Any]) -> RunStatus:
    """A :class:`RunStatus` from its JSON (unknown keys ignored, so older and newer files both read)."""
    return RunStatus(**{k: v for k, v in d.items() if k in RunStatus.__dataclass_fields__})


@contextlib.contextmanager
def sweep_lock(folder: Path):  # noqa: ANN201
    """Hold ``SWEEP/.lock`` so two sweeps never drive the same runs at once.

    An atomic ``flock`` (:class:`udavae.fileio.FolderLock`): of two sweeps started together exactly one gets it,
    and a sweep killed with ``kill -9`` never leaves the folder locked.
    """
    with FolderLock(folder, "sweep"):
        yield


def open_sweep(folder: Path, plan: SweepPlan | None, resume: bool) -> SweepPlan:
    """The plan to run in ``folder``: a new one (written), or the stored one when resuming.

    Raises:
        UserError: a new sweep in a folder that holds one (without ``resume``), ``resume`` without a sweep,
            or a plan that would drop or change runs of the stored one (adding runs is allowed).
    """
    stored_path = folder / PLAN_FILE
    if stored_path.is_file():
        stored = SweepPlan.from_dict(read_json(stored_path, "sweep plan"), str(stored_path))
        if not resume:
            raise UserError(
                f"{folder} already holds a sweep ({len(stored.runs)} runs); pass --resume to "
                "continue it (finished runs are skipped), or choose another --out folder"
            )
        if plan is None:
            return stored
        problems = stored.differences(plan)
        if problems:
            raise UserError(
                f"the grid given does not continue the sweep in {folder}: "
                + "; ".join(problems)
                + " (run 'udavae sweep --out SWEEP --resume' alone to continue the stored grid)"
            )
        if len(plan.runs) > len(stored.runs):
            write_json(stored_path, plan.to_dict())
        return plan
    if plan is None:
        raise UserError(f"--resume: no sweep in {folder} ({PLAN_FILE} not found)")
    if folder.exists() and any(p.name != _LOCK_FILE for p in folder.iterdir()):
        raise UserError(f"{folder} exists and is not a sweep folder; choose an empty or new --out folder")
    folder.mkdir(parents=True, exist_ok=True)
    write_json(stored_path, plan.to_dict())
    return plan


def run_summaries(sweep: Sweep) -> list[dict[str, Any]]:
    """Per run: state, time, and mean Dice on each evaluated split (from ``RUN/eval/*/summary.json``)."""
    from udavae.engine.model_folder import SELECTED, resolve_checkpoint  # torch: not for a job's driver process

    rows = []
    for spec in sweep.plan.runs:
        st = sweep.status[spec.name]
        row: dict[str, Any] = {"run": spec.name, "state": st.state, "time": _fmt_time(st.elapsed_s)}
        for split in sweep.plan.splits:
            run = sweep.run_dir(spec)
            f = eval_folder(run, sweep.plan.target, split, resolve_checkpoint(run, SELECTED)) / "summary.json"
            with contextlib.suppress(UserError, KeyError, TypeError):
                row[f"{split} Dice"] = f"{100 * read_json(f)['mean_dice']:.2f}" if f.is_file() else ""
        rows.append(row)
    return rows

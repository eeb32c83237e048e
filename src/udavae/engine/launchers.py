"""Run a sweep's runs as scheduler jobs through submitit: SLURM on a cluster, or submitit's local executor.

Each run still to do becomes one job, ``udavae-<run>``, with its own resources (partition, GPUs, CPUs, time,
any other ``sbatch`` option). The job runs the run's remaining steps, the same ``udavae train`` /
``udavae evaluate`` commands the local launcher runs (:meth:`udavae.engine.sweep.Sweep.steps`), logs them to
``SWEEP/logs/<run>.log`` and records its progress in ``SWEEP/jobs/<run>.json``, which
:meth:`~udavae.engine.sweep.Sweep.load_status` merges into the sweep's status. When SLURM preempts a job or its
time limit nears, submitit calls the job's ``checkpoint`` hook: the running step is stopped and the job is
requeued, and the requeued job continues the training from the run's last checkpoint (``udavae train --resume``).
submitit keeps its own files (the ``sbatch`` script, the pickled job, the job's output) under
``SWEEP/slurm/<job id>/``; they are written by this process and read back only by the job itself.

``--resume`` submits only what is unfinished: finished runs are skipped, and a run whose job is still queued or
running (as ``sacct`` says) is left to it.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from udavae.engine.sweep import RunStatus, Sweep, _log_tail, _set_parent_death_signal
from udavae.engine.sweep_plan import PLAN_FILE, RunSpec, SweepPlan
from udavae.errors import UserError
from udavae.fileio import read_json, write_json

#: Where submitit keeps a job's script, pickle and output: ``SWEEP/slurm/<job id>/``.
SUBMITIT_DIR = "slurm"
#: ``RunStatus.launcher`` of runs submitted through SLURM / submitit's local executor.
SLURM, SUBMITIT_LOCAL = "slurm", "submitit-local"
#: SLURM job states in which a job may still run the run (``sacct``); any other known state has ended.
_ACTIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "CONFIGURING",
    "COMPLETING",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "PREEMPTED",
}
_STOP_GRACE_S = 30


def _submitit() -> Any:
    """The submitit module, or a :class:`UserError` naming the extra that installs it."""
    try:
        import submitit
    except ImportError:
        raise UserError("--launcher slurm needs submitit: pip install 'udavae[slurm]'") from None
    return submitit


def parse_time(text: str) -> int:
    """A SLURM time limit (``90``, ``90:00``, ``1:30:00``, ``2-00``, ``2-12:00:00``) in whole minutes."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise UserError(f"--time {text!r}: expected minutes, MM:SS, HH:MM:SS or D-HH[:MM[:SS]] (SLURM's forms)")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = a * 3600 + b * 60 + c
    elif b is not None:  # MM:SS
        seconds = a * 60 + b
    else:  # minutes
        seconds = a * 60
    if seconds <= 0:
        raise UserError(f"--time {text!r}: the time limit must be positive")
    return math.ceil(seconds / 60)


def parse_extra(items: list[str] | None) -> dict[str, Any]:
    """``--slurm-extra KEY=VALUE`` items as ``sbatch`` options (a bare ``KEY`` is a flag such as ``exclusive``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise UserError(f"--slurm-extra {item!r}: expected an sbatch option as KEY=VALUE, e.g. account=mylab")
        out[key] = value.strip() if sep else True
    return out


@dataclass
class JobResources:
    """What each run's job asks the scheduler for.

    Attributes:
        partition: SLURM partition (empty: the cluster's default).
        gpus: GPUs per run; more than one trains the run under ``torchrun`` with one process per GPU.
        cpus: CPU cores per run (None: the cluster's default).
        time_min: time limit of each job in minutes; a job reaching it is requeued and resumes.
        extra: further ``sbatch`` options (``account``, ``qos``, ``mem``, ``constraint`` ...).
    """

    partition: str = ""
    gpus: int = 0
    cpus: int | None = None
    time_min: int = 240
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> str:
        return "cuda" if self.gpus > 0 else "cpu"

    def describe(self) -> str:
        parts = [f"partition {self.partition or '(default)'}", f"{self.gpus} GPU(s)"]
        parts += [f"{self.cpus} CPU(s)"] if self.cpus else []
        parts += [f"time {self.time_min} min"] + [f"{k}={v}" for k, v in self.extra.items()]
        return ", ".join(parts)


class RunJob:
    """The job of one run: its remaining steps, run one after another; requeued with a fresh copy when preempted.

    Pickled by submitit into ``SWEEP/slurm/``; holds names only, everything else is read from the sweep folder.
    """

    def __init__(self, folder: str, name: str, device: str, gpus: int, launcher: str) -> None:
        self.folder, self.name, self.device, self.gpus, self.launcher = folder, name, device, gpus, launcher
        self._proc: subprocess.Popen | None = None
        self._sweep: Sweep | None = None
        self._requeued = False

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("folder", "name", "device", "gpus", "launcher")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def sweep(self) -> Sweep:
        """The sweep as stored in its folder, with its current status."""
        folder = Path(self.folder)
        plan = SweepPlan.from_dict(read_json(folder / PLAN_FILE, "sweep plan"), str(folder / PLAN_FILE))
        sweep = Sweep(folder, plan, self.device)
        sweep.load_status()
        return sweep

    def commands(self, sweep: Sweep | None = None) -> list[tuple[str, list[str]]]:
        """The run's remaining steps as (step, argv); training under ``torchrun`` when the run has several GPUs."""
        sweep = sweep or self.sweep()
        steps = sweep.steps(sweep.plan.run(self.name), self.device)
        if self.gpus > 1:
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(self.gpus)]
            steps = [(s, launch + argv[1:] if s == "train" else argv) for s, argv in steps]
        return steps

    def _save(self, st: RunStatus) -> None:
        assert self._sweep is not None
        path = self._sweep.job_file(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(st))

    def __call__(self) -> str:
        """Run the remaining steps; raise when one fails (the job then ends FAILED, as the scheduler reports)."""
        submitit = _submitit()
        sweep = self._sweep = self.sweep()
        spec, st = sweep.plan.run(self.name), sweep.status[self.name]
        st.state, st.job_id, st.launcher = "running", str(submitit.JobEnvironment().job_id), self.launcher
        st.error, st.returncode, st.slot = "", None, socket.gethostname()
        sweep.write_run_info(spec)
        self._save(st)
        log_path = sweep.log_path(spec)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log_path, "a", encoding="utf-8") as log:
                for step, argv in self.commands(sweep):
                    log.write(f"\n$ {' '.join(argv)}\n")
                    log.flush()
                    started = time.time()
                    proc = self._proc = subprocess.Popen(
                        argv,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=sweep._child_env(self.device),
                        preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
                    )
                    while (rc := proc.poll()) is None:  # not wait(): see _stop_step
                        time.sleep(0.2)
                    self._proc = None
                    st.elapsed_s += time.time() - started
                    if rc != 0:
                        st.state, st.returncode = "failed", rc
                        st.error = f"{step} exited with status {rc}: {_log_tail(log_path)}"
                        self._save(st)
                        raise RuntimeError(f"run {self.name}: {st.error}")
                    st.steps_done.append(step)
                    self._save(st)
        except BaseException as exc:
            self._stop_step()
            if st.state != "failed" and not (self._requeued and isinstance(exc, SystemExit)):
                st.state, st.error = "interrupted", f"job {st.job_id} stopped: {type(exc).__name__} {exc}".strip()
                self._save(st)
            raise
        st.state, st.returncode = "done", 0
        self._save(st)
        return f"run {self.name} done"

    def _stop_step(self) -> None:
        """SIGTERM the running step (its last finished epoch is checkpointed), SIGKILL after a grace period.

        Runs inside submitit's signal handler, which may interrupt ``Popen.poll`` while it holds the Popen's
        lock: the child is reaped with ``os.waitpid`` directly, and its exit code recorded, so the interrupted
        code never takes the stopped step for a successful one.
        """
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        deadline = time.time() + _STOP_GRACE_S
        while time.time() < deadline:
            try:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:  # already reaped
                return
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on preemption or near the time limit: stop the step, requeue a fresh job of the run.

        The requeued job reads the run's progress from the sweep folder, so a finished step is not run again and
        the training continues from ``RUN/checkpoints/last.pt``.
        """
        self._stop_step()
        if self._sweep is not None:
            st = self._sweep.status[self.name]
            st.state, st.error = "pending", "requeued after preemption or time limit"
            self._save(st)
            with open(self._sweep.log_path(self._sweep.plan.run(self.name)), "a", encoding="utf-8") as log:
                log.write(
                    f"\n# job {st.job_id} preempted or out of time: requeued, to resume from the last checkpoint\n"
                )
        self._requeued = True
        return _submitit().helpers.DelayedSubmission(
            RunJob(self.folder, self.name, self.device, self.gpus, self.launcher)
        )


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    """SLURM's state of each job (``PENDING``, ``RUNNING``, ``TIMEOUT`` ...); jobs sacct does not know are absent."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    states = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        if jid.strip() in job_ids and state.strip():
            states[jid.strip()] = state.split()[0].upper()  # "CANCELLED by 1000" -> CANCELLED
    return states


def _pid_alive(pid: str) -> bool:
    """Whether a local job's controller process (its job id) still runs on this machine (zombies count as ended)."""
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def job_states(sweep: Sweep) -> dict[str, tuple[bool | None, str]]:
    """For every run whose job may be queued or running: (still active?, the scheduler's word).

    Active is True / False, or None when the scheduler cannot tell (``sacct`` absent or the job unknown to it).
    """
    live = {n: st for n, st in sweep.status.items() if st.job_id and st.state in ("pending", "running")}
    slurm = sacct_states(sorted({st.job_id for st in live.values() if st.launcher == SLURM}))
    out: dict[str, tuple[bool | None, str]] = {}
    for name, st in live.items():
        if st.launcher == SUBMITIT_LOCAL:
            alive = _pid_alive(st.job_id)
            out[name] = (alive, "running" if alive else "ended")
        elif st.job_id in slurm:
            out[name] = (slurm[st.job_id] in _ACTIVE, slurm[st.job_id])
        else:
            out[name] = (None, "unknown to sacct")
    return out


def status_rows(sweep: Sweep, states: dict[str, tuple[bool | None, str]]) -> list[dict[str, str]]:
    """One row per run for ``udavae sweep --status``: state, job, steps done, time and the log's last line."""
    from udavae.engine.sweep import _fmt_time

    rows = []
    for spec in sweep.plan.runs:
        st = sweep.status[spec.name]
        state = {"done": "finished"}.get(st.state, st.state)
        job = st.job_id
        if spec.name in states:
            alive, word = states[spec.name]
            job += f" ({word})"
            if alive is False:  # the job ended without recording the end of the run: killed from outside
                state = "interrupted"
        row = {
            "run": spec.name,
            "state": state,
            "launcher": st.launcher or "-",
            "job": job or "-",
            "steps done": ",".join(st.steps_done) or "-",
            "time": _fmt_time(st.elapsed_s),
        }
        if state in ("failed", "interrupted", "running"):
            row["last log line"] = _log_tail(sweep.log_path(spec), 1)
        rows.append(row)
    return rows


def live_jobs(sweep: Sweep) -> list[str]:
    """Runs a scheduler's job may still be running or about to run (for refusing to run them locally too)."""
    return [n for n, (alive, _) in job_states(sweep).items() if alive is not False]


class SubmititLauncher:
    """Submits the unfinished runs of a sweep as jobs, and follows them.

    Args:
        sweep: the sweep (status loaded).
        resources: what each job asks for.
        cluster: ``slurm`` or ``local`` (submitit's local executor: the jobs are processes of this machine,
            with the same requeue and resume; what the tests use).
    """

    def __init__(self, sweep: Sweep, resources: JobResources, cluster: str = "slurm") -> None:
        if cluster not in ("slurm", "local"):
            raise ValueError(f"cluster must be 'slurm' or 'local', got {cluster!r}")
        self.sweep, self.resources, self.cluster = sweep, resources, cluster
        self.launcher = SLURM if cluster == "slurm" else SUBMITIT_LOCAL
        self.jobs: dict[str, Any] = {}

    def executor(self) -> Any:
        """A submitit executor with the resources set (SLURM: ``srun`` must be on PATH)."""
        submitit, r = _submitit(), self.resources
        try:
            ex = submitit.AutoExecutor(folder=self.sweep.folder / SUBMITIT_DIR / "%j", cluster=self.cluster)
        except RuntimeError as exc:
            raise UserError(
                f"--launcher slurm: no SLURM on this machine ({exc}); submit from a login node of the cluster"
            ) from None
        params: dict[str, Any] = {"timeout_min": r.time_min, "gpus_per_node": r.gpus, "nodes": 1, "tasks_per_node": 1}
        if r.cpus:
            params["cpus_per_task"] = r.cpus
        if self.cluster == "slurm":
            params["slurm_partition"] = r.partition or None
            params["slurm_additional_parameters"] = dict(r.extra) or None
        ex.update_parameters(**params)
        return ex

    def to_submit(self, retry_failed: bool = True) -> tuple[list[RunSpec], dict[str, str]]:
        """The runs to submit now, and why each other unfinished run is left alone."""
        states = job_states(self.sweep)
        todo, left = [], {}
        for spec in self.sweep.plan.runs:
            st = self.sweep.status[spec.name]
            if st.state == "done":
                continue
            if spec.name in states:
                alive, word = states[spec.name]
                if alive is not False:
                    left[spec.name] = f"job {st.job_id} is {word.lower()}: left to it"
                    continue
                st.state = "interrupted"  # its job ended before the run did: submitted again, resuming
            if st.state == "failed" and not retry_failed:
                left[spec.name] = "failed before (not retried)"
                continue
            todo.append(spec)
        return todo, left

    def submit(self, runs: list[RunSpec]) -> dict[str, str]:
        """Submit one job per run; record each job id in ``status.json``. Returns {run: job id}."""
        if not runs:
            return {}
        ex = self.executor()
        self.sweep.save_status()  # the merged progress, before any new job reads it
        out = {}
        for spec in runs:
            self.sweep.write_run_info(spec)
            ex.update_parameters(name=f"udavae-{spec.name}")
            job = ex.submit(
                RunJob(str(self.sweep.folder), spec.name, self.resources.device, self.resources.gpus, self.launcher)
            )
            st = self.sweep.status[spec.name]
            st.state, st.job_id, st.launcher, st.error, st.returncode = (
                "pending",
                str(job.job_id),
                self.launcher,
                "",
                None,
            )
            self.sweep.save_status()
            self.jobs[spec.name] = job
            out[spec.name] = st.job_id
        return out

    def wait(self, poll_s: float | None = None, on_change: Any = None) -> dict[str, RunStatus]:
        """Follow the jobs until none of the sweep's runs is queued or running; return the final status.

        A job that ends without recording the end of its run (cancelled, killed with its node) leaves the run
        ``interrupted``; ``--resume`` submits it again.
        """
        poll_s = poll_s if poll_s is not None else (60.0 if self.cluster == "slurm" else 0.5)
        seen: dict[str, str] = {}
        while True:
            for job in self.jobs.values():  # local jobs: reap finished processes
                if self.cluster == "local":
                    job.done()
            self.sweep.load_status()
            states = job_states(self.sweep)
            for name, (alive, word) in states.items():
                if alive is False:
                    st = self.sweep.status[name]
                    st.state, st.error = "interrupted", f"job {st.job_id} ended ({word}) before the run finished"
                    with contextlib.suppress(OSError):
                        write_json(self.sweep.job_file(name), asdict(st))
            for name, st in self.sweep.status.items():
                if seen.get(name) != st.state and name in self.jobs and on_change is not None:
                    on_change(name, st)
                seen[name] = st.state
            if not any(alive is not False for alive, _ in states.values()):
                break
            time.sleep(poll_s)
        self.sweep.save_status()
        return self.sweep.status

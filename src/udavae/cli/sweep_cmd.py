"""``udavae sweep``: train and evaluate a grid of presets x seeds x overrides into one sweep folder."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from udavae.errors import UserError

_DESCRIPTION = """\
Train every run of a grid (presets x variants x seeds) as an ordinary model folder under OUT/runs/, then
evaluate each on the target's validation and test splits (best-on-validation checkpoint), ready for
'udavae compare OUT'. Runs execute as separate processes with logs in OUT/logs/: a failed run is reported
and the others go on. On the CPU they run one after another; on GPUs --jobs runs share each GPU and
--gpus spreads them. With --launcher slurm each run is submitted as one SLURM job (through submitit) with
its own resources; a job preempted or out of time is requeued and resumes from its last checkpoint.
Interrupt at any time: 'udavae sweep --out OUT --resume' skips finished runs and continues interrupted ones
from their last checkpoint; 'udavae sweep --out OUT --status' shows every run's state.

examples:
  udavae sweep --out sweeps/seeds --dataset data/mscmrseg --profile cpu \\
      --presets noadapt,udavae++ --seeds 0,1,2
  udavae sweep --out sweeps/ablation --dataset data/mscmrseg --presets udavae++ --seeds 0 \\
      --variant no-prior method.mi_prior=false --variant no-local method.mi_local=false
  udavae sweep --out sweeps/paper --grid benchmarks/paper_sweep.yaml --gpus 0 --jobs 3
  udavae sweep --out sweeps/paper --grid benchmarks/paper_sweep.yaml --launcher slurm \\
      --slurm-partition gpu --gpus-per-run 1 --cpus-per-run 8 --time 4:00:00 --slurm-extra account=mylab
  udavae sweep --out sweeps/seeds --status
  udavae sweep --out sweeps/seeds --resume"""

#: sweep flags that set a config key of every run (as ``udavae train``'s flags of the same names).
_RUN_FLAGS = {
    "epochs": "optim.epochs",
    "iters_per_epoch": "optim.iters_per_epoch",
    "batch_size": "optim.batch_size",
    "amp": "runtime.amp",
    "compile_mode": "runtime.compile_mode",
}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` command."""
    from udavae.config import COMPILE_MODES
    from udavae.methods.presets import PROFILES

    p = sub.add_parser(
        "sweep",
        help="train and evaluate a grid of presets x seeds x overrides (resumable)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="sweep folder (created; holds sweep.json, status.json, runs/, logs/)")
    p.add_argument(
        "--grid",
        help="YAML grid file (dataset, profile, presets, seeds, variants, overrides, grids; "
        "see the udavae.engine.sweep_plan docstring); flags given here override its values",
    )
    p.add_argument("--dataset", help="prepared dataset folder (with dataset.json)")
    p.add_argument("--source", help="labelled source domain (default C0)")
    p.add_argument("--target", help="unlabelled target domain, evaluated (default LGE)")
    p.add_argument("--profile", choices=list(PROFILES), help="compute profile of every run (default paper)")
    p.add_argument("--presets", help="comma-separated presets, e.g. noadapt,udavae++")
    p.add_argument("--seeds", help="comma-separated seeds (default 0)")
    p.add_argument(
        "--variant",
        nargs="+",
        action="append",
        metavar=("NAME", "KEY=VALUE"),
        help="a named set of overrides run for every preset (repeatable), e.g. "
        "--variant no-prior method.mi_prior=false",
    )
    p.add_argument("--splits", help="target splits evaluated after training (default val,test)")
    p.add_argument("--epochs", type=int, help="epochs of every run (overrides the profile)")
    p.add_argument("--iters-per-epoch", type=int, help="iterations per epoch of every run")
    p.add_argument("--batch-size", type=int, help="slices per domain per step of every run")
    p.add_argument("--amp", choices=("none", "bf16"), help="mixed precision of every run (default none = fp32)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, help="torch.compile every run's step in this mode")
    p.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where runs train and are evaluated (default auto: cuda when available)",
    )
    p.add_argument("--gpus", help="comma-separated GPU indices to spread runs over (implies --device cuda)")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once per GPU (default 1; 2-3 fill a large GPU at the paper setting); on the CPU "
        "runs share the cores and slow each other down, so keep 1",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the sweep in --out: finished runs are skipped, interrupted and failed ones "
        "continue (grid flags may be omitted; given, they may only add runs)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the runs and their state, run nothing")
    p.add_argument(
        "--status",
        action="store_true",
        help="print each run's state (pending / running / finished / failed with its log's last line, job ids "
        "and what SLURM says of them) and exit; works whichever launcher ran the sweep",
    )
    g = p.add_argument_group("launcher (docs/howto/slurm.md)")
    g.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        default="local",
        help="local (default): runs as processes of this machine; slurm: each run submitted as one SLURM job "
        "through submitit (pip install 'udavae[slurm]'), requeued and resumed when preempted or out of time",
    )
    g.add_argument("--slurm-partition", help="SLURM partition of the jobs (default: the cluster's)")
    g.add_argument(
        "--gpus-per-run",
        type=int,
        help="GPUs of each job (default 1, 0 with --device cpu); more than 1 trains the run with torchrun",
    )
    g.add_argument("--cpus-per-run", type=int, help="CPU cores of each job (default: the cluster's)")
    g.add_argument(
        "--time",
        default="4:00:00",
        help="time limit of each job, in SLURM's forms (minutes, HH:MM:SS, D-HH:MM); a job reaching it is "
        "requeued and resumes from its last checkpoint (default 4:00:00)",
    )
    g.add_argument(
        "--slurm-extra",
        action="append",
        metavar="KEY=VALUE",
        help="another sbatch option of every job (repeatable), e.g. account=mylab, qos=high, mem=32G, constraint=a100",
    )
    g.add_argument(
        "--wait",
        action="store_true",
        help="with --launcher slurm: follow the jobs until they end, then print the summary (default: submit "
        "and return)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides of every run")
    p.set_defaults(func=run_sweep)


def _grid_spec(args: argparse.Namespace) -> dict | None:
    """The grid described by the file and flags (None when none is given: resume the stored one)."""
    from udavae.engine.sweep_plan import load_grid_file

    spec: dict = load_grid_file(args.grid) if args.grid else {}
    for key in ("dataset", "source", "target", "profile", "presets", "seeds", "splits"):
        value = getattr(args, key)
        if value is not None:
            spec[key] = value
    if args.variant:
        variants = {}
        for name, *items in args.variant:
            if "=" in name:
                raise UserError(f"--variant {name}: give a NAME first, then its key=value items")
            variants[name] = items
        spec["variants"] = variants
    flags = [f"{key}={getattr(args, f)}" for f, key in _RUN_FLAGS.items() if getattr(args, f) is not None]
    if args.compile_mode:
        flags.append("runtime.compile=true")
    extra = flags + list(args.overrides)
    if extra:
        base = spec.get("overrides") or []
        base = [f"{k}={v}" for k, v in base.items()] if isinstance(base, dict) else list(base)
        spec["overrides"] = base + extra
    return spec or None


def _device_and_gpus(args: argparse.Namespace) -> tuple[str, list[int]]:
    import torch

    gpus: list[int] = []
    if args.gpus:
        try:
            gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
        except ValueError:
            raise UserError(f"--gpus {args.gpus!r}: expected comma-separated GPU indices such as 0,1") from None
        if args.device == "cpu":
            raise UserError("--gpus needs --device cuda (or auto)")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device is available (use --device cpu)")
        n = torch.cuda.device_count()
        bad = [g for g in gpus if not 0 <= g < n]
        if bad:
            raise UserError(f"--gpus {bad}: this machine has {n} GPU(s) (indices 0-{n - 1})")
        gpus = gpus or [0]
    if device == "cpu" and args.jobs > 1:
        print(f"note: --jobs {args.jobs} on the CPU: the runs share the cores and each runs slower", file=sys.stderr)
    return device, gpus


def _print_table(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))


def run_sweep(args: argparse.Namespace) -> int:
    """Plan (or reload), then run the sweep; exit 1 if a run failed, 130 if interrupted."""
    from udavae.engine.sweep import Sweep, open_sweep, sweep_lock
    from udavae.engine.sweep_plan import PLAN_FILE, SweepPlan, build_plan, check_plan_data
    from udavae.fileio import read_json

    folder = Path(args.out)
    if args.status:
        return _show_status(folder)
    spec = _grid_spec(args)
    base_dir = Path(args.grid).resolve().parent if args.grid else None
    plan = build_plan(spec, base_dir, where=args.grid or "sweep") if spec else None
    if plan is None and not args.resume:
        raise UserError(
            "no grid given: pass --dataset and --presets (or --grid FILE), or --resume to continue "
            f"the sweep in {folder}"
        )
    if plan is not None:
        check_plan_data(plan)  # dataset, domains, splits: before any folder is made or any run trains
    if args.launcher == "slurm":
        return _run_slurm(args, folder, plan)
    device, gpus = _device_and_gpus(args)
    if args.dry_run:
        stored = folder / PLAN_FILE
        if plan is None:
            plan = SweepPlan.from_dict(read_json(stored, "sweep plan"), str(stored)) if stored.is_file() else None
            if plan is None:
                raise UserError(f"--resume --dry-run: no sweep in {folder}")
        sweep = Sweep(folder, plan, device, gpus, args.jobs)
        sweep.load_status()
        print(
            f"sweep {folder}: {len(plan.runs)} runs on {', '.join(sweep.slots)}; profile {plan.profile}, "
            f"{plan.source} -> {plan.target}, evaluated on {', '.join(plan.splits)}"
        )
        _print_table(
            [
                {
                    "run": r.name,
                    "group": r.group,
                    "seed": r.seed,
                    "state": sweep.status[r.name].state,
                    "overrides": " ".join(r.overrides),
                }
                for r in plan.runs
            ]
        )
        first = next(iter(sweep.pending()), None)
        if first is not None:
            print("first command: " + " ".join(sweep.steps(first, sweep.slots[0])[0][1]))
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    with sweep_lock(folder):
        plan = open_sweep(folder, plan, args.resume)
        check_plan_data(plan)  # a stored plan, too: its dataset may have changed since
        sweep = Sweep(folder, plan, device, gpus, args.jobs)
        sweep.load_status()
        _refuse_live_jobs(sweep)
        print(
            f"sweep {folder}: {len(plan.runs)} runs ({sum(s.state == 'done' for s in sweep.status.values())} "
            f"done) on {', '.join(sweep.slots)}; profile {plan.profile}, {plan.source} -> {plan.target}"
        )
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            status = sweep.execute()
        except KeyboardInterrupt:
            print(
                f"\ninterrupted: running steps were stopped; continue with 'udavae sweep --out {folder} --resume'",
                file=sys.stderr,
            )
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
    return _summary(folder, sweep, status)


def _summary(folder: Path, sweep, status: dict) -> int:  # noqa: ANN001
    """The per-run table, the failures with their logs, the next command; exit status 1 if a run failed."""
    from udavae.engine.sweep import run_summaries

    _print_table(run_summaries(sweep))
    failed = [n for n, s in status.items() if s.state in ("failed", "interrupted")]
    for n in failed:
        print(
            f"udavae sweep: run {n} failed: {status[n].error} (log {folder / 'logs' / (n + '.log')})", file=sys.stderr
        )
    print(
        f"next: udavae compare {folder}"
        + (f"   (failed runs are retried by 'udavae sweep --out {folder} --resume')" if failed else "")
    )
    return 1 if failed else 0


def _raise_interrupt(signum: int, frame) -> None:  # noqa: ANN001
    """SIGTERM handler: stop like Ctrl-C, so the children are stopped and the status saved."""
    raise KeyboardInterrupt


def _refuse_live_jobs(sweep) -> None:  # noqa: ANN001
    """Refuse to run locally what SLURM jobs of this sweep may be running or about to run."""
    if not any(st.job_id and st.state in ("pending", "running") for st in sweep.status.values()):
        return
    from udavae.engine.launchers import live_jobs

    live = live_jobs(sweep)
    if live:
        jobs = ", ".join(f"{n} (job {sweep.status[n].job_id})" for n in live)
        raise UserError(
            f"runs of {sweep.folder} are submitted to a scheduler and may still run: {jobs}; wait for them or "
            f"cancel them (scancel), then resume ('udavae sweep --out {sweep.folder} --status' shows them)"
        )


def _show_status(folder: Path) -> int:
    """``--status``: every run's state, whichever launcher ran it (status.json, the jobs' files, sacct)."""
    from udavae.engine.launchers import job_states, status_rows
    from udavae.engine.sweep import Sweep
    from udavae.engine.sweep_plan import PLAN_FILE, SweepPlan
    from udavae.fileio import FolderLock, read_json

    stored = folder / PLAN_FILE
    if not stored.is_file():
        raise UserError(f"--status: no sweep in {folder} ({PLAN_FILE} not found)")
    sweep = Sweep(folder, SweepPlan.from_dict(read_json(stored, "sweep plan"), str(stored)))
    try:  # a sweep process holds the folder: its runs marked running are running (else they were interrupted)
        FolderLock(folder, "sweep").acquire().release()
        driven = False
    except UserError:
        driven = True
    sweep.load_status(running=driven)
    rows = status_rows(sweep, job_states(sweep))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(f"sweep {folder}: {len(rows)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    _print_table(rows)
    return 0


def _run_slurm(args: argparse.Namespace, folder: Path, plan) -> int:  # noqa: ANN001
    """``--launcher slurm``: submit every unfinished run as one job; with ``--wait`` follow them to the end."""
    from udavae.engine.launchers import JobResources, SubmititLauncher, parse_extra, parse_time
    from udavae.engine.sweep import Sweep, open_sweep, sweep_lock
    from udavae.engine.sweep_plan import check_plan_data

    if args.gpus or args.jobs != 1:
        raise UserError("--gpus and --jobs place runs on this machine; with --launcher slurm use --gpus-per-run")
    gpus = args.gpus_per_run if args.gpus_per_run is not None else (0 if args.device == "cpu" else 1)
    if gpus < 0 or (args.cpus_per_run is not None and args.cpus_per_run < 1):
        raise UserError("--gpus-per-run must be >= 0 and --cpus-per-run >= 1")
    if args.device == "cpu" and gpus > 0:
        raise UserError(f"--device cpu with --gpus-per-run {gpus}: pass --gpus-per-run 0, or --device cuda")
    resources = JobResources(args.slurm_partition or "", gpus, args.cpus_per_run, parse_time(args.time))
    resources.extra = parse_extra(args.slurm_extra)
    if args.dry_run:
        if plan is None:
            raise UserError("--dry-run with --launcher slurm needs the grid (or use --status)")
        print(f"would submit {len(plan.runs)} runs of {folder} to SLURM, each with {resources.describe()}")
        sweep = Sweep(folder, plan, resources.device)
        _print_table([{"run": r.name, "job name": f"udavae-{r.name}", "group": r.group} for r in plan.runs])
        print("first command: " + " ".join(sweep.steps(plan.runs[0], resources.device)[0][1]))
        return 0
    folder.mkdir(parents=True, exist_ok=True)
    with sweep_lock(folder):
        plan = open_sweep(folder, plan, args.resume)
        check_plan_data(plan)
        sweep = Sweep(folder, plan, resources.device)
        sweep.load_status()
        launcher = SubmititLauncher(sweep, resources, "slurm")
        todo, left = launcher.to_submit()
        for name, why in left.items():
            print(f"{name}: {why}")
        n_done = sum(st.state == "done" for st in sweep.status.values())
        print(
            f"sweep {folder}: submitting {len(todo)} of {len(plan.runs)} runs ({n_done} finished), each with "
            f"{resources.describe()}"
        )
        for name, job in launcher.submit(todo).items():
            print(f"  {name}: job {job}  (log {folder / 'logs' / (name + '.log')})")
        if not args.wait:
            print(
                f"follow with 'udavae sweep --out {folder} --status'; when all have finished: udavae compare {folder}"
            )
            return 0
        try:
            status = launcher.wait(on_change=lambda n, st: print(f"{n}: {st.state}", flush=True))
        except KeyboardInterrupt:
            print(f"\nstopped following; the jobs go on ('udavae sweep --out {folder} --status')", file=sys.stderr)
            return 130
    return _summary(folder, sweep, status)

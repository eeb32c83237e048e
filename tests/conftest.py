"""Test-session settings: one intra-op thread.

The suite is dominated by tiny convolutions, for which a second OpenMP thread only adds synchronisation, and
which slow down by orders of magnitude when another process competes for the cores (OpenMP spin-waits).
Subprocesses started by the tests inherit OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("UDAVAE_NO_MALLOC_TUNING", "1")

import torch  # noqa: E402

torch.set_num_threads(1)


import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

#: Runs ``udavae`` with the trainer's step replaced by one that kills the process (exit 137, no cleanup, as
#: ``kill -9`` would) once ``steps`` optimisation steps have run: the fault lives in the test, not in the trainer.
_KILLED_AFTER = """
import os, sys
import udavae.engine.trainer as trainer
steps, real, done = int(sys.argv[1]), trainer.optimisation_step, [0]
def step(*args, **kwargs):
    if done[0] >= steps:
        os._exit(137)
    done[0] += 1
    return real(*args, **kwargs)
trainer.optimisation_step = step
from udavae.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="session")
def udavae_killed_after():
    """``run(steps, *args)``: ``udavae *args`` in a subprocess, hard-killed after ``steps`` training steps."""

    def run(steps: int, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", _KILLED_AFTER, str(steps), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "UDAVAE_NO_MALLOC_TUNING": "1"},
            timeout=600,
        )

    return run


@pytest.fixture(scope="session")
def tiny_overrides() -> dict:
    """Config overrides of a seconds-long training on the CPU (2 epochs x 2 steps, width 4, 48 px crops)."""
    return {
        "optim.epochs": 2,
        "optim.iters_per_epoch": 2,
        "optim.batch_size": 2,
        "model.base_width": 4,
        "model.recon_width": 8,
        "data.crop": 48,
        "data.jitter": 4,
        "train.labelfree_cases": 1,
        "runtime.device": "cpu",
        "data.num_workers": 0,
    }


from dicom_series import write_dicom_series  # noqa: E402, F401  (a fixture: DICOM series from a volume)

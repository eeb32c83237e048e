"""torchrun with 2 CPU processes (gloo): DistributedDataParallel training on synthetic data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from udavae.data.synthetic import generate_dataset
from udavae.engine.model_folder import load_checkpoint


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "port"),
    # slaug: the global view's pass runs outside DDP; its carried gradients must be averaged over the ranks
    [("udavae++", "29531"), ("slaug", "29532")],
)
def test_torchrun_two_cpu_processes(tmp_path: Path, preset: str, port: str) -> None:
    data = tmp_path / "data"
    generate_dataset(data, n_source=3, n_target=4, size=48, slices=3, seed=2, n_val=1)
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
        "-m",
        "udavae",
        "train",
        "--dataset",
        str(data),
        "--out",
        str(out),
        "--preset",
        preset,
        "--profile",
        "tiny",
        "--device",
        "cpu",
        "--epochs",
        "2",
        "--iters-per-epoch",
        "2",
        "--batch-size",
        "2",
        "model.base_width=4",
        "model.recon_width=8",
        "data.crop=32",
        "data.jitter=4",
    ]
    env = {**os.environ, "UDAVAE_NO_MALLOC_TUNING": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the trainer all-gathers a weight checksum at the end and fails if the replicas differ
    assert "2 DDP replicas hold identical weights" in r.stdout + r.stderr
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # one writer: no duplicated rows
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["method"])

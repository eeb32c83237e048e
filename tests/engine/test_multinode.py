"""Several nodes: the process group of ``torchrun --nnodes N`` (gloo on CPUs, NCCL on GPUs), the effective batch and
learning rate the log states, and 2 nodes x 1 process training the same weights as 1 node x 2 processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from udavae.data.synthetic import generate_dataset
from udavae.engine import runtime
from udavae.engine.model_folder import load_checkpoint

ENV = {**os.environ, "UDAVAE_NO_MALLOC_TUNING": "1", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backend_per_device_and_world_description(monkeypatch: pytest.MonkeyPatch) -> None:
    joined = []
    monkeypatch.setattr(runtime.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(runtime.dist, "init_process_group", lambda backend: joined.append(backend))
    # node 1 of 2, one process per node, as torchrun --nnodes 2 --nproc-per-node 1 sets it
    for k, v in {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(k, v)
    info, device = runtime.init_distributed("cpu")
    assert (info.rank, info.local_rank, info.world_size, info.nodes, device.type) == (1, 0, 2, 2, "cpu")
    monkeypatch.setattr(runtime, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: None)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("WORLD_SIZE", "8")
    info, device = runtime.init_distributed("cuda")
    assert joined == ["gloo", "nccl"] and device == torch.device("cuda", 3) and info.nodes == 2
    assert runtime.describe_world(runtime.DistInfo(), 12, 1e-4) == (
        "1 process: batch 12 slices per domain per step; base learning rate 0.0001"
    )


def test_two_nodes_join_one_gloo_group(tmp_path: Path) -> None:
    """Two processes started as two nodes (RANK 0/1, LOCAL_WORLD_SIZE 1) form one gloo group and all-reduce."""
    script = textwrap.dedent(
        """
        import torch, torch.distributed as dist
        from udavae.engine.runtime import describe_world, init_distributed, shutdown_distributed
        info, device = init_distributed("cpu")
        t = torch.tensor([float(info.rank + 1)])
        dist.all_reduce(t)
        print(describe_world(info, 3, 1e-3), "|", t.item())
        shutdown_distributed(info)
        """
    )
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env={
                **ENV,
                "RANK": str(r),
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-2000:]
        assert (
            "2 processes (2 node(s) x 1, gloo): batch 3 slices per domain per process, effective batch 6 per domain "
            "per step; base learning rate 0.001 (not rescaled with the number of processes) | 3.0"
        ) in out


def _torchrun(out: Path, data: Path, port: int, nnodes: int, nproc: int, node_rank: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc)]
    cmd += ["--node-rank", str(node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{port}"]
    cmd += ["--rdzv-id", f"udavae-{port}", "-m", "udavae", "train", "--dataset", str(data), "--out", str(out)]
    cmd += ["--preset", "udavae++", "--profile", "tiny", "--device", "cpu", "--epochs", "2", "--iters-per-epoch", "2"]
    cmd += ["--batch-size", "2", "model.base_width=4", "model.recon_width=8", "data.crop=32", "data.jitter=4"]
    cmd += ["train.labelfree_cases=1"]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_two_nodes_train_the_same_weights_as_one_node_with_two_processes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    generate_dataset(data, n_source=3, n_target=4, size=48, slices=3, seed=2, n_val=1)
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    port = _free_port()
    procs = [_torchrun(one, data, port, 1, 2, 0)]
    port = _free_port()
    procs += [_torchrun(two, data, port, 2, 1, rank) for rank in (0, 1)]  # one torchrun per "node"
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert "2 processes (1 node(s) x 2, gloo): batch 2 slices per domain per process, effective batch 4" in outs[0]
    two_out = outs[1] + outs[2]
    assert "2 processes (2 node(s) x 1, gloo): batch 2 slices per domain per process, effective batch 4" in two_out
    assert two_out.count("2 processes (2 node(s)") == 1  # stated once: only process 0 writes and logs
    a = load_checkpoint(one / "checkpoints" / "last.pt")
    b = load_checkpoint(two / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["method"].keys() == b["method"].keys()
    for k, v in a["method"].items():
        torch.testing.assert_close(b["method"][k], v, rtol=0, atol=1e-6, msg=k)
    assert (one / "log.jsonl").read_text().count("\n") == (two / "log.jsonl").read_text().count("\n") == 2

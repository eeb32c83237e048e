"""Where a run executes: device choice, seeding, mixed precision, the CPU allocator and torchrun.

Allocator: on the virtual machines we measured, glibc returns freed multi-MB activation buffers to the
kernel after every step and re-faults them on the next one, which costs as much as a third of a CPU
training step. :func:`tune_allocator` sets glibc's malloc tunables so freed memory stays in the heap.
They are read when the process starts, so the CLI re-executes itself once with them set (see
``udavae.cli.train_cmd``); the user never needs to know. Numerics are unaffected.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from udavae.config import RuntimeConfig
from udavae.errors import UserError

MALLOC_ENV = {
    "MALLOC_TOP_PAD_": str(1 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 31),
}


def allocator_env_missing() -> dict[str, str]:
    """The malloc tunables not yet set in this process's environment (empty off Linux/glibc)."""
    if not sys.platform.startswith("linux") or os.environ.get("UDAVAE_NO_MALLOC_TUNING"):
        return {}
    return {k: v for k, v in MALLOC_ENV.items() if k not in os.environ}


def reexec_with_allocator_env(argv: list[str]) -> None:
    """Replace this process by ``python *argv`` with the malloc tunables set, if any are missing.

    Call it first thing in an entry point (before heavy imports do work); a no-op when already set.
    """
    missing = allocator_env_missing()
    if missing:
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *argv], {**os.environ, **missing})


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available else CPU; a clear error for an unavailable CUDA device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible to PyTorch")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def slow_amp_warning(device: torch.device, amp: str) -> str | None:
    """A warning when ``amp`` would be emulated, i.e. far slower than float32, on this device; else None.

    bf16 convolutions are fast only on CPUs with AVX512-BF16 or AMX; elsewhere oneDNN emulates them (measured
    12x slower than fp32 for a udavae++ step on a 2-core AMD EPYC without AVX-512).
    """
    if device.type == "cpu" and amp == "bf16" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (
            "warning: runtime.amp=bf16 on a CPU without native bf16 (AVX512-BF16 / AMX): bf16 is emulated "
            "here and about 12x slower than float32; use --amp none"
        )
    return None


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``amp`` in {none, bf16, fp16}; fp16 only on CUDA."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise UserError("runtime.amp=fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


#: ``torch.compile`` modes that capture CUDA graphs (on CUDA devices only).
_CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def configure_backends(device: torch.device, runtime: RuntimeConfig) -> None:
    """Per-process backend switches that change speed, not maths (cuDNN autotuning on CUDA)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = runtime.cudnn_benchmark


def effective_compile_mode(runtime: RuntimeConfig, device: torch.device) -> str:
    """The ``torch.compile`` mode to use on ``device``: CUDA-graph modes fall back off CUDA.

    ``reduce-overhead`` and ``max-autotune`` capture CUDA graphs, which exist only on CUDA; on the CPU
    they fall back to ``default`` and ``max-autotune-no-cudagraphs`` (the same generated kernels).
    """
    mode = runtime.compile_mode
    if device.type != "cuda" and mode in _CUDAGRAPH_MODES:
        return "default" if mode == "reduce-overhead" else "max-autotune-no-cudagraphs"
    return mode


def uses_cudagraphs(runtime: RuntimeConfig, device: torch.device) -> bool:
    """Whether the compiled training step replays CUDA graphs (then each step must be marked)."""
    return runtime.compile and device.type == "cuda" and runtime.compile_mode in _CUDAGRAPH_MODES


def compile_module(module: torch.nn.Module, runtime: RuntimeConfig, device: torch.device) -> torch.nn.Module:
    """``torch.compile(module)`` in the run's mode (see :func:`effective_compile_mode`), or ``module``."""
    if not runtime.compile:
        return module
    return torch.compile(module, mode=effective_compile_mode(runtime, device))  # type: ignore[return-value]


def validation_batch(runtime: RuntimeConfig, train_batch: int, device: torch.device) -> int:
    """Slices per validation forward pass: ``runtime.val_batch``, or 64 on CUDA / the training batch on CPU."""
    if runtime.val_batch > 0:
        return runtime.val_batch
    return 64 if device.type == "cuda" else max(4, train_batch)


def loader_workers(requested: int, device: torch.device) -> int:
    """DataLoader workers: ``requested`` if >= 0; automatic (-1): 4 on CUDA (up to half the cores), else 0.

    On a GPU the crops and pyramids are built in workers so the host thread only launches kernels; on the
    CPU the cores are better spent on the step itself. The batches are identical either way.
    """
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    return max(0, min(4, (os.cpu_count() or 2) // 2))


@dataclass
class DistInfo:
    """Process-group facts; ``world_size == 1`` when not launched by torchrun."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def nodes(self) -> int:
        """Machines taking part (torchrun starts ``LOCAL_WORLD_SIZE`` processes on each)."""
        return max(1, self.world_size // max(1, self.local_world_size))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def process_group_backend(device: torch.device) -> str:
    """The collective backend of a device: NCCL between GPUs, gloo between CPU processes (any node count)."""
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when launched by it (NCCL on GPUs, gloo on CPU), on one node or several.

    torchrun sets ``RANK`` (global), ``LOCAL_RANK`` (the GPU on this node), ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE``
    and the rendezvous address, whichever node the process is on.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend(device))
    return DistInfo(rank, local, world, local_world), device


def describe_world(info: DistInfo, batch_size: int, lr: float, both_domains: bool = True) -> str:
    """The processes, effective batch and learning rate of a run, as the training log states them.

    Each process draws ``batch_size`` slices per domain per step and gradients are averaged over processes,
    so one step sees ``world_size * batch_size`` slices per domain; learning rates are not rescaled.
    """
    per = "per domain " if both_domains else ""
    if not info.enabled:
        return f"1 process: batch {batch_size} slices {per}per step; base learning rate {lr:g}"
    return (
        f"{info.world_size} processes ({info.nodes} node(s) x {info.local_world_size}, "
        f"{dist.get_backend() if dist.is_initialized() else 'not joined'}): "
        f"batch {batch_size} slices {per}per process, effective batch {info.world_size * batch_size} {per}per "
        f"step; base learning rate {lr:g} (not rescaled with the number of processes)"
    )


def barrier(info: DistInfo) -> None:
    """Synchronise ranks (no-op for a single process)."""
    if info.enabled:
        dist.barrier()


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

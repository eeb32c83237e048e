"""One training step as the trainer runs it, and the optimiser bookkeeping around the method's hooks.

The trainer and the benchmarks call :func:`optimisation_step`, so they time exactly the step that trains;
it delegates to the method's own :meth:`~udavae.methods.base.UDAMethod.training_step`.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from udavae.engine.runtime import autocast
from udavae.methods import UDAMethod

__all__ = ["batch_to_device", "load_optimizer_state", "optimisation_step", "remember_base_lr"]


def optimisation_step(
    method: UDAMethod,
    optimizers: dict[str, torch.optim.Optimizer],
    source: dict,
    target: dict | None,
    device: torch.device,
    amp: str,
    cudagraphs: bool = False,
    forward: torch.nn.Module | None = None,
    step: int = 0,
) -> dict[str, torch.Tensor]:
    """One training step as the trainer runs it: ``method.training_step`` under the run's precision.

    The trainer and the benchmarks call this, so they time the same step. ``cudagraphs``: the model is
    compiled with CUDA graphs; each step is marked as a new replay first, so the previous step's outputs may
    be overwritten (read them before the next step). Returns the method's (not detached) loss terms.

    Args:
        method: the method (its hooks).
        optimizers: from ``method.configure_optimizers``.
        source / target: batches on ``device``.
        device / amp: where the step runs and its autocast precision (``none``, ``bf16``, ``fp16``).
        cudagraphs: mark a new CUDA-graph step first.
        forward: the wrapped module (DDP, ``torch.compile``) the method calls for its main pass; default
            ``method`` itself.
        step: 0-based global step, passed on to the method.
    """
    if cudagraphs:
        torch.compiler.cudagraph_mark_step_begin()
    return method.training_step(
        forward if forward is not None else method,
        source,
        target,
        optimizers,
        functools.partial(autocast, device, amp),
        step=step,
    )


def remember_base_lr(optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Record each param group's current lr as its ``"base_lr"`` where the method's optimiser did not."""
    for opt in optimizers.values():
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a saved optimiser state, keeping the ``base_lr`` of every param group as configured now.

    ``load_state_dict`` replaces the groups' hyper-parameters by the saved ones; checkpoints written before
    per-group base rates lack ``base_lr``, and a run resumed with another ``optim.lr`` decays from the new
    one (as when every group was set from ``optim.lr``), so the configured base rates are put back.
    """
    base = [group.get("base_lr", group["lr"]) for group in opt.param_groups]
    opt.load_state_dict(state)
    for group, lr in zip(opt.param_groups, base):
        group["base_lr"] = lr


def batch_to_device(
    batch: dict[str, list[torch.Tensor]], device: torch.device, channels_last: bool = False
) -> dict[str, list[torch.Tensor]]:
    """Move a multi-scale batch to ``device`` without a host sync (pinned memory makes it asynchronous)."""
    out = {}
    for k, ts in batch.items():
        moved = [t.to(device, non_blocking=True) for t in ts]
        if channels_last and k == "image":
            moved = [t.contiguous(memory_format=torch.channels_last) for t in moved]
        out[k] = moved
    return out

"""Parameter and FLOP counts of networks, and synthetic batches to count (or time) them on.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions, linear layers
and matrix products (1 multiply-accumulate = 2 FLOPs) and ignores element-wise work (norms,
activations, the Gaussian and CF distances, optimiser updates): the convention of the published
measurements (docs/implementation-notes.md, "Model size and cost"). On the ``meta``
device only shapes are propagated, so even the paper-size model is counted instantly; the counts equal
those of a real run (checked by the tests). The counts of a whole method (its training step through its
own hooks) are in :mod:`udavae.methods.complexity`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from udavae.models.unet_vae import UNetVAE

__all__ = ["count_flops", "count_parameters", "inference_flops", "synthetic_batch"]


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (conv / linear / matmul, 1 MAC = 2 FLOP) of everything ``fn()`` runs, backward passes included."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def synthetic_batch(
    batch: int, crop: int, num_classes: int, device: torch.device | str, labelled: bool = True
) -> dict[str, list[torch.Tensor]]:
    """A random batch in the data layer's format (three scales; labels if ``labelled``)."""
    sizes = [crop // 2**i for i in range(3)]
    out: dict[str, list[torch.Tensor]] = {"image": [torch.rand(batch, 1, s, s, device=device) for s in sizes]}
    if labelled:
        out["label"] = [torch.randint(0, num_classes, (batch, s, s), device=device) for s in sizes]
    return out


def inference_flops(net: UNetVAE, size: int = 192) -> int:
    """FLOPs of one ``size`` x ``size`` slice through the network in eval mode (z = mu)."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    x = torch.rand(1, net.encoder[0][0].in_channels, size, size, device=device)
    with torch.no_grad():
        flops = count_flops(lambda: net(x))
    net.train(was_training)
    return flops

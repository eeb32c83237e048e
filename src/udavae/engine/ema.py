"""Exponential moving average of a module's weights (``train.ema``), as mean-teacher and SWA users know it.

After every optimisation step ``avg = decay * avg + (1 - decay) * w`` for every floating-point entry of the
state dict; integer buffers, and buffers that change shape (a method's sample pools), are copied. The average
is a full state dict of the method, so it is saved, loaded, evaluated and selected like any other checkpoint
(``checkpoints/ema.pt``).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """The running average of ``module``'s state dict.

    Args:
        module: the module whose weights are averaged (its current weights start the average).
        decay: in [0, 1); 0.99 averages over about the last 100 steps.
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.average = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """One step of the average towards ``module``'s current weights."""
        for key, value in module.state_dict().items():
            avg = self.average.get(key)
            if avg is None or avg.shape != value.shape:  # a buffer that appeared or changed shape (SIFA's pools)
                self.average[key] = value.detach().clone()
            elif avg.is_floating_point():
                avg.lerp_(value.detach().to(avg.dtype), 1.0 - self.decay)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (a state dict of the module)."""
        return self.average

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from a saved average (resume)."""
        for key, value in state.items():
            self.average[key] = value.detach().clone()

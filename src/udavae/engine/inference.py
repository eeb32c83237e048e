"""Whole-volume inference: batched slices, back to the original grid, optional latent sampling.

Prediction is the arg-max of the fusion head (as the reference). With ``samples > 1`` the latent
noise stays on (z = mu + sigma * eps) and the K softmax maps are averaged; the per-voxel uncertainty is
the entropy of that mean, divided by log(num_classes) so it lies in [0, 1]. This is our addition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from udavae.data.preprocessing import Geometry, Preprocessing, crop_or_pad, uncrop_or_unpad
from udavae.engine.runtime import autocast


@dataclass
class Prediction:
    """A predicted volume on the original grid: class indices (x, y, z) and optional uncertainty."""

    classes: np.ndarray
    uncertainty: np.ndarray | None = None


class Predictor:
    """Runs a segmentation network over whole volumes.

    Args:
        net: the segmentation network (``forward(x, sample=...)`` returning ``.logits``).
        prep: the model's preprocessing (for the inverse mapping).
        device: where to run.
        batch_size: slices per forward pass.
        amp: ``none`` | ``bf16`` | ``fp16``.
        channels_last: NHWC inputs.
    """

    def __init__(
        self,
        net: nn.Module,
        prep: Preprocessing,
        device: torch.device,
        batch_size: int = 16,
        amp: str = "none",
        channels_last: bool = False,
    ) -> None:
        self.net, self.prep, self.device = net, prep, device
        self.batch_size, self.amp, self.channels_last = max(1, batch_size), amp, channels_last

    @torch.inference_mode()
    def probabilities(self, slices: torch.Tensor, samples: int = 1) -> torch.Tensor:
        """Mean softmax (z, K, H, W) on the network grid for preprocessed slices (z, H, W).

        Slices of any size are accepted: they are zero-padded (centred) to a multiple of the network's stride
        and the probabilities cropped back, so a whole scan is segmented without cutting it.
        """
        was_training = self.net.training
        self.net.eval()
        h, w = slices.shape[-2:]
        stride = int(getattr(self.net, "stride", 1))
        padded = (-(-h // stride) * stride, -(-w // stride) * stride)
        if padded != (h, w):
            slices = crop_or_pad(slices, padded)
        try:
            out = []
            for start in range(0, slices.shape[0], self.batch_size):
                x = slices[start : start + self.batch_size, None].to(self.device, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                acc = None
                for _ in range(samples):
                    with autocast(self.device, self.amp):
                        logits = self.net(x, sample=samples > 1).logits
                    p = torch.softmax(logits.float(), dim=1)
                    acc = p if acc is None else acc + p
                out.append((acc / samples).cpu())
            probs = torch.cat(out)
            return uncrop_or_unpad(probs, (h, w)) if padded != (h, w) else probs
        finally:
            self.net.train(was_training)

    def native_probabilities(self, slices: torch.Tensor, geom: Geometry, samples: int = 1) -> torch.Tensor:
        """Mean softmax (K, x, y, z) on the original grid of preprocessed slices (z, H, W)."""
        return self.prep.invert_probabilities(self.probabilities(slices, samples), geom)

    def predict(self, slices: torch.Tensor, geom: Geometry, samples: int = 1) -> Prediction:
        """Class map (and uncertainty if ``samples > 1``) on the original grid (x, y, z)."""
        native = self.native_probabilities(slices, geom, samples)
        classes = native.argmax(0).to(torch.uint8).numpy()
        return Prediction(classes, normalised_entropy(native) if samples > 1 else None)


def normalised_entropy(probs: torch.Tensor) -> np.ndarray:
    """Per-voxel entropy of class probabilities (K, ...) divided by log K, in [0, 1], float32."""
    p = probs.clamp_min(1e-12)
    return (-(p * p.log()).sum(0) / math.log(probs.shape[0])).clamp_(0, 1).numpy().astype(np.float32)

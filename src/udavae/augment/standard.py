"""The standard transforms of segmentation training, from MONAI, applied to one 2-D crop.

Spatial transforms (random affine: rotation, scale, shear; elastic deformation; flips) move the image
(bilinear) and the label (nearest) together, so labels stay integer codes; intensity transforms (gamma, bias
field, noise, blur) touch the image only. MONAI's dictionary transforms are used as they are; each crop draws
them from its own seed (the crop's position in the stream), so runs are reproducible and resume exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from udavae.config import AugmentConfig

__all__ = ["StandardAugment"]


class StandardAugment:
    """Callable ``(image, label, seed) -> (image, label)`` on H x W tensors, the transforms of ``cfg``.

    Args:
        cfg: the ``augment`` section (``spatial`` / ``intensity`` switch the two groups).
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        from monai.transforms import (
            Compose,
            Rand2DElasticd,
            RandAdjustContrastd,
            RandAffined,
            RandBiasFieldd,
            RandFlipd,
            RandGaussianNoised,
            RandGaussianSmoothd,
        )

        self.cfg = cfg
        both, modes = ["image", "label"], ("bilinear", "nearest")
        spatial, intensity = [], []
        if cfg.spatial:
            rot = math.radians(cfg.rotate_deg)
            spatial = [
                RandAffined(
                    both,
                    prob=cfg.affine_prob,
                    rotate_range=(rot,),
                    scale_range=(cfg.scale, cfg.scale),
                    shear_range=(cfg.shear, cfg.shear),
                    mode=modes,
                    padding_mode="zeros",
                    allow_missing_keys=True,
                ),
                Rand2DElasticd(
                    both,
                    spacing=(24, 24),
                    magnitude_range=(0.0, cfg.elastic_magnitude),
                    prob=cfg.elastic_prob,
                    mode=modes,
                    padding_mode="zeros",
                    allow_missing_keys=True,
                ),
            ]
            if cfg.flip_prob > 0:
                spatial += [
                    RandFlipd(both, prob=cfg.flip_prob, spatial_axis=0, allow_missing_keys=True),
                    RandFlipd(both, prob=cfg.flip_prob, spatial_axis=1, allow_missing_keys=True),
                ]
        if cfg.intensity:
            intensity = [
                RandAdjustContrastd(["image"], prob=cfg.gamma_prob, gamma=tuple(cfg.gamma)),
                RandBiasFieldd(["image"], prob=cfg.bias_prob, coeff_range=(0.0, cfg.bias_coeff)),
                RandGaussianNoised(["image"], prob=cfg.noise_prob, std=cfg.noise_std),
                RandGaussianSmoothd(
                    ["image"], prob=cfg.blur_prob, sigma_x=tuple(cfg.blur_sigma), sigma_y=tuple(cfg.blur_sigma)
                ),
            ]
        self.spatial = Compose(spatial) if spatial else None
        self.intensity = Compose(intensity) if intensity else None

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None, seed: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment one crop (H x W float image in [0, 1], H x W integer label or None) under ``seed``."""
        data: dict[str, torch.Tensor] = {"image": image[None].float()}
        if label is not None:
            data["label"] = label[None].float()
        if self.spatial is not None:
            self.spatial.set_random_state(seed=seed % 2**32)
            data = self.spatial(data)
        if self.intensity is not None:
            self.intensity.set_random_state(seed=(seed + 1) % 2**32)
            data = self.intensity(data)
        out = torch.as_tensor(np.asarray(data["image"]))[0].clamp(0.0, 1.0).float()
        lab = torch.as_tensor(np.asarray(data["label"]))[0].round().to(label.dtype) if label is not None else None
        return out, lab

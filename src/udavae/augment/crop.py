"""Per-crop augmentation in the data layer: the standard transforms, then SLAug's two location-scale views."""

from __future__ import annotations

import numpy as np
import torch

from udavae.augment.location_scale import global_location_scale, local_location_scale
from udavae.augment.standard import StandardAugment
from udavae.config import AugmentConfig

__all__ = ["CropAugment"]


class CropAugment:
    """``(image, label, rng) -> item`` for one H x W crop: ``image`` (+ ``label``, + ``image_lla`` for SLAug).

    Args:
        cfg: the ``augment`` section.
        source: whether the crops are the labelled source's (SLAug applies to them only; the standard
            transforms apply to target crops only when ``cfg.target``).
    """

    def __init__(self, cfg: AugmentConfig, source: bool) -> None:
        self.cfg, self.source = cfg, source
        self.standard = StandardAugment(cfg) if cfg.standard and (source or cfg.target) else None
        self.slaug = cfg.slaug and source

    @property
    def active(self) -> bool:
        """Whether this augmentation changes anything."""
        return self.standard is not None or self.slaug

    def __call__(
        self, image: torch.Tensor, label: torch.Tensor | None, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        """The augmented crop as a dataset item (images 1 x H x W, label H x W long)."""
        if self.standard is not None:
            image, label = self.standard(image, label, int(rng.integers(2**31)))
        item: dict[str, torch.Tensor] = {}
        if self.slaug:
            if label is None:
                raise ValueError("augment.slaug needs labelled crops")
            img, lab = image.numpy(), label.numpy()
            item["image"] = torch.from_numpy(global_location_scale(img, rng, self.cfg.slaug_points))[None]
            item["image_lla"] = torch.from_numpy(
                local_location_scale(img, lab, rng, self.cfg.slaug_points, self.cfg.slaug_background)
            )[None]
        else:
            item["image"] = image[None].contiguous()
        if label is not None:
            item["label"] = label.long().contiguous()
        return item

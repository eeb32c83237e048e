"""The augmentations that run on the training batch on the device, before every method's step.

The data layer hands over crops already through the per-crop transforms (standard, and SLAug's two
location-scale views: ``image`` is the global view, ``image_lla`` the class-level one). Here, on the device:

* SLAug: the saliency of the global view under the current network (an input-only gradient pass, see
  :func:`~udavae.augment.saliency.input_gradient`) fuses the two views; the method then trains on the global
  view and the fused view stacked along the batch (``augment.slaug_views=both``, the public code's two losses)
  or on the fused view alone (``fused``);
* GIN-IPA: the source image becomes an IPA view; a method that trains on view pairs (``gin-ipa``'s
  consistency loss) gets the GIN view and the IPA view of every crop, stacked along the batch.

The method's step then sees an ordinary batch (three image scales, three label scales), so every method
composes with every augmentation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from udavae.augment.gin import gin_views
from udavae.augment.saliency import fuse, input_gradient, saliency_map
from udavae.config import AugmentConfig

__all__ = ["PYRAMID", "SourceAugmenter", "image_pyramid", "label_pyramid"]

#: Down-sampling factors of the three scales every method reads (full, 1/2, 1/4).
PYRAMID = (1, 2, 4)


def image_pyramid(image: Tensor) -> list[Tensor]:
    """B x C x H x W -> [full, 1/2, 1/4] by box averaging (exact anti-aliasing; values stay in range)."""
    return [image] + [F.avg_pool2d(image, s) for s in PYRAMID[1:]]


def label_pyramid(label: Tensor) -> list[Tensor]:
    """B x H x W -> [full, 1/2, 1/4] by exact nearest neighbour (the centre pixel of each block)."""
    return [label] + [label[:, s // 2 :: s, s // 2 :: s].contiguous() for s in PYRAMID[1:]]


class SourceAugmenter:
    """Applies the batch-level augmentations of ``cfg`` to source batches (identity when none is on).

    Args:
        cfg: the ``augment`` section.
        seed: the run's seed; step ``n``'s random draws come from ``(seed, n)``, so a resumed run repeats them.
        pairs: stack a GIN view and an IPA view of every crop (for methods that train on view pairs).
    """

    def __init__(self, cfg: AugmentConfig, seed: int, pairs: bool = False) -> None:
        self.cfg, self.seed, self.pairs = cfg, seed, pairs
        if pairs and not cfg.gin:
            raise ValueError("a method that trains on GIN/IPA view pairs needs augment.gin=true")

    @property
    def active(self) -> bool:
        """Whether any batch-level augmentation is on."""
        return self.cfg.slaug or self.cfg.gin

    def __call__(self, batch: dict[str, list[Tensor]], net: torch.nn.Module, step: int) -> dict[str, list[Tensor]]:
        """The augmented source batch (``batch`` itself when nothing is on)."""
        if not self.active:
            return batch
        image, label = batch["image"][0], batch["label"]
        if self.cfg.slaug:
            if "image_lla" not in batch:
                raise ValueError("augment.slaug needs the class-level view 'image_lla' from the data layer")
            grad = input_gradient(net, image, label[0])
            fused = fuse(image, batch["image_lla"][0], saliency_map(grad, self.cfg.slaug_grid)).detach()
            if self.cfg.slaug_views == "fused":
                return {"image": image_pyramid(fused), "label": label}
            return {"image": image_pyramid(torch.cat([image, fused])), "label": [torch.cat([t, t]) for t in label]}
        gen = torch.Generator(device=image.device)
        gen.manual_seed(self.seed * 1_000_003 + step)
        with torch.no_grad():
            gin, ipa = gin_views(image, gen, self.cfg.gin_layers, self.cfg.gin_channels, self.cfg.ipa_grid)
        if self.pairs:
            return {"image": image_pyramid(torch.cat([gin, ipa])), "label": [torch.cat([t, t]) for t in label]}
        return {"image": image_pyramid(ipa), "label": label}

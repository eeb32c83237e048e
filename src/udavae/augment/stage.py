"""The augmentations that run on the training batch on the device, before every method's step.

The data layer hands over crops already through the per-crop transforms (standard, and SLAug's two
location-scale views: ``image`` is the global view, ``image_lla`` the class-level one). Here, on the device:

* SLAug: the saliency of the global view under the current network fuses the two views. With
  ``augment.slaug_views=both`` (the public code's two losses) the saliency pass is itself a training pass of
  the method's segmentation terms on the global view: its parameter gradients are carried over and added to
  the method's step on the fused view, just before the optimisers step (:meth:`SourceAugmenter.attach`).
  ``fused`` trains on the fused view alone (an input-only gradient pass, see
  :func:`~udavae.augment.saliency.input_gradient`); ``stacked`` stacks the global and the fused view along the
  batch of the method's step;
* GIN-IPA: the source image becomes an IPA view; a method that trains on view pairs (``gin-ipa``'s
  consistency loss) gets the GIN view and the IPA view of every crop, stacked along the batch.

The method's step then sees an ordinary batch (three image scales, three label scales), so every method
composes with every augmentation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from udavae.augment.gin import gin_views
from udavae.augment.saliency import fuse, input_gradient, saliency_map, training_pass
from udavae.config import AugmentConfig

if TYPE_CHECKING:
    from udavae.methods.base import UDAMethod

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
        #: Parameter gradients of the last global-view pass (``slaug_views=both``), by ``id`` of the parameter,
        #: waiting for the optimiser that owns the parameter to step.
        self.carried: dict[int, Tensor] = {}
        #: Loss terms of the augmentation's own training pass (logged beside the method's; not in its total).
        self.logged: dict[str, Tensor] = {}

    @property
    def carries_gradients(self) -> bool:
        """Whether the augmentation trains on a view of its own (SLAug's global view, ``slaug_views=both``)."""
        return self.cfg.slaug and self.cfg.slaug_views == "both"

    def attach(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        """Make each optimiser add the carried gradients of its parameters to ``.grad`` before it steps.

        A parameter's carried gradient is used once (by the first optimiser that steps it) and the carry is
        replaced at every call of the augmenter, so a skipped step never adds stale gradients.
        """
        if self.carries_gradients:
            for opt in optimizers.values():
                opt.register_step_pre_hook(self._add_carried)

    def _add_carried(self, opt: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        for group in opt.param_groups:
            for p in group["params"]:
                g = self.carried.pop(id(p), None)
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g.to(p.dtype)
                else:
                    p.grad.add_(g.to(p.grad.dtype))

    @property
    def active(self) -> bool:
        """Whether any batch-level augmentation is on."""
        return self.cfg.slaug or self.cfg.gin

    def __call__(
        self,
        batch: dict[str, list[Tensor]],
        method: UDAMethod,
        step: int,
        autocast_ctx: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ) -> dict[str, list[Tensor]]:
        """The augmented source batch (``batch`` itself when nothing is on).

        Args:
            batch: the source batch on the device (``image``/``label`` pyramids; ``image_lla`` for SLAug).
            method: the method being trained (its network gives the saliency; with ``slaug_views=both`` its
                segmentation terms are the global view's loss).
            step: 0-based global step (seeds GIN's random networks).
            autocast_ctx: the run's autocast context for the global-view training pass.
        """
        self.carried, self.logged = {}, {}
        if not self.active:
            return batch
        image, label = batch["image"][0], batch["label"]
        if self.cfg.slaug:
            if "image_lla" not in batch:
                raise ValueError("augment.slaug needs the class-level view 'image_lla' from the data layer")
            if self.carries_gradients:
                grad = self._global_view_pass(method, image, label, autocast_ctx)
            else:
                grad = input_gradient(method.net, image, label[0])
            fused = fuse(image, batch["image_lla"][0], saliency_map(grad, self.cfg.slaug_grid)).detach()
            if self.cfg.slaug_views == "stacked":
                stacked = torch.cat([image, fused])
                return {"image": image_pyramid(stacked), "label": [torch.cat([t, t]) for t in label]}
            return {"image": image_pyramid(fused), "label": label}
        gen = torch.Generator(device=image.device)
        gen.manual_seed(self.seed * 1_000_003 + step)
        with torch.no_grad():
            gin, ipa = gin_views(image, gen, self.cfg.gin_layers, self.cfg.gin_channels, self.cfg.ipa_grid)
        if self.pairs:
            return {"image": image_pyramid(torch.cat([gin, ipa])), "label": [torch.cat([t, t]) for t in label]}
        return {"image": image_pyramid(ipa), "label": label}

    def _global_view_pass(
        self,
        method: UDAMethod,
        image: Tensor,
        label: list[Tensor],
        autocast_ctx: Callable[[], AbstractContextManager],
    ) -> Tensor:
        """Train on the global view: carry its parameter gradients, return its input gradient (the saliency).

        Under several processes the carried gradients are averaged over them, as DDP averages the step's own.
        """

        def loss(out: object) -> Tensor:
            return method.with_total(method.segmentation_terms(out, label))["total"]

        with autocast_ctx():
            value, grad_x, grads = training_pass(method.net, image, loss)
        self.logged = {"seg_global_view": value}
        params = [p for p in method.net.parameters() if p.requires_grad]
        kept = [(p, g) for p, g in zip(params, grads) if g is not None]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([g.float().reshape(-1) for _, g in kept])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            pieces = flat.split([g.numel() for _, g in kept])
            kept = [(p, piece.view_as(g)) for (p, g), piece in zip(kept, pieces)]
        self.carried = {id(p): g.detach() for p, g in kept}
        return grad_x

"""GIN-IPA (Ouyang et al., "Causality-inspired Single-source Domain Generalization for Medical Image
Segmentation", IEEE TMI 2023): the NoAdapt segmenter trained on GIN and IPA views of the source crops with a
consistency loss between the two views' predictions. Uses no target images. docs/methods/gin-ipa.md.

The views are drawn on the device by :class:`udavae.augment.SourceAugmenter` (``augment.gin=true``): a batch
of B crops reaches :meth:`GinIpa.forward` as 2B images, the GIN views then the IPA views, labels repeated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from udavae.config import Config
from udavae.losses import symmetric_kl
from udavae.methods.base import Batch, MethodOptions, SegWeights, UDAMethod, batch_images, batch_labels
from udavae.methods.registry import Preset, register_method

__all__ = ["GinIpa", "GinIpaOptions", "GinIpaWeights"]


@dataclass
class GinIpaWeights(SegWeights):
    """Loss weights of GIN-IPA.

    Attributes:
        consistency: weight of the symmetric KL between the GIN view's and the IPA view's probabilities
            (10 times the segmentation weight, the paper's ratio).
    """

    consistency: float = 10000.0


@dataclass
class GinIpaOptions(MethodOptions):
    """Options of ``method.kind=gin_ipa``.

    Attributes:
        weights: loss weights.
    """

    kind: str = "gin_ipa"
    weights: GinIpaWeights = field(default_factory=GinIpaWeights)

    def validate(self, cfg: Config) -> None:
        """GIN-IPA draws its views from ``augment.gin``."""
        if not cfg.augment.gin:
            raise ValueError(
                "method.kind=gin_ipa trains on GIN/IPA views: it needs augment.gin=true (the gin-ipa preset sets it)"
            )


@register_method
class GinIpa(UDAMethod):
    """Segmentation of both views (balanced CE, every head) plus their consistency; no target batch."""

    kind = "gin_ipa"
    Options = GinIpaOptions
    presets: ClassVar[dict[str, Preset]] = {
        "gin-ipa": Preset(
            {
                "model.wiring": "skip",
                "model.mean_head": "gate",
                "augment.spatial": True,
                "augment.intensity": False,
                "augment.gin": True,
            },
            "GIN-IPA (Ouyang et al. TMI 2023): random-convolution and IPA views + spatial augmentation, "
            "consistency between the views; uses no target images",
        ),
    }
    needs_target = False
    #: The source batch holds a GIN view and an IPA view of every crop (see the module docstring).
    view_pairs: ClassVar[bool] = True

    def forward(self, source: Batch, target: Batch | None = None) -> dict[str, Tensor]:
        """Segmentation terms of both views and ``consistency``; ``target`` is ignored."""
        images, labels = batch_images(source, "source"), batch_labels(source, "source")
        out = self.net(images[0])
        terms = self.segmentation_terms(out, labels)
        half = out.logits.shape[0] // 2
        terms["consistency"] = self.options.weights.consistency * symmetric_kl(out.logits[:half], out.logits[half:])
        return self.with_total(terms)

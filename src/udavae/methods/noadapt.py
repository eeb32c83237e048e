"""NoAdapt: the same segmentation network trained on labelled source data only.

The lower bound of every table in Wu & Zhuang (IEEE TMI 2020, 2021) and Lu et al. (CVPRW 2022); see
docs/implementation-notes.md, "NoAdapt".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import Tensor

from udavae.methods.base import Batch, MethodOptions, SegWeights, UDAMethod, batch_images, batch_labels
from udavae.methods.registry import Preset, register_method

__all__ = ["NoAdapt", "NoAdaptOptions"]

#: The segmenter of the baselines: skip wiring, spatial-gate mean head (the authors' HEAD network).
_NET = {"model.wiring": "skip", "model.mean_head": "gate"}


@dataclass
class NoAdaptOptions(MethodOptions):
    """Options of ``method.kind=noadapt``: only the source segmentation weight.

    Attributes:
        weights: loss weights.
    """

    kind: str = "noadapt"
    weights: SegWeights = field(default_factory=SegWeights)


@register_method
class NoAdapt(UDAMethod):
    """Source segmentation losses (balanced CE on the full, fusion, 1/2 and 1/4 heads) and nothing else."""

    kind = "noadapt"
    Options = NoAdaptOptions
    presets: ClassVar[dict[str, Preset]] = {
        "noadapt": Preset(dict(_NET), "same segmenter trained on source labels only (no target images, no adaptation)"),
        "noadapt-aug": Preset(
            {**_NET, "augment.spatial": True, "augment.intensity": True},
            "noadapt with the standard augmentation (MONAI affine, elastic, gamma, bias field, "
            "noise, blur) in every profile (the cpu and paper profiles switch it on anyway); uses no target images",
        ),
        "slaug": Preset(
            {**_NET, "augment.spatial": True, "augment.intensity": False, "augment.slaug": True},
            "SLAug (Su et al. AAAI 2023): noadapt segmenter, spatial augmentation + global/class-level "
            "location-scale views fused by saliency balancing; uses no target images",
        ),
    }
    needs_target = False

    def forward(self, source: Batch, target: Batch | None = None) -> dict[str, Tensor]:
        """Weighted source segmentation terms; ``target`` is ignored (it may be None)."""
        images = batch_images(source, "source")
        labels = batch_labels(source, "source")
        return self.with_total(self.segmentation_terms(self.net(images[0]), labels))

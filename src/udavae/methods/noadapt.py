"""NoAdapt: the same segmentation network trained on labelled source data only.

The lower bound of every table in Wu & Zhuang (IEEE TMI 2020, 2021) and Lu et al. (CVPRW 2022); see
docs/implementation-notes.md, "NoAdapt".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from udavae.methods.base import Batch, MethodOptions, SegWeights, UDAMethod, batch_images, batch_labels

__all__ = ["NoAdapt", "NoAdaptOptions"]


@dataclass
class NoAdaptOptions(MethodOptions):
    """Options of ``method.kind=noadapt``: only the source segmentation weight.

    Attributes:
        weights: loss weights.
    """

    kind: str = "noadapt"
    weights: SegWeights = field(default_factory=SegWeights)


class NoAdapt(UDAMethod):
    """Source segmentation losses (balanced CE on the full, fusion, 1/2 and 1/4 heads) and nothing else."""

    kind = "noadapt"
    Options = NoAdaptOptions
    needs_target = False

    def forward(self, source: Batch, target: Batch | None = None) -> dict[str, Tensor]:
        """Weighted source segmentation terms; ``target`` is ignored (it may be None)."""
        images = batch_images(source, "source")
        labels = batch_labels(source, "source")
        return self.with_total(self.segmentation_terms(self.net(images[0]), labels))

"""NoAdapt: the same segmentation network trained on labelled source data only (REFERENCE_SPEC s6.3)."""

from __future__ import annotations

from torch import Tensor

from udavae.methods.base import Batch, UDAMethod, batch_images, batch_labels

__all__ = ["NoAdapt"]


class NoAdapt(UDAMethod):
    """Source segmentation losses (balanced CE on the full, fusion, 1/2 and 1/4 heads) and nothing else."""

    needs_target = False

    def forward(self, source: Batch, target: Batch | None = None) -> dict[str, Tensor]:
        """Weighted source segmentation terms; ``target`` is ignored (it may be None)."""
        images = batch_images(source, "source")
        labels = batch_labels(source, "source")
        return self.with_total(self.segmentation_terms(self.net(images[0]), labels))

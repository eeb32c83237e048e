"""Common interface of every UDA method: one ``nn.Module`` that turns a source / target batch into losses.

Batch format (produced by the data layer): a dict with ``"image"``, a list of three float tensors
B x 1 x H x W, B x 1 x H/2 x W/2, B x 1 x H/4 x W/4 in [0, 1] (full, 1/2, 1/4) and, for the source,
``"label"``, a list of three long tensors B x H x W, B x H/2 x W/2, B x H/4 x W/4 of class indices.

``forward`` returns every *weighted* loss term by name plus their sum ``"total"``; it never calls
``.item()`` or branches on tensor values, so a training step has no host synchronisation. The method
owns two parameter sets: the main one (segmentation network + decoders) and the critics (SMIE), each
trained by its own Adam (:func:`make_optimizers`); both minimise the same total, as the reference.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from udavae.config import Config, OptimConfig
from udavae.losses import balanced_cross_entropy
from udavae.models.unet_vae import LATENT_SCALES, UNetVAE, VAEOutput

__all__ = ["Batch", "UDAMethod", "make_optimizers", "one_hot"]

Batch = Mapping[str, Sequence[Tensor]]


def one_hot(label: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """B x H x W class indices -> B x K x H x W one-hot map (``scatter``: no value check, no host sync)."""
    b, h, w = label.shape
    out = torch.zeros(b, num_classes, h, w, dtype=dtype, device=label.device)
    return out.scatter_(1, label.unsqueeze(1), 1.0)


def batch_images(batch: Batch | None, what: str) -> Sequence[Tensor]:
    """The three images of a batch; ``ValueError`` naming ``what`` if missing or malformed."""
    if batch is None or "image" not in batch:
        raise ValueError(f"{what} batch with an 'image' entry is required")
    images = batch["image"]
    if len(images) != len(LATENT_SCALES):
        raise ValueError(f"{what} 'image' must list {len(LATENT_SCALES)} scales (full, 1/2, 1/4), "
                         f"got {len(images)}")
    return images


def batch_labels(batch: Batch, what: str) -> Sequence[Tensor]:
    """The three label maps of a labelled batch."""
    if "label" not in batch or len(batch["label"]) != len(LATENT_SCALES):
        raise ValueError(f"{what} batch needs 'label': three label maps (full, 1/2, 1/4)")
    return batch["label"]


class UDAMethod(nn.Module):
    """Base class: holds the segmentation network ``net`` and method-specific modules.

    Sub-classes implement :meth:`forward`. Critic modules (if any) live under ``self.critics`` so the
    parameter split of :meth:`main_parameters` / :meth:`critic_parameters` is by name.

    Args:
        cfg: the run configuration (model and method parts are used).
        num_classes: K, segmentation classes including background.
    """

    #: Whether :meth:`forward` needs a target batch.
    needs_target: bool = True

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.net = UNetVAE(cfg.model, num_classes)
        self.critics: nn.ModuleDict | None = None

    def forward(self, source: Batch, target: Batch | None = None) -> dict[str, Tensor]:
        """Weighted loss terms by name and their sum under ``"total"``."""
        raise NotImplementedError

    def main_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the segmentation network and decoders (first optimiser)."""
        for name, p in self.named_parameters():
            if not name.startswith("critics."):
                yield p

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the SMIE critics (second optimiser); empty when MI is off."""
        if self.critics is not None:
            yield from self.critics.parameters()

    def reconstruct(self, batch: Batch, domain: str) -> Tensor | None:
        """Full-scale reconstruction of ``batch`` by ``domain``'s decoder (report figures); None if none."""
        return None

    def segmentation_terms(self, out: VAEOutput, labels: Sequence[Tensor]) -> dict[str, Tensor]:
        """Balanced CE of the full, fusion, 1/2 and 1/4 heads against the source labels, times ``seg``."""
        w = self.cfg.method.weights.seg
        full, half, quarter = out.seg_logits
        return {
            "seg_full": w * balanced_cross_entropy(full, labels[0]),
            "seg_fusion": w * balanced_cross_entropy(out.logits, labels[0]),
            "seg_half": w * balanced_cross_entropy(half, labels[1]),
            "seg_quarter": w * balanced_cross_entropy(quarter, labels[2]),
        }

    @staticmethod
    def with_total(terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add ``"total"`` = sum of all terms (as a float32 scalar)."""
        terms["total"] = torch.stack([t.float() for t in terms.values()]).sum()
        return terms


def make_optimizers(method: UDAMethod, optim_cfg: OptimConfig,
                    fused: bool = False) -> dict[str, torch.optim.Optimizer]:
    """Adam over the main parameters (``"main"``) and, if the method has critics, over them (``"critic"``).

    Weight decay is Adam's coupled L2 (``weight_decay``), as the reference; both use ``optim_cfg.lr``.

    Args:
        method: the method whose parameters are optimised (already on its device).
        optim_cfg: learning rate and weight decay.
        fused: use the fused single-kernel Adam when the parameters are on a CUDA device (the same update,
            rounded in another order); ignored elsewhere, so CPU runs keep the default implementation.
    """
    main = list(method.main_parameters())
    kwargs: dict = {"lr": optim_cfg.lr, "weight_decay": optim_cfg.weight_decay}
    if fused and main and main[0].device.type == "cuda":
        kwargs["fused"] = True
    opts: dict[str, torch.optim.Optimizer] = {"main": torch.optim.Adam(main, **kwargs)}
    critic = list(method.critic_parameters())
    if critic:
        opts["critic"] = torch.optim.Adam(critic, **kwargs)
    return opts

"""Shared part of the variational methods (UDA-VAE family and CFDNet): decoders, reconstruction, KL.

Six label-conditioned decoders, one per (domain, scale): source decoders see the one-hot ground truth
of that scale, target decoders the softmax of that scale's logits (not detached, so the reconstruction
term trains the target segmentation), as in UDA-VAE (Wu & Zhuang, IEEE TMI 2021) and its published code; see
docs/implementation-notes.md, "Loss terms and default weights".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from udavae.config import Config
from udavae.losses import kl_divergence, reconstruction_bce
from udavae.methods.base import Batch, SegWeights, UDAMethod, batch_images, batch_labels, one_hot
from udavae.models.recon import ReconDecoder
from udavae.models.unet_vae import LATENT_SCALES, VAEOutput

__all__ = ["DomainPass", "VariationalMethod", "VariationalWeights"]

DOMAINS = ("src", "tgt")


@dataclass
class VariationalWeights(SegWeights):
    """Loss weights every variational method has (defaults: the published UDA-VAE / UDA-VAE++ code).

    Attributes:
        recon: weight of each reconstruction BCE term (3 scales x 2 domains).
        kl: weight of each KL term of the latent samples (3 scales x 2 domains).
    """

    recon: float = 10.0
    kl: float = 1.0


@dataclass
class DomainPass:
    """Network output of one domain with its reconstruction logits at (full, 1/2, 1/4)."""

    out: VAEOutput
    recon_logits: tuple[Tensor, ...]

    @property
    def recon(self) -> tuple[Tensor, ...]:
        """The reconstructed images, ``sigmoid`` of the logits, in (0, 1) (what the SMIE critics see)."""
        return tuple(torch.sigmoid(r) for r in self.recon_logits)


class VariationalMethod(UDAMethod):
    """Base of ``vae`` and ``cfd``: adds the decoders and the reconstruction + KL terms."""

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        width = cfg.model.recon_width
        self.decoders = nn.ModuleDict(
            {
                f"{dom}_{scale}": ReconDecoder(self.net.channels[i], num_classes, width)
                for dom in DOMAINS
                for i, scale in enumerate(LATENT_SCALES)
            }
        )

    def _conditions(self, out: VAEOutput, labels: Sequence[Tensor] | None) -> list[Tensor]:
        """Class maps fed to the decoders: one-hot labels if given, else the softmax predictions."""
        if labels is not None:
            return [one_hot(lbl, self.num_classes, out.z[i].dtype) for i, lbl in enumerate(labels)]
        return [torch.softmax(s, dim=1) for s in out.seg_logits]

    def _decode(self, dom: str, out: VAEOutput, labels: Sequence[Tensor] | None) -> tuple[Tensor, ...]:
        ys = self._conditions(out, labels)
        return tuple(self.decoders[f"{dom}_{scale}"](out.z[i], ys[i]) for i, scale in enumerate(LATENT_SCALES))

    def run_domains(self, source: Batch, target: Batch | None) -> tuple[DomainPass, DomainPass]:
        """Network + decoder passes of both domains.

        Two separate network passes, as the reference: a single concatenated pass would give the same
        values (instance norm is per sample) but also back-propagate zeros through the target's unused
        fusion head (about 2 GFLOP per step at the paper size).
        """
        if target is None:
            raise ValueError(f"method kind {self.kind!r} adapts to the target domain: it needs a target batch")
        src_img = batch_images(source, "source")
        tgt_img = batch_images(target, "target")
        labels = batch_labels(source, "source")
        out_s, out_t = self.net(src_img[0]), self.net(tgt_img[0])
        src = DomainPass(out_s, self._decode("src", out_s, labels))  # type: ignore[arg-type]
        tgt = DomainPass(out_t, self._decode("tgt", out_t, None))  # type: ignore[arg-type]
        return src, tgt

    def common_terms(self, source: Batch, target: Batch | None) -> tuple[dict[str, Tensor], DomainPass, DomainPass]:
        """Both domains' passes and the terms every variational method has: source segmentation,
        reconstruction and KL. Sub-classes add their alignment terms."""
        src, tgt = self.run_domains(source, target)
        assert target is not None  # checked by run_domains
        terms = self.segmentation_terms(src.out, source["label"])
        terms.update(self.vae_terms(source, target, src, tgt))
        return terms, src, tgt

    def vae_terms(self, source: Batch, target: Batch, src: DomainPass, tgt: DomainPass) -> dict[str, Tensor]:
        """Weighted BCE reconstruction (on the decoders' logits) and KL terms at the three scales of both domains."""
        w: VariationalWeights = self.options.weights  # type: ignore[attr-defined]
        terms: dict[str, Tensor] = {}
        for dom, batch, res in (("src", source, src), ("tgt", target, tgt)):
            images = batch["image"]
            for i, scale in enumerate(LATENT_SCALES):
                terms[f"recon_{dom}_{scale}"] = w.recon * reconstruction_bce(res.recon_logits[i], images[i])
                terms[f"kl_{dom}_{scale}"] = w.kl * kl_divergence(res.out.mu[i], res.out.logvar[i])
        return terms

    @torch.no_grad()
    def reconstruct(self, batch: Batch, domain: str) -> Tensor | None:
        """Full-scale reconstructed image in (0, 1) by ``domain``'s decoder (``source`` or ``target``), no gradients.

        Source decoders are conditioned on the batch's labels when it has them, otherwise (and always for
        the target) on the network's softmax prediction.
        """
        if domain not in ("source", "target"):
            raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
        images = batch_images(batch, domain)
        out = self.net(images[0])
        if domain == "source" and "label" in batch:
            y = one_hot(batch["label"][0], self.num_classes, out.z[0].dtype)
        else:
            y = torch.softmax(out.seg_logits[0], dim=1)
        key = "src_full" if domain == "source" else "tgt_full"
        return torch.sigmoid(self.decoders[key](out.z[0], y).float())

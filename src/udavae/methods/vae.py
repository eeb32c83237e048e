"""UDA-VAE / UDA-VAE++ objective (REFERENCE_SPEC s3.2).

    L = sum_s [recon * (BCE_S,s + BCE_T,s) + kl * (KL_S,s + KL_T,s)]
      + seg * [CE(full) + CE(fusion) + CE(1/2) + CE(1/4)]        (source only)
      + dist_full * D_full + dist_half * D_half + dist_quarter * D_quarter
      + mi * (L_SMIE,S + L_SMIE,T)                                  (UDA-VAE++ only)

Bug 8 of the reference is fixed: the target SMIE gets the *target* reconstructions at every scale.
"""

from __future__ import annotations

from torch import Tensor, nn

from udavae.config import Config
from udavae.losses import gaussian_kernel_distance
from udavae.methods.base import Batch
from udavae.methods.variational import VariationalMethod
from udavae.models.smie import SMIE
from udavae.models.unet_vae import LATENT_SCALES

__all__ = ["VAEMethod"]


class VAEMethod(VariationalMethod):
    """UDA-VAE family: reconstruction, KL, source segmentation, Gaussian-kernel distance, optional SMIE."""

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        me = cfg.method
        if me.uses_mi:
            self.critics = nn.ModuleDict({
                dom: SMIE(num_classes, cfg.data.crop, use_global=me.mi_global, use_local=me.mi_local,
                          use_prior=me.mi_prior, alpha=me.mi_alpha, beta=me.mi_beta, gamma=me.mi_gamma,
                          prior=me.prior)
                for dom in ("src", "tgt")
            })

    def forward(self, source: Batch, target: Batch | None = None) -> dict[str, Tensor]:
        """Weighted loss terms (names ``seg_*``, ``recon_*``, ``kl_*``, ``dist_*``, ``mi_*``) and ``total``."""
        terms, src, tgt = self.common_terms(source, target)
        me = self.cfg.method
        for i, scale in enumerate(LATENT_SCALES):
            d = gaussian_kernel_distance(src.out.mu[i], src.out.logvar[i], tgt.out.mu[i], tgt.out.logvar[i],
                                         pool=me.dist_pool)
            terms[f"dist_{scale}"] = me.weights.dist[i] * d
        if self.critics is not None:
            for dom, res in (("src", src), ("tgt", tgt)):
                est = self.critics[dom](res.out.seg_logits, res.recon)
                terms[f"mi_{dom}"] = me.weights.mi * est["loss"]
        return self.with_total(terms)

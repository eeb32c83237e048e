"""Networks: the three-scale variational U-Net, reconstruction decoders and SMIE critics.

Complexity counting lives in :mod:`udavae.models.complexity` (not imported here: it depends on
:mod:`udavae.methods`).
"""

from udavae.models.init import init_conv_weights
from udavae.models.recon import ReconDecoder
from udavae.models.smie import SMIE
from udavae.models.unet_vae import LATENT_SCALES, UNetVAE, VAEOutput

__all__ = ["LATENT_SCALES", "SMIE", "ReconDecoder", "UNetVAE", "VAEOutput", "init_conv_weights"]

"""Loss terms of UDA-VAE++ and its baselines, one concern per module.

Every function casts its inputs to float32 inside, so all are safe to call under autocast.
"""

from udavae.losses.characteristic import cf_distance
from udavae.losses.consistency import symmetric_kl
from udavae.losses.gaussian_distance import gaussian_kernel_distance, gaussian_kernel_distance_flat
from udavae.losses.kl import kl_divergence
from udavae.losses.mutual_info import jsd_mi
from udavae.losses.reconstruction import reconstruction_bce
from udavae.losses.segmentation import balanced_cross_entropy

__all__ = [
    "balanced_cross_entropy",
    "cf_distance",
    "gaussian_kernel_distance",
    "gaussian_kernel_distance_flat",
    "jsd_mi",
    "kl_divergence",
    "reconstruction_bce",
    "symmetric_kl",
]

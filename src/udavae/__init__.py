"""udavae: unsupervised domain adaptation for cardiac image segmentation (UDA-VAE++ and baselines)."""

__version__ = "0.1.0"

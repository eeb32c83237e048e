"""udavae: unsupervised domain adaptation for cardiac image segmentation (UDA-VAE++, baselines, SLAug, GIN-IPA).

The stable Python API (see :mod:`udavae.api`)::

    import udavae
    model = udavae.load("runs/udavae++")
    masks = model.predict(volume, spacing=(1.25, 1.25, 5.0)).classes

Names are imported on first use, so ``import udavae`` (and the command line) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from udavae.version import __version__

__all__ = ["Config", "Model", "Prediction", "__version__", "evaluate", "load", "train"]

if TYPE_CHECKING:
    from udavae.api import Model, Prediction, evaluate, load, train
    from udavae.config import Config


def __getattr__(name: str) -> Any:
    """Import the API names lazily (``udavae.load`` imports torch; ``udavae.__version__`` does not)."""
    if name == "Config":
        from udavae.config import Config

        return Config
    if name in ("Model", "Prediction", "evaluate", "load", "train"):
        from udavae import api

        return getattr(api, name)
    raise AttributeError(f"module 'udavae' has no attribute {name!r}")

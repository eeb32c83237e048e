"""UDA methods (NoAdapt, UDA-VAE family, CFDNet) behind one interface, and their factory.

``build_method(cfg, num_classes)`` picks the class from ``cfg.method.kind``; named presets that set the
kind and its options live in :mod:`udavae.methods.presets`.
"""

from __future__ import annotations

from udavae.config import Config
from udavae.methods.base import UDAMethod, make_optimizers
from udavae.methods.cfd import CFDMethod
from udavae.methods.noadapt import NoAdapt
from udavae.methods.vae import VAEMethod

__all__ = ["METHODS", "CFDMethod", "NoAdapt", "UDAMethod", "VAEMethod", "build_method", "make_optimizers"]

METHODS: dict[str, type[UDAMethod]] = {"noadapt": NoAdapt, "vae": VAEMethod, "cfd": CFDMethod}


def build_method(cfg: Config, num_classes: int) -> UDAMethod:
    """The :class:`UDAMethod` for ``cfg.method.kind``, freshly initialised (validates ``cfg`` first)."""
    cfg.validate()
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return METHODS[cfg.method.kind](cfg, num_classes)

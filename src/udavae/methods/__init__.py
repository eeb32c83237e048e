"""UDA methods behind one interface, their registry and factory.

Every method module declares its class with ``@register_method`` (:mod:`udavae.methods.registry`): its
``method.kind``, its options dataclass (the ``method.*`` config keys of that kind) and its presets. This module
imports the method modules explicitly, so importing ``udavae.methods``
registers every method; ``build_method(cfg, num_classes)`` picks the class from ``cfg.method.kind``.
"""

from __future__ import annotations

from udavae.config import Config
from udavae.methods.base import MethodOptions, UDAMethod
from udavae.methods.cfd import CFDMethod, CFDOptions
from udavae.methods.gin_ipa import GinIpa, GinIpaOptions
from udavae.methods.noadapt import NoAdapt, NoAdaptOptions
from udavae.methods.pnp_adanet import PnPAdaNet, PnPAdaNetOptions
from udavae.methods.registry import METHODS, register_method
from udavae.methods.sifa import SIFAMethod, SIFAOptions
from udavae.methods.vae import VAEMethod, VAEOptions

__all__ = [
    "METHODS",
    "CFDMethod",
    "CFDOptions",
    "GinIpa",
    "GinIpaOptions",
    "MethodOptions",
    "NoAdapt",
    "NoAdaptOptions",
    "PnPAdaNet",
    "PnPAdaNetOptions",
    "SIFAMethod",
    "SIFAOptions",
    "UDAMethod",
    "VAEMethod",
    "VAEOptions",
    "build_method",
    "register_method",
]


def build_method(cfg: Config, num_classes: int) -> UDAMethod:
    """The :class:`UDAMethod` for ``cfg.method.kind``, freshly initialised (validates ``cfg`` first)."""
    cfg.validate()
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return METHODS[cfg.method.kind](cfg, num_classes)

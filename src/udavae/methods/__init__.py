"""UDA methods (NoAdapt, UDA-VAE family, CFDNet) behind one interface, their registry and factory.

``METHODS`` maps ``method.kind`` to the method class; :func:`register_method` adds a class to it and
declares its options dataclass to :mod:`udavae.config` (so ``method.<option>`` keys of that kind are
known). ``build_method(cfg, num_classes)`` picks the class from ``cfg.method.kind``; named presets that
set the kind and its options live in :mod:`udavae.methods.presets`.
"""

from __future__ import annotations

from udavae.config import Config, register_method_options
from udavae.methods.base import MethodOptions, UDAMethod
from udavae.methods.cfd import CFDMethod, CFDOptions
from udavae.methods.gin_ipa import GinIpa, GinIpaOptions
from udavae.methods.noadapt import NoAdapt, NoAdaptOptions
from udavae.methods.pnp_adanet import PnPAdaNet, PnPAdaNetOptions
from udavae.methods.sifa import SIFAMethod, SIFAOptions
from udavae.methods.vae import VAEMethod, VAEOptions

__all__ = ["METHODS", "CFDMethod", "CFDOptions", "MethodOptions", "NoAdapt", "NoAdaptOptions", "UDAMethod",
           "VAEMethod", "VAEOptions", "build_method", "register_method"]
__all__ += ["SIFAMethod", "SIFAOptions"]
__all__ += ["PnPAdaNet", "PnPAdaNetOptions"]
__all__ += ["GinIpa", "GinIpaOptions"]

#: ``method.kind`` -> method class (the registry; :func:`register_method` fills it).
METHODS: dict[str, type[UDAMethod]] = {}


def register_method(cls: type[UDAMethod]) -> type[UDAMethod]:
    """Register ``cls`` under ``cls.kind`` with its options ``cls.Options``; returns ``cls`` (a decorator)."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind")
    if cls.Options().kind != cls.kind:
        raise ValueError(f"{cls.__name__}.Options has kind {cls.Options().kind!r}, not {cls.kind!r}")
    register_method_options(cls.kind, cls.Options)
    METHODS[cls.kind] = cls
    return cls


for _cls in (NoAdapt, VAEMethod, CFDMethod):
    register_method(_cls)
register_method(SIFAMethod)
register_method(PnPAdaNet)
register_method(GinIpa)


def build_method(cfg: Config, num_classes: int) -> UDAMethod:
    """The :class:`UDAMethod` for ``cfg.method.kind``, freshly initialised (validates ``cfg`` first)."""
    cfg.validate()
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    return METHODS[cfg.method.kind](cfg, num_classes)

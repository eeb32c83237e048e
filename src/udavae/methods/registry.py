"""The method registry: ``@register_method`` declares a method class, its options and its presets.

Each method module decorates its class; :mod:`udavae.methods` imports the method modules explicitly (the one
list of methods), so the registry is complete as soon as ``udavae.methods`` is imported, and
:mod:`udavae.config` imports it itself whenever it needs a method's options: a configuration behaves the same
whatever was imported first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from udavae.config import register_method_options

if TYPE_CHECKING:
    from udavae.methods.base import UDAMethod

__all__ = ["METHODS", "PRESET_TABLE", "Preset", "register_method"]


@dataclass(frozen=True)
class Preset:
    """A named configuration of a method (a row of a results table).

    Attributes:
        overrides: dotted config keys the preset sets (``method.kind`` is added from the class).
        help: one line for ``--help`` and the docs.
    """

    overrides: dict[str, Any] = field(default_factory=dict)
    help: str = ""


#: ``method.kind`` -> method class.
METHODS: dict[str, type[UDAMethod]] = {}
#: preset name -> (method kind, preset), in registration order.
PRESET_TABLE: dict[str, tuple[str, Preset]] = {}


def register_method(cls: type[UDAMethod]) -> type[UDAMethod]:
    """Class decorator: register ``cls`` under ``cls.kind`` with its options ``cls.Options`` and presets."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind")
    if cls.Options().kind != cls.kind:
        raise ValueError(f"{cls.__name__}.Options has kind {cls.Options().kind!r}, not {cls.kind!r}")
    register_method_options(cls.kind, cls.Options)
    METHODS[cls.kind] = cls
    for name, preset in cls.presets.items():
        owner = PRESET_TABLE.get(name)
        if owner is not None and owner[0] != cls.kind:
            raise ValueError(f"preset {name!r} is declared by both {owner[0]!r} and {cls.kind!r}")
        PRESET_TABLE[name] = (cls.kind, preset)
    return cls

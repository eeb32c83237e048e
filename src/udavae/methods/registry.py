"""The method registry: ``@register_method`` declares a method class, its options and its presets.

Each method module decorates its class; :mod:`udavae.methods` imports the method modules explicitly, and the
package declares each method class in the ``udavae.methods`` entry-point group (pyproject.toml), through which
:mod:`udavae.config` loads them whenever it needs a method's options or presets: a configuration behaves the
same whatever was imported first, and no lower layer imports a method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from udavae.config import register_method_options

#: A method class (a ``udavae.methods.base.UDAMethod`` sub-class; not imported here, which imports this module).
M = TypeVar("M", bound=type)

__all__ = ["METHODS", "Preset", "register_method"]


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
METHODS: dict[str, type] = {}


def register_method(cls: M) -> M:
    """Class decorator: register ``cls`` under ``cls.kind`` with its options ``cls.Options`` and presets."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind")
    if cls.Options().kind != cls.kind:
        raise ValueError(f"{cls.__name__}.Options has kind {cls.Options().kind!r}, not {cls.kind!r}")
    register_method_options(cls.kind, cls.Options, {n: (p.overrides, p.help) for n, p in cls.presets.items()})
    METHODS[cls.kind] = cls
    return cls

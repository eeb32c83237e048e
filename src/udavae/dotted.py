"""Dotted ``key=value`` overrides of nested dataclasses: parsing, flattening and type coercion.

Generic helpers of :mod:`udavae.config` (which applies them to a :class:`~udavae.config.Config`); they know
nothing of any configuration section.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["coerce", "flatten", "has_path", "parse_overrides", "set_path"]


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def coerce(key: str, current: Any, value: Any) -> Any:
    """Convert ``value`` (possibly a CLI string) to the type of ``current``."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean (true/false, yes/no, on/off, 1/0), got {value!r}")
    if isinstance(current, list):  # any length: ``a,b``, ``[a, b]`` or a YAML list; items typed as the first
        if isinstance(value, str):
            text = value.strip()
            text = text[1:-1] if text.startswith("[") and text.endswith("]") else text
            value = [v.strip().strip("'\"") for v in text.split(",") if v.strip()]
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        return [coerce(key, current[0] if current else "", v) for v in items]
    if isinstance(current, tuple):
        items = value.split(",") if isinstance(value, str) else list(value)
        if len(items) != len(current):
            raise ValueError(f"{key}: expected {len(current)} comma-separated values, got {value!r}")
        return tuple(coerce(key, c, v) for c, v in zip(current, items))
    try:
        if isinstance(current, int):
            f = float(value)
            if f != int(f):
                raise ValueError
            return int(f)
        if isinstance(current, float):
            return float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: int(float('inf'))
        kind = "an integer" if isinstance(current, int) else "a number"
        raise ValueError(f"{key}: expected {kind}, got {value!r}") from None
    return str(value)


def has_path(obj: Any, parts: list[str]) -> bool:
    """Whether the dataclass tree ``obj`` has the field path ``parts``."""
    for p in parts:
        if not (dataclasses.is_dataclass(obj) and p in {f.name for f in dataclasses.fields(obj)}):
            return False
        obj = getattr(obj, p)
    return True


def set_path(obj: Any, parts: list[str], key: str, value: Any) -> None:
    """Set the existing field path ``parts`` of ``obj`` to ``value`` coerced to the current value's type."""
    for p in parts[:-1]:
        obj = getattr(obj, p)
    setattr(obj, parts[-1], coerce(key, getattr(obj, parts[-1]), value))


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Parse CLI ``key=value`` items."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out

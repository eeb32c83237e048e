"""``udavae config show``: every config key a ``key=value`` override may set, with its resolved value.

A run's configuration is defaults <- profile <- preset <- overrides (:func:`udavae.methods.presets.build_config`).
This command prints, for a preset and profile, every dotted key with its type, its resolved value, which of
those layers set it, and a one-line description taken from the ``Attributes:`` sections of the dataclass
docstrings in :mod:`udavae.config` and, for ``method.*``, of the chosen kind's options dataclass in its method
module (so the help cannot drift from the code). ``--yaml`` prints the resolved
configuration as ``train`` writes it to ``RUN/config.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from udavae.config import Config, parse_overrides
from udavae.methods.presets import PRESETS, PROFILES, build_config

__all__ = ["KeyInfo", "attribute_docs", "config_keys", "config_yaml", "register"]

SOURCES = ("default", "profile", "preset", "override")


@dataclass(frozen=True)
class KeyInfo:
    """One settable config key.

    Attributes:
        key: dotted key as a ``key=value`` override spells it (``model.base_width``).
        type: the field's annotation (``int``, ``tuple[float, float, float]``...).
        value: the resolved value.
        source: which layer set it: ``default``, ``profile``, ``preset`` or ``override``.
        description: first sentence of the field's docstring entry ('' when undocumented).
    """

    key: str
    type: str
    value: Any
    source: str
    description: str


def attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the ``Attributes:`` section of a class docstring (Google style).

    An entry ``a / b: text`` documents both ``a`` and ``b``; continuation lines are joined. Fields without
    an entry are absent from the result.
    """
    doc = cls.__dict__.get("__doc__") or ""
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Attributes:")
    except StopIteration:
        return {}
    entries: list[tuple[list[str], list[str]]] = []
    indent: int | None = None
    for line in lines[start + 1 :]:
        if not line.strip():
            continue
        ind = len(line) - len(line.lstrip())
        if indent is None:
            indent = ind
        if ind < indent:  # the next section or paragraph
            break
        m = re.match(r"(\w+(?:\s*/\s*\w+)*)\s*:\s*(.*)$", line.strip()) if ind == indent else None
        if m:
            entries.append(([n.strip() for n in m.group(1).split("/")], [m.group(2)]))
        elif entries:
            entries[-1][1].append(line.strip())
    return {name: " ".join(text).strip() for names, text in entries for name in names}


def _first_sentence(text: str) -> str:
    """The first sentence, without reST literal markup: a one-line description."""
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text.replace("``", ""))  # ``x`` and :meth:`x` -> x
    return re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0]


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def _walk(obj: Any, prefix: str = "") -> Iterator[tuple[str, str, Any, str]]:
    """(dotted key, type, value, description) of every leaf field of a dataclass tree, in field order."""
    docs: dict[str, str] = {}
    for cls in reversed(type(obj).__mro__):  # a sub-class's entries win over its bases'
        docs.update(attribute_docs(cls))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", _type_name(f.type), value, _first_sentence(docs.get(f.name, ""))


def _source(key: str, preset: str, profile: str, overrides: dict[str, Any]) -> str:
    """Which layer of :func:`build_config` set ``key`` last."""
    if key in overrides:
        return "override"
    if key in PRESETS[preset] or key in ("preset", "method.name"):  # build_config sets the last two
        return "preset"
    if key in PROFILES[profile] or key == "profile":
        return "profile"
    return "default"


def config_keys(
    preset: str = "udavae++", profile: str = "paper", overrides: dict[str, Any] | None = None
) -> list[KeyInfo]:
    """Every settable key of the configuration ``build_config(preset, profile, overrides)`` resolves to.

    Raises:
        ValueError: unknown preset / profile / key, a badly typed value, or an inconsistent result.
    """
    overrides = dict(overrides or {})
    cfg = build_config(preset, profile, overrides)
    return [
        KeyInfo(key, typ, value, _source(key, preset, profile, overrides), desc) for key, typ, value, desc in _walk(cfg)
    ]


def config_yaml(cfg: Config) -> str:
    """The resolved configuration as YAML, exactly as ``train`` writes ``RUN/config.yaml``."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def format_value(value: Any) -> str:
    """A value as a ``key=value`` override would spell it (``true``, ``0.001,0.001,0.0001``, ``''``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(format_value(v) for v in value)
    if isinstance(value, str):
        return value if value else "''"
    return repr(value)


def register(subparsers: Any) -> None:
    """Add the ``config`` command (sub-command ``show``) to the top-level parser."""
    from udavae.cli import add_preset_profile_args, presets_epilog
    from udavae.cli.train_cmd import FLAG_KEYS

    parser = subparsers.add_parser(
        "config",
        help="list every config key with its value for a preset / profile",
        description="Inspect the configuration a training run would use.",
    )
    sub = parser.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    flags = "\n".join(f"  --{flag.replace('_', '-'):<16} {key}" for flag, key in FLAG_KEYS.items())
    show = sub.add_parser(
        "show",
        help="every config key with its type, resolved value and origin",
        description="Print every config key a key=value override (of train, model info, config show) may set,\n"
        "with its type, its value for --preset and --profile, where that value comes from\n"
        "(default < profile < preset < override: later layers win) and a one-line description.\n"
        "With --yaml, print the resolved config as train writes it to RUN/config.yaml.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"train flags and the keys they set:\n{flags}\n\n{presets_epilog()}",
    )
    add_preset_profile_args(show)
    show.add_argument("--yaml", action="store_true", help="print the resolved config as YAML instead of a table")
    show.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides applied last, e.g. optim.lr=2e-4 method.mi_prior=false",
    )
    show.set_defaults(func=_show)

    def _usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)


def _show(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.overrides)
    if args.yaml:
        sys.stdout.write(config_yaml(build_config(args.preset, args.profile, overrides)))
        return 0
    keys = config_keys(args.preset, args.profile, overrides)
    rows = [("KEY", "TYPE", "VALUE", "FROM", "DESCRIPTION")]
    rows += [(k.key, k.type, format_value(k.value), k.source, k.description) for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(
        f"config of preset {args.preset}, profile {args.profile} ({len(keys)} keys; "
        "precedence default < profile < preset < override)"
    )
    for r in rows:
        print(("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4]).rstrip())
    return 0

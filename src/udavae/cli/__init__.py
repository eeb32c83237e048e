"""Command-line interface: ``udavae <command> ...``.

Each sub-module registers its commands through ``register(subparsers)`` and sets ``func`` on its parser;
errors a user can fix (:class:`UserError`, ``ValueError``, ``FileNotFoundError``) and system errors such as
a full disk (``OSError``) are printed as one clear line and give exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from udavae.errors import UserError

_COMMAND_MODULES = (
    "data_cmd",
    "model_cmd",
    "config_cmd",
    "train_cmd",
    "eval_cmd",
    "export_cmd",
    "sweep_cmd",
    "compare_cmd",
    "demo_cmd",
    "docs_cmd",
)


def version_text() -> str:
    """``udavae X (torch Y, Python Z)``, for ``udavae --version`` and bug reports.

    torch's version is read from its package metadata, so ``--version`` answers without importing torch.
    """
    import platform
    from importlib import metadata

    import udavae

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:  # e.g. a source build without metadata
        import torch

        torch_version = torch.__version__
    return f"udavae {udavae.__version__} (torch {torch_version}, Python {platform.python_version()})"


def presets_epilog() -> str:
    """The ``presets:`` block of ``--help`` texts: every preset name with what it trains."""
    from udavae.methods.presets import PRESET_HELP

    return "presets:\n" + "\n".join(f"  {k:<14} {v}" for k, v in PRESET_HELP.items())


def add_preset_profile_args(parser: argparse.ArgumentParser) -> None:
    """``--preset`` and ``--profile``, as every command that builds a configuration takes them."""
    from udavae.methods.presets import PRESETS, PROFILES

    parser.add_argument(
        "--preset",
        default="udavae++",
        choices=list(PRESETS),
        metavar="PRESET",
        help="method preset, one of the list below (default udavae++)",
    )
    parser.add_argument("--profile", default="paper", choices=list(PROFILES), help="compute profile (default paper)")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="udavae",
        description="Unsupervised domain adaptation for cardiac segmentation (UDA-VAE++ and baselines).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_text(),
        help="print the udavae, torch and Python versions and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"udavae.cli.{name}")
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name == f"udavae.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def _reexec_with_allocator_env() -> None:
    """Restart this command once with glibc malloc tunables set (read only at process start).

    Keeps freed activation memory in the heap instead of returning it to the kernel after every step;
    see :mod:`udavae.engine.runtime`. Numerics are unchanged.
    """
    from udavae.engine.runtime import reexec_with_allocator_env

    reexec_with_allocator_env(["-m", "udavae", *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``udavae`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if argv is None and getattr(args, "tune_malloc", False):
        _reexec_with_allocator_env()
    try:
        rc = args.func(args)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"udavae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, file too large, I/O error...: one line naming the file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"udavae {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)

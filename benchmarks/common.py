"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_relative(arg: str) -> str:
    """An absolute path argument made relative to the repository, so recorded commands are not tied to the
    machine that ran them; any other argument unchanged."""
    if not os.path.isabs(arg):
        return arg
    try:
        return os.path.relpath(arg, REPO)
    except ValueError:  # another drive (Windows)
        return arg

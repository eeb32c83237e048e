"""Atomic file writing: write to a temporary file in the target folder, then rename.

A reader (or a crash) never sees a half-written checkpoint, mask, table or dataset description:
either the old file or the complete new one is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from udavae.errors import UserError


def _create_temp_beside(path: Path) -> Path:
    """Create a new empty file with a random name beside ``path`` (same suffixes) and return its path.

    Unlike ``tempfile.mkstemp`` (always mode 0600), the file is created with mode 0666 and the kernel applies
    the process umask (and a default ACL of the folder), so the renamed result gets the same permissions as a
    file written with a plain ``open()``. ``O_EXCL`` keeps the creation race-free.
    """
    prefix = f".{path.name.split('.')[0]}-"
    suffix = "".join(path.suffixes) or ".tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"could not create a temporary file beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffixes); rename it onto ``path`` on success.

    The temporary file keeps the full suffix (``.nii.gz``) so writers that pick a format from the
    file name behave as for the final name, and gets the mode ``open()`` would give (0666 less the
    umask), so the result is not private to the owner unless the umask says so. On error the temporary
    file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    parent = path.parent
    if not parent.exists():
        raise UserError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder {parent} is not writable")
    tmp_path = _create_temp_beside(path)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write JSON (indented, NaN allowed as ``NaN``)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read JSON with an error naming the file on absence or corruption."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from None


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and check it can be written, with a clear error otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create output folder {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"output folder {path} is not writable")
    return path

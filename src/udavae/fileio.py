"""Atomic file writing: write to a temporary file in the target folder, then rename.

A reader (or a crash) never sees a half-written checkpoint, mask, table or dataset description:
either the old file or the complete new one is there. Also here, because every writer needs them: the one
pattern of names that may become file or folder names (:func:`is_safe_name`), joining such names under a
folder without leaving it (:func:`inside`), the cleanup of temporaries a killed process left behind
(:func:`remove_stale_temporaries`) and the lock that keeps two processes out of one folder
(:class:`FolderLock`). See docs/trust-model.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from udavae.errors import UserError

#: Names read from files (case ids, domain and split names) that udavae turns into file or folder names.
SAFE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_NAME_LENGTH = 128
SAFE_NAME_RULE = f"1-{MAX_NAME_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'"
#: Temporary files of :func:`atomic_path`: ``.<stem>-<12 hex digits><suffixes>`` (see ``_create_temp_beside``).
TEMP_RE = re.compile(r"^\.[^.]*-[0-9a-f]{12}\.[^/]+$")
#: Write errors that mean "no room or no right to write here", reported as one line naming the file.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}
LOCK_FILE = ".lock"
#: Age (s) from which a temporary in a shared output folder counts as left by a killed writer, not one at work.
STALE_TEMP_AGE_S = 120.0


def is_safe_name(name: object) -> bool:
    """Whether ``name`` may become a file or folder name: :data:`SAFE_NAME_RULE` (never a path, never ``..``)."""
    return (
        isinstance(name, str)
        and len(name) <= MAX_NAME_LENGTH
        and SAFE_NAME_RE.match(name) is not None
        and ".." not in name
    )


def check_name(name: object, what: str) -> str:
    """``name`` if :func:`is_safe_name`, else a :class:`UserError` saying ``what`` it is and the rule."""
    if not is_safe_name(name):
        raise UserError(f"{what} {name!r} is not a safe name ({SAFE_NAME_RULE}): it names files and folders")
    return name  # type: ignore[return-value]


def inside(folder: str | os.PathLike[str], *parts: str) -> Path:
    """``folder/parts...``, refused when a part is absolute or holds ``..`` (the result would leave ``folder``).

    The check is on the names, not on the resolved path, so a folder that is itself a symlink still works.
    """
    rel = Path(*parts) if parts else Path()
    if rel.is_absolute() or ".." in rel.parts:
        raise UserError(f"refusing to write {Path(folder, *parts)}: the path leaves the folder {folder}")
    return Path(folder) / rel


def is_temporary(name: str) -> bool:
    """Whether a file name is one of :func:`atomic_path`'s temporaries (hidden, random part, same suffixes)."""
    return TEMP_RE.match(name) is not None


def remove_stale_temporaries(folder: str | os.PathLike[str], min_age_s: float = 0.0) -> list[Path]:
    """Delete the temporaries a killed writer left in ``folder`` (not below it); return those removed.

    Only files named as :func:`atomic_path` names them and last modified at least ``min_age_s`` seconds ago
    are removed (a positive age spares the temporaries of another process writing there right now).
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        if not is_temporary(p.name):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            if p.is_file() and now - p.stat().st_mtime >= min_age_s:
                p.unlink()
                removed.append(p)
    return removed


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
    try:
        tmp_path = _create_temp_beside(path)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise _write_error(path, exc) from None
        raise


def _write_error(path: Path, exc: OSError) -> Exception:
    """A disk-full / file-too-large / read-only error as one line naming ``path``; other errors unchanged."""
    if exc.errno in _WRITE_ERRNOS:
        return UserError(f"cannot write {path}: {os.strerror(exc.errno or 0)}; the file there (if any) is unchanged")
    return exc


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


class FolderLock:
    """Exclusive use of a folder by this process: ``flock`` on ``folder/.lock`` (holding this process's pid).

    The lock is atomic (the kernel grants it to one process) and dies with its process, so a run killed with
    ``kill -9`` never leaves a folder locked; the file itself is removed on release. POSIX only (``fcntl``).

    Args:
        folder: the folder (must exist when :meth:`acquire` is called).
        what: what the folder is, for the error message (``model folder``, ``sweep``).
    """

    def __init__(self, folder: str | os.PathLike[str], what: str = "folder") -> None:
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock, or raise :class:`UserError` naming the process that holds it."""
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                holder = f"process {pid}" if pid.isdigit() else "another process"
                stop = f" (kill {pid})" if pid.isdigit() else ""
                raise UserError(
                    f"{self.what} {self.folder} is in use by {holder}; wait for it to finish or "
                    f"stop it{stop}, then try again"
                ) from None
            try:  # the previous holder may have removed the file between our open and flock: lock a fresh one
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and let go of the lock (nothing when not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(self._fd), os.stat(self.path)):
                self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

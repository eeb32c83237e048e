"""The one-file model: ``udavae export RUN model.zip`` writes it; every command that loads a model reads it.

Layout (format version :data:`FORMAT_VERSION`; docs/reference/export.md)::

    manifest.json              format, format version, the udavae version that wrote it and the lowest that reads
                               it, the checkpoint and its epoch, and the size and sha256 of every other member
    config.yaml, model.json    as in the run folder (configuration; label map, preprocessing, domains)
    selection.json             the selection record, without case ids
    postprocessing.json        the post-processing decided for the exported checkpoint (when one was)
    training_data.json         the training data described by counts: domains, cases, labelled cases, splits
    checkpoints/<name>.pt      the chosen weights only (no optimiser state, no random state)

Reading is all or nothing and happens in one place, :func:`open_model_zip`: the zip is checked (a zip, a
udavae manifest, a format this version reads, only expected members, no absolute or ``..`` names, no links, no
oversized or over-compressed member), every member is extracted into a new temporary folder while its sha256 is
computed, and the folder is used only when every checksum matches; then it is an ordinary model folder. A
failure is one :class:`~udavae.errors.UserError` and leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from udavae.errors import UserError
from udavae.fileio import atomic_path, ensure_writable_dir, inside, read_json
from udavae.layout import CHECKPOINT_DIR, CONFIG_FILE, MODEL_FILE, POSTPROCESSING_FILE, SELECTION_FILE
from udavae.version import __version__

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "ExportedZip",
    "OpenedZip",
    "describe_training_data",
    "export_zip",
    "model_source",
    "open_model_zip",
]

FORMAT = "udavae-model-zip"
#: The zip layout's version: raised whenever a reader of the previous version could not use a new zip.
FORMAT_VERSION = 1
#: Format version -> the first udavae version that reads it (named in the error a too-old udavae gives).
FORMAT_INTRODUCED = {1: "0.1.0"}
MANIFEST = "manifest.json"
TRAINING_DATA = "training_data.json"
#: Members besides the weights: the first two are required.
_TEXT_MEMBERS = (CONFIG_FILE, MODEL_FILE, SELECTION_FILE, POSTPROCESSING_FILE, TRAINING_DATA)
_CHECKPOINT_MEMBER_RE = re.compile(rf"^{CHECKPOINT_DIR}/(best|last|ema|epoch_\d{{3}}(_ema)?)\.pt$")
#: Limits against damaged or hostile zips (a zip bomb, a gigantic "config"): the largest text member, the largest
#: weights file, and the largest ratio of uncompressed to compressed size of a member over 1 MiB.
MAX_TEXT_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 16 << 30
MAX_RATIO = 100
_CHUNK = 1 << 20
#: Selection-record keys holding case ids: not exported (the counts are in ``training_data.json``).
_CASE_ID_KEYS = ("labelfree_cases", "source_holdout")


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- writing
@dataclass
class ExportedZip:
    """What :func:`export_zip` wrote: the file, the checkpoint and epoch in it, and the file's sha256."""

    path: Path
    checkpoint: str
    epoch: int | None
    sha256: str


def describe_training_data(cfg: Any, info: Any, selection: dict[str, Any] | None) -> dict[str, Any]:
    """The training data as counts only (no case ids, no paths, no patient data), for ``training_data.json``.

    Per domain of the run (source, target): the number of cases, of labelled cases and of cases per split, read
    from the dataset the run names when it is still there (else ``available`` is false and only names are given);
    the run's data choices (target pool, validation and test splits) and how many source cases it held out of
    training and how many target cases it scored without labels.
    """
    from udavae.data.spec import DatasetSpec

    selection = selection or {}
    desc: dict[str, Any] = {
        "dataset": info.dataset_name,
        "source": {"domain": info.source},
        "target": {"domain": info.target},
        "target_pool": cfg.data.target_pool,
        "val_split": cfg.data.val_split,
        "test_split": cfg.data.test_split,
        "source_cases_held_out": len(selection.get("source_holdout") or []),
        "target_cases_scored_label_free": len(selection.get("labelfree_cases") or []),
    }
    try:
        spec = DatasetSpec.load(info.dataset_path)
    except UserError:
        desc["available"] = False
        return desc
    desc["available"] = True
    for role, domain in (("source", info.source), ("target", info.target)):
        cases = spec.domains.get(domain, [])
        desc[role].update(
            cases=len(cases),
            labelled=sum(c.label is not None for c in cases),
            splits={name: len(ids) for name, ids in spec.splits.get(domain, {}).items()},
        )
    return desc


def _zip_member(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=datetime.now().timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def export_zip(run: str | Path, out: str | Path, checkpoint: str = "selected") -> ExportedZip:
    """Write the model of ``run`` (a model folder, or a model zip) with one checkpoint's weights into ``out``.

    The weights are loaded and checked against the configuration first (the zip always loads); the zip is
    written to a temporary file and renamed, so ``out`` is either the old file or the complete new one.

    Raises:
        UserError: not a model folder, no such checkpoint, ``out`` is a folder or cannot be written.
    """
    import torch
    import yaml

    from udavae.engine import model_folder as mf

    out = Path(out)
    if out.is_dir():
        raise UserError(f"{out} is a folder: give the path of the zip file to write, e.g. {out / 'model.zip'}")
    with model_source(run, checkpoint) as (folder, name, _):
        cfg, info, _, state = mf.load_trained(folder, name, "cpu")
        selection = mf.read_selection(folder)
        pp = mf.load_postprocessing(folder, name)
        buf = io.BytesIO()
        torch.save({"method": state["method"], "epoch": state.get("epoch")}, buf)
        members: dict[str, bytes] = {
            CONFIG_FILE: yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode(),
            MODEL_FILE: _json_bytes(info.to_dict()),
            f"{CHECKPOINT_DIR}/{name}.pt": buf.getvalue(),
            TRAINING_DATA: _json_bytes(
                # a zip exported again keeps its description (its selection record has no case ids to count)
                read_json(folder / TRAINING_DATA)
                if (folder / TRAINING_DATA).is_file()
                else describe_training_data(cfg, info, selection)
            ),
        }
        if selection is not None:
            members[SELECTION_FILE] = _json_bytes({k: v for k, v in selection.items() if k not in _CASE_ID_KEYS})
        if pp is not None:
            members[POSTPROCESSING_FILE] = _json_bytes({name: pp.to_dict()})
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "udavae_version": __version__,
        "requires_udavae": FORMAT_INTRODUCED[FORMAT_VERSION],
        "torch_version": torch.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": name,
        "epoch": state.get("epoch"),
        "files": {k: {"size": len(v), "sha256": hashlib.sha256(v).hexdigest()} for k, v in members.items()},
    }
    members = {MANIFEST: _json_bytes(manifest), **members}
    ensure_writable_dir(out.parent)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        for member, data in members.items():
            zf.writestr(_zip_member(member), data)
    return ExportedZip(out, name, state.get("epoch"), sha256_file(out))


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


# ----------------------------------------------------------------------------------------------- reading
@dataclass
class OpenedZip:
    """A verified model zip extracted into a temporary model folder (removed by :meth:`close` or at exit).

    Attributes:
        path: the zip.
        folder: the model folder it was extracted into.
        checkpoint: the checkpoint it holds.
        manifest: its manifest.
    """

    path: Path
    folder: Path
    checkpoint: str
    manifest: dict[str, Any]
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    def close(self) -> None:
        """Remove the extracted folder."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> OpenedZip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _bad(path: Path, why: str) -> UserError:
    return UserError(f"model zip {path}: {why}; nothing was used from it")


def _read_manifest(path: Path, zf: zipfile.ZipFile) -> dict[str, Any]:
    """The manifest, checked: a udavae model zip of a format this version reads."""
    try:
        info = zf.getinfo(MANIFEST)
    except KeyError:
        raise _bad(path, f"no {MANIFEST} in it: not a udavae model zip (or its manifest was removed)") from None
    if info.file_size > MAX_TEXT_BYTES:
        raise _bad(path, f"{MANIFEST} is {info.file_size} bytes, over the limit of {MAX_TEXT_BYTES}")
    try:
        manifest = json.loads(zf.read(info).decode("utf-8"))
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _bad(path, f"the zip is corrupted ({exc})") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(path, f"{MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _bad(path, f"{MANIFEST} does not describe a udavae model zip (format {FORMAT!r})")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _bad(path, f"{MANIFEST} has no valid format_version (got {version!r})")
    if version > FORMAT_VERSION:
        needs = manifest.get("requires_udavae", "a newer version")
        raise UserError(
            f"model zip {path} was written by udavae {manifest.get('udavae_version', '?')} in model-zip format "
            f"{version}; this udavae ({__version__}) reads formats up to {FORMAT_VERSION}: it needs udavae >= "
            f"{needs} (pip install -U 'udavae>={needs}')"
        )
    files, name = manifest.get("files"), manifest.get("checkpoint")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict)
        and isinstance(v.get("size"), int)
        and isinstance(v.get("sha256"), str)
        and re.fullmatch(r"[0-9a-f]{64}", v["sha256"])
        for v in files.values()
    ):
        raise _bad(path, f"{MANIFEST} has no valid 'files' table (name -> size and sha256)")
    if not isinstance(name, str) or f"{CHECKPOINT_DIR}/{name}.pt" not in files:
        raise _bad(path, f"{MANIFEST} names no checkpoint that it lists (checkpoint {name!r})")
    return manifest


def _check_members(path: Path, zf: zipfile.ZipFile, manifest: dict[str, Any]) -> list[zipfile.ZipInfo]:
    """The members to extract: exactly the manifest's files, each with a safe name, a plain file, within limits."""
    files: dict[str, Any] = manifest["files"]
    seen: set[str] = set()
    members = []
    for info in zf.infolist():
        name = info.filename
        if name in seen:
            raise _bad(path, f"member {name!r} appears twice")
        seen.add(name)
        if name.startswith("/") or "\\" in name or ".." in name.split("/") or re.match(r"^[A-Za-z]:", name):
            raise _bad(path, f"member {name!r} has an absolute or '..' path")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise _bad(path, f"member {name!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise _bad(path, f"member {name!r} is encrypted")
        if name == MANIFEST:
            continue
        weights = _CHECKPOINT_MEMBER_RE.match(name) is not None
        if name not in files or not (weights or name in _TEXT_MEMBERS) or info.is_dir():
            raise _bad(path, f"unexpected member {name!r} (not a file of a udavae model zip, or not in {MANIFEST})")
        limit = MAX_WEIGHTS_BYTES if weights else MAX_TEXT_BYTES
        if info.file_size > limit:
            raise _bad(path, f"member {name!r} is {info.file_size} bytes, over the limit of {limit}")
        if info.file_size != files[name]["size"]:
            raise _bad(path, f"member {name!r} is {info.file_size} bytes but {MANIFEST} says {files[name]['size']}")
        if info.file_size > _CHUNK and info.file_size > MAX_RATIO * max(1, info.compress_size):
            ratio = info.file_size / max(1, info.compress_size)
            raise _bad(path, f"member {name!r} expands {ratio:.0f}-fold, over the limit of {MAX_RATIO} (a zip bomb?)")
        members.append(info)
    missing = sorted(set(files) - seen)
    for required in (CONFIG_FILE, MODEL_FILE):
        if required not in files:
            missing.append(required)
    if missing:
        raise _bad(path, f"member(s) {', '.join(sorted(set(missing)))} missing (truncated or altered zip)")
    return members


def _extract(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, folder: Path, expected: dict) -> None:
    """Stream one member into ``folder``, refusing more bytes than declared and a wrong sha256."""
    target = inside(folder, *info.filename.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    with zf.open(info) as src, open(target, "xb") as dst:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            size += len(chunk)
            if size > info.file_size:
                raise _bad(path, f"member {info.filename!r} holds more data than it declares")
            h.update(chunk)
            dst.write(chunk)
    if size != expected["size"] or h.hexdigest() != expected["sha256"]:
        raise _bad(
            path,
            f"checksum mismatch for {info.filename!r} (sha256 {h.hexdigest()[:12]}..., {MANIFEST} says "
            f"{expected['sha256'][:12]}...): the file was damaged or altered",
        )


def read_zip_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a model zip (checked, members not extracted), for a quick look."""
    path = Path(path)
    with _open_zipfile(path) as zf:
        return _read_manifest(path, zf)


@contextmanager
def _open_zipfile(path: Path) -> Iterator[zipfile.ZipFile]:
    if not path.is_file():
        raise UserError(f"model {path} not found" if not path.exists() else f"{path} is not a file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        if head == b"PK\x03\x04":
            raise _bad(path, f"the zip is corrupted or truncated ({exc})") from None
        raise UserError(
            f"{path} is neither a udavae model folder nor a model zip (not a zip file): give a folder "
            "written by 'udavae train' or a zip written by 'udavae export'"
        ) from None
    with zf:
        yield zf


def open_model_zip(path: str | Path, checkpoint: str = "selected") -> OpenedZip:
    """Verify a model zip and extract it into a temporary model folder (see the module docstring).

    Args:
        path: the zip.
        checkpoint: ``selected`` or the name of the checkpoint the zip holds (it holds one).

    Raises:
        UserError: not a zip / not a udavae model zip / corrupted or truncated / checksum mismatch / written in a
            newer format (naming the udavae version it needs) / another checkpoint asked for.
    """
    path = Path(path)
    with _open_zipfile(path) as zf:
        manifest = _read_manifest(path, zf)
        held = manifest["checkpoint"]
        if checkpoint not in ("selected", held):
            raise UserError(
                f"model zip {path} holds the '{held}' weights only (exported with --checkpoint {held}), not "
                f"'{checkpoint}': use --checkpoint selected or {held}, or export the run again"
            )
        members = _check_members(path, zf, manifest)
        tmp = tempfile.TemporaryDirectory(prefix="udavae-model-")
        try:
            for info in members:
                _extract(path, zf, info, Path(tmp.name), manifest["files"][info.filename])
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            tmp.cleanup()
            raise _bad(path, f"the zip is corrupted ({exc})") from None
        except BaseException:
            tmp.cleanup()
            raise
    return OpenedZip(path, Path(tmp.name), held, manifest, tmp)


@contextmanager
def model_source(run: str | Path, checkpoint: str = "selected") -> Iterator[tuple[Path, str, dict | None]]:
    """``(model folder, checkpoint name, manifest)`` of a model folder (manifest None) or of a model zip
    (verified and extracted into a temporary folder meanwhile).

    ``selected`` is resolved: to the one ``selection.json`` names in a folder, to the one a zip holds.
    """
    from udavae.engine.model_folder import resolve_checkpoint

    run = Path(run)
    if run.is_dir() or not run.exists():
        yield run, resolve_checkpoint(run, checkpoint), None
        return
    with open_model_zip(run, checkpoint) as opened:
        yield opened.folder, opened.checkpoint, opened.manifest

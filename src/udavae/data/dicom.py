"""DICOM input: the series of a folder, read with SimpleITK as volumes in udavae's NIfTI conventions.

Scans often arrive as DICOM series (one file per 2-D slice) rather than NIfTI files. :func:`find_series` walks a
folder (nested folders included) and lists every series by its ``SeriesInstanceUID``; :func:`load_series` reads
one as a :class:`~udavae.data.nifti.Volume` whose array, affine and header are what the rest of udavae reads
from a NIfTI file, so a mask predicted on it is written as NIfTI in the scan's geometry.

Geometry: DICOM (and SimpleITK) state positions in LPS millimetres, NIfTI and nibabel in RAS. The voxel
``(i, j, k)`` of the array ``data[i, j, k]`` (columns, rows, slices) lies at ``origin + D @ diag(spacing) @
(i, j, k)`` in LPS, hence at ``diag(-1, -1, 1) @ that`` in RAS: the affine keeps the spacing, turns the origin and
the direction's rows x and y. The slices are ordered along the normal of the image plane (row x column
direction), as DICOM readers order them, whatever the file names or instance numbers say.

Only DICOM Part 10 files (``DICM`` at byte 128) are looked at. A series is refused, with one error naming its
folder, when it has a single file, slices of different sizes or orientations, slices at the same position
(several stacks or phases in one series) or unevenly spaced, colour pixels, or when a file that looks like DICOM
cannot be read. SimpleITK is an optional dependency: ``pip install 'udavae[dicom]'``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from udavae.data.nifti import Volume, is_nifti, spacing_problem
from udavae.errors import DataError, UserError
from udavae.fileio import MAX_NAME_LENGTH, check_name, write_text

__all__ = [
    "DicomSeries",
    "find_series",
    "load_series",
    "looks_like_dicom",
    "read_series_folder",
    "series_stem",
    "write_series_csv",
]

INSTALL_HINT = "pip install 'udavae[dicom]'"
#: LPS <-> RAS: x and y change sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
#: Largest relative difference between slice gaps (and between slice orientations) still read as one grid.
_GAP_TOLERANCE = 0.01
_DIRECTION_TOLERANCE = 1e-4
#: The DICOM tags of ``series.csv`` (``group|element`` as SimpleITK names them).
_TAGS = {
    "patient_id": "0010|0020",
    "study_description": "0008|1030",
    "series_description": "0008|103e",
    "modality": "0008|0060",
}
#: Suffix of the longest output name of a series (its uncertainty map), kept within the name length limit.
_LONGEST_SUFFIX = "_uncertainty"


def _sitk() -> Any:
    """The SimpleITK module, or a :class:`UserError` naming the extra that installs it."""
    try:
        import SimpleITK
    except ImportError:
        raise UserError(f"reading DICOM needs SimpleITK, which is not installed: {INSTALL_HINT}") from None
    return SimpleITK


def looks_like_dicom(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file (the ``DICM`` marker after the 128-byte preamble)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def series_stem(uid: str) -> str:
    """The file-name stem of a series' mask: its UID with every character outside ``A-Za-z0-9._-`` as ``_``.

    Raises:
        UserError: the result is not a safe file name (see :func:`udavae.fileio.check_name`).
    """
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", uid.strip())
    stem = re.sub(r"\.{2,}", ".", stem).lstrip("._-")[: MAX_NAME_LENGTH - len(_LONGEST_SUFFIX)]
    return check_name(stem, "DICOM series UID")


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series found in a folder.

    Attributes:
        uid: its ``SeriesInstanceUID``.
        folder: the folder that holds its files.
        files: its files, ordered along the slice normal.
        info: patient id, study and series descriptions, modality (empty strings when absent).
    """

    uid: str
    folder: Path
    files: tuple[Path, ...]
    info: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.folder} (DICOM series {self.uid})"

    @property
    def stem(self) -> str:
        """The file-name stem of its mask (:func:`series_stem`)."""
        return series_stem(self.uid)

    def load(self) -> Volume:
        """Read the series (:func:`load_series`)."""
        return load_series(self)


def _dicom_files(folder: Path) -> dict[Path, list[Path]]:
    """Folder -> its DICOM files, for ``folder`` and every folder below it, sorted; hidden files and folders and
    the index file ``DICOMDIR`` of exported media are skipped."""
    found: dict[Path, list[Path]] = {}
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files = [
            Path(root, n)
            for n in sorted(names)
            if not n.startswith(".") and n.upper() != "DICOMDIR" and not is_nifti(Path(n)) and Path(root, n).is_file()
        ]
        dicom = [f for f in files if looks_like_dicom(f)]
        if dicom:
            found[Path(root)] = dicom
    return found


def find_series(folder: str | Path) -> list[DicomSeries]:
    """Every DICOM series in ``folder`` and the folders below it, in folder order.

    Folders without DICOM files cost a directory listing and 132 bytes per file; SimpleITK is imported only
    when there is a DICOM file.

    Raises:
        UserError: SimpleITK is missing while there are DICOM files.
        DataError: a file that looks like DICOM belongs to no readable series (corrupt, truncated), or one
            series UID is found in two folders.
    """
    folder = Path(folder)
    found = _dicom_files(folder)
    if not found:
        return []
    sitk = _sitk()
    reader = sitk.ImageSeriesReader()
    series: list[DicomSeries] = []
    seen: dict[str, Path] = {}
    for where, dicom in found.items():
        ids = reader.GetGDCMSeriesIDs(str(where))
        wanted, in_series = set(dicom), set[Path]()
        for uid in ids:
            listed = (Path(f) for f in reader.GetGDCMSeriesFileNames(str(where), uid))
            files = tuple(f for f in listed if f in wanted)  # not the hidden files GDCM also reads
            if not files:
                continue
            in_series.update(files)
            if uid in seen:
                raise DataError(
                    f"DICOM series {uid} is split between {seen[uid]} and {where}: put its files in one folder"
                )
            seen[uid] = where
            series.append(DicomSeries(uid, where, files, _series_info(sitk, files[0])))
        unread = [f for f in dicom if f not in in_series]
        if unread:
            shown = ", ".join(f.name for f in unread[:3]) + (" ..." if len(unread) > 3 else "")
            raise DataError(
                f"{where}: {len(unread)} file(s) look like DICOM but cannot be read as part of a series ({shown}): "
                "corrupt, truncated or without a SeriesInstanceUID; remove or replace them"
            )
    return series


def _series_info(sitk: Any, first: Path) -> tuple[tuple[str, str], ...]:
    """The ``series.csv`` descriptions of a series, from the header of its first file."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(first))
    try:
        reader.ReadImageInformation()
    except RuntimeError:  # reported when the series is read
        return tuple((k, "") for k in _TAGS)
    return tuple((k, reader.GetMetaData(t).strip() if reader.HasMetaDataKey(t) else "") for k, t in _TAGS.items())


def _ordered_files(sitk: Any, series: DicomSeries) -> list[Path]:
    """The files of a series ordered along the slice normal, after checking that they form one 3-D grid.

    Raises:
        DataError: unreadable header, not one 2-D grey-level slice per file, sizes or orientations differ,
            slices share a position or are unevenly spaced.
    """
    where = f"{series.folder}: DICOM series {series.uid}"
    if len(series.files) < 2:
        raise DataError(
            f"{where} has a single file ({series.files[0].name}): udavae reads series of 2-D slices, one file "
            "per slice, at least 2 (multi-frame DICOM is not supported)"
        )
    reader = sitk.ImageFileReader()
    heads = []
    for f in series.files:
        reader.SetFileName(str(f))
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise DataError(f"{where}: {f.name} cannot be read ({_first_line(exc)})") from None
        size = tuple(reader.GetSize())
        if len(size) == 3 and size[2] != 1:
            raise DataError(f"{where}: {f.name} holds {size[2]} frames; udavae reads one slice per file")
        if reader.GetNumberOfComponents() != 1:
            raise DataError(f"{where}: {f.name} is a colour image; udavae reads grey-level MR slices")
        direction = np.array(reader.GetDirection(), dtype=float).reshape(3, 3)
        heads.append((f, size[:2], np.array(reader.GetOrigin(), dtype=float), direction))
    f0, size0, _, dir0 = heads[0]
    for f, size, _, direction in heads[1:]:
        if size != size0:
            raise DataError(f"{where}: slices of different sizes ({f0.name} {size0}, {f.name} {size})")
        if np.abs(direction - dir0).max() > _DIRECTION_TOLERANCE:
            raise DataError(f"{where}: slices of different orientations ({f0.name}, {f.name})")
    normal = dir0[:, 2]
    heads.sort(key=lambda h: float(h[2] @ normal))
    gaps = np.diff([float(h[2] @ normal) for h in heads])
    if gaps.min() <= 1e-6 * max(1.0, float(np.abs(gaps).max())):
        raise DataError(
            f"{where}: several slices at one position (two stacks or several phases in one series, or no "
            "ImagePositionPatient); export one 3-D stack per series"
        )
    if np.abs(gaps - gaps.mean()).max() > _GAP_TOLERANCE * gaps.mean():
        raise DataError(
            f"{where}: unevenly spaced slices (gaps {gaps.min():.3g} to {gaps.max():.3g} mm; missing slices?)"
        )
    return [h[0] for h in heads]


def _first_line(exc: Exception) -> str:
    """The last non-empty line of an ITK error (the first ones name ITK's source files)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def load_series(series: DicomSeries) -> Volume:
    """Read a DICOM series as a float32 volume (x, y, z) with a RAS affine, as from a NIfTI file.

    Intensities are the stored values with the rescale slope and intercept applied. ``Volume.path`` is the
    series' folder.

    Raises:
        UserError: SimpleITK is missing.
        DataError: a bad series (see the module's description) or an implausible spacing, naming the folder.
    """
    sitk = _sitk()
    files = _ordered_files(sitk, series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise DataError(f"{series}: cannot be read ({_first_line(exc)})") from None
    spacing = tuple(float(s) for s in image.GetSpacing())
    if spacing_problem(spacing):
        shown = ", ".join(f"{s:g}" for s in spacing)
        raise DataError(f"{series}: implausible voxel spacing ({shown}) mm from PixelSpacing and the slice positions")
    data = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)
    lps = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ lps @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.float32)
    header.set_qform(affine, code=1)  # scanner coordinates
    header.set_sform(affine, code=1)
    header.set_zooms(spacing)
    header.set_xyzt_units("mm")
    return Volume(data=data, affine=affine, spacing=spacing, header=header, path=series.folder)  # type: ignore[arg-type]


def read_series_folder(folder: str | Path) -> Volume:
    """The one DICOM series of ``folder`` (and the folders below it), read.

    Raises:
        DataError: no series, or more than one.
    """
    found = find_series(folder)
    if len(found) != 1:
        what = "no DICOM series" if not found else f"{len(found)} DICOM series ({', '.join(s.uid for s in found)})"
        raise DataError(f"{folder} holds {what}; give a folder with exactly one, or use predict_folder")
    return found[0].load()


def write_series_csv(path: Path, written: Sequence[tuple[DicomSeries, Path]]) -> Path:
    """``series.csv``: per series written, its UID, descriptions, number of slices, folder and mask (atomic)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["series_uid", *_TAGS, "n_slices", "folder", "mask"])
    for series, mask in written:
        info = dict(series.info)
        w.writerow([series.uid, *(info.get(k, "") for k in _TAGS), len(series.files), series.folder, mask.name])
    return write_text(path, buf.getvalue())

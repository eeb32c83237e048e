"""NIfTI reading and writing with the geometry kept (nibabel).

Arrays keep nibabel's axis order (x, y, z): a 2-D slice is ``data[:, :, k]``. Writing a mask "like" an
input copies the input's affine and header, so shape, spacing, origin and direction are those of the
input exactly.

The voxel spacing is read as the file states it: nibabel silently turns a zero ``pixdim`` into 1 mm, which
would make every distance and volume wrong, so a spacing of 0, NaN or Inf, or over
:data:`MAX_SPACING_MM`, is refused (:class:`GeometryError`) wherever a volume is read.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from udavae.errors import DataError
from udavae.fileio import atomic_path

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: Largest plausible voxel side in mm (cardiac MR slices are at most ~20 mm thick; 100 leaves room).
MAX_SPACING_MM = 100.0


class GeometryError(DataError):
    """A volume's voxel spacing is implausible (0, NaN/Inf, or larger than :data:`MAX_SPACING_MM`)."""


def _not_zero_pixdim_fix(record: logging.LogRecord) -> bool:
    """Drop nibabel's "setting 0 dims to 1" log line: udavae reports a zero spacing itself, as an error."""
    return "should be non-zero; setting 0 dims to 1" not in record.getMessage()


nib.imageglobals.logger.addFilter(_not_zero_pixdim_fix)


@dataclass
class Volume:
    """A 3-D image and its geometry.

    Attributes:
        data: array of shape (x, y, z).
        affine: 4x4 voxel-to-world matrix (origin and direction).
        spacing: voxel size in mm along x, y, z.
        header: the original NIfTI header (copied when writing a volume "like" this one).
        path: the file it was read from.
    """

    data: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    header: nib.Nifti1Header
    path: Path


def is_nifti(path: Path) -> bool:
    """True for ``*.nii`` / ``*.nii.gz`` file names."""
    return path.name.endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """``patient1_C0.nii.gz`` -> ``patient1_C0``."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_header(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header only), with a clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise DataError(f"{path}: not a readable NIfTI file ({exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: not a NIfTI image ({type(img).__name__})")
    return img


def file_zooms(img: nib.Nifti1Image, path: Path) -> tuple[float, ...]:
    """The voxel sizes as the file stores them (``pixdim``), before nibabel replaces a 0 by 1."""
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            raw = type(img.header).from_fileobj(f, check=False)
        pixdim = raw["pixdim"][1 : 1 + len(img.header.get_zooms())]
        return tuple(abs(float(z)) for z in pixdim)
    except Exception:  # an odd header: keep what nibabel read (the data read reports real corruption)
        return tuple(float(z) for z in img.header.get_zooms())


def spacing_problem(spacing: tuple[float, ...]) -> str | None:
    """Why a voxel spacing (mm) is implausible, or None when every side is finite, > 0 and <= the maximum."""
    values = [float(v) for v in spacing]
    if all(np.isfinite(v) and 0 < v <= MAX_SPACING_MM for v in values):
        return None
    shown = ", ".join(f"{v:g}" for v in values)
    return (
        f"implausible voxel spacing ({shown}) mm: every side must be > 0 and <= {MAX_SPACING_MM:g} mm "
        "(fix the header's pixdim)"
    )


def load_volume(path: str | Path, dtype: type | None = np.float32, require_3d: bool = True) -> Volume:
    """Read a NIfTI volume and its geometry.

    A trailing singleton 4th axis is dropped. Errors name the file: missing, corrupt gzip, truncated
    data, not 3-D, implausible spacing (:class:`GeometryError`).
    """
    path = Path(path)
    img = read_header(path)
    try:
        data = np.asanyarray(img.dataobj)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise DataError(f"{path}: corrupt or truncated data ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if require_3d and data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got {data.ndim}-D with shape {data.shape}")
    if dtype is not None:
        data = np.asarray(data, dtype=dtype)
    zooms = file_zooms(img, path)[: min(data.ndim, 3)]
    problem = spacing_problem(zooms)
    if problem:
        raise GeometryError(f"{path}: {problem}")
    spacing = (zooms + (1.0, 1.0, 1.0))[:3]
    return Volume(
        data=data,
        affine=np.asarray(img.affine, dtype=np.float64),
        spacing=spacing,  # type: ignore[arg-type]
        header=img.header,
        path=path,
    )


def save_like(data: np.ndarray, reference: Volume, path: str | Path, dtype: type = np.int16) -> Path:
    """Write ``data`` with the affine and header of ``reference``, atomically.

    Raises:
        ValueError: ``data`` does not have the reference's shape.
    """
    path = Path(path)
    img = _image_like(data, reference, path, dtype)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path


def save_all_like(
    volumes: Sequence[tuple[np.ndarray, str | Path, type]], reference: Volume, remove: Sequence[Path] = ()
) -> list[Path]:
    """Write several ``(data, path, dtype)`` volumes like ``reference`` as one unit (a mask and its map).

    Every volume is written to a temporary file first; only then are the files in ``remove`` deleted (e.g. the
    old map beside a mask) and the temporaries renamed, in the order given. A failure while writing leaves every
    file as it was; a kill during the renames can leave the first files new and the later ones missing, never a
    new first file beside an old later one.
    """
    images = [(_image_like(data, reference, Path(path), dtype), Path(path)) for data, path, dtype in volumes]
    with contextlib.ExitStack() as stack:
        # entered last to first: the stack renames in reverse order of entry, i.e. in the order given
        temps = [stack.enter_context(atomic_path(path)) for _, path in reversed(images)][::-1]
        for (img, _), tmp in zip(images, temps):
            nib.save(img, str(tmp))
        for path in [*remove, *(p for _, p in images[1:])]:
            Path(path).unlink(missing_ok=True)
    return [path for _, path in images]


def _image_like(data: np.ndarray, reference: Volume, path: Path, dtype: type) -> nib.Nifti1Image:
    """A NIfTI image of ``data`` with the affine, header and voxel sizes of ``reference``."""
    if tuple(data.shape) != tuple(reference.data.shape):
        raise ValueError(f"cannot write {path}: shape {data.shape} != reference shape {reference.data.shape}")
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine, header=header)
    # Keep the reference's qform/sform codes (nibabel resets them when the affine is passed).
    img.set_qform(reference.affine, code=int(reference.header["qform_code"]) or 1)
    img.set_sform(reference.affine, code=int(reference.header["sform_code"]) or 1)
    # set_qform rewrites pixdim from the affine; keep the reference's own voxel sizes exactly.
    img.header.set_zooms(reference.header.get_zooms()[: data.ndim])
    img.header["scl_slope"] = 1.0
    img.header["scl_inter"] = 0.0
    return img


def save_volume(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    spacing: tuple[float, ...] | None = None,
    dtype: type | None = None,
) -> Path:
    """Write a new NIfTI volume (no reference header), atomically."""
    path = Path(path)
    arr = np.asarray(data, dtype=dtype) if dtype is not None else np.asarray(data)
    img = nib.Nifti1Image(arr, affine)
    if spacing is not None:
        img.header.set_zooms(tuple(spacing)[: arr.ndim])
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return path

"""Writing a volume as a DICOM series (SimpleITK), as a scanner would: the `write_dicom_series` fixture."""

from __future__ import annotations

import locale
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

#: NIfTI (RAS) <-> DICOM (LPS).
LPS = np.diag([-1.0, -1.0, 1.0])


def _write_series(
    data: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    uid: str,
    tags: dict[str, str] | None = None,
    names: Callable[[int], str] = lambda k: f"IM{k:04d}.dcm",
) -> np.ndarray:
    """Write ``data`` (x, y, z, >= 0) with the NIfTI ``affine`` as one DICOM file per slice; return the voxels the
    files hold.

    The values are stored as uint16 with a rescale slope that is a power of two, so the returned volume (what a
    reader must give back) is exact in float32. Each file states its own ImagePositionPatient and
    ImageOrientationPatient (as a scanner writes them), from which readers rebuild the geometry. GDCM's writer
    leaves the process in the "C" locale (Python's default encoding then becomes ASCII), so the locale is restored.
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write(data, affine, folder, uid, tags, names)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write(
    data: np.ndarray,
    affine: np.ndarray,
    folder: Path,
    uid: str,
    tags: dict[str, str] | None,
    names: Callable[[int], str],
) -> np.ndarray:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    m = affine[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    direction = LPS @ m / spacing
    slope = 2.0 ** np.floor(np.log2(max(float(data.max()), 1e-12) / 65535) + 1)
    held = np.round(np.asarray(data, np.float64) / slope) * slope
    image = sitk.GetImageFromArray(held.transpose(2, 1, 0))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((LPS @ affine[:3, 3]).tolist())
    image.SetDirection(direction.flatten().tolist())
    orientation = "\\".join(f"{v:.12g}" for v in [*direction[:, 0], *direction[:, 1]])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        slice_tags = {
            "0008|0060": "MR",
            "0010|0020": "PAT-7",
            "0008|1030": "cardiac MR",
            "0008|103e": "LGE short axis",
            "0020|000d": f"{uid}.0",
            "0020|000e": uid,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.12g}" for v in position),
            "0020|0037": orientation,
            "0018|0050": f"{spacing[2]:.12g}",
            "0028|1052": "0",
            "0028|1053": repr(float(slope)),
            "0028|0100": "16",
            "0028|0101": "16",
            "0028|0102": "15",
            "0028|0103": "0",
            **(tags or {}),
        }
        for tag, value in slice_tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / names(k)))
        writer.Execute(plane)
    return held.astype(np.float32)


@pytest.fixture(scope="session")
def write_dicom_series() -> Callable[..., np.ndarray]:
    """``write(data, affine, folder, uid, tags=None, names=None)``: a volume as a DICOM series (skips without
    SimpleITK)."""
    pytest.importorskip("SimpleITK")
    return _write_series

"""Loading a domain's volumes once into memory as preprocessed 2-D slice stacks.

Training reads only from these in-memory stacks, so per-item work is an array slice. Evaluation keeps,
per case, the original label volume and geometry so metrics are computed at the native resolution.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from udavae.data.nifti import Volume, load_volume
from udavae.data.preprocessing import Geometry, Preprocessing
from udavae.data.spec import Case, DatasetSpec, LabelMap
from udavae.errors import DataError


@dataclass
class LoadedCase:
    """One case after preprocessing.

    Attributes:
        id: case id.
        image: float32 slices (z, H, W) in [0, 1] on the network grid.
        label: uint8 class slices (z, H, W) on the network grid, or None.
        geometry: record to map predictions back to the original grid.
        native_label: class indices (x, y, z) on the original grid, or None.
        spacing: original voxel spacing (mm).
        reference: the original image volume (geometry for writing masks).
    """

    id: str
    image: torch.Tensor
    label: torch.Tensor | None
    geometry: Geometry
    native_label: np.ndarray | None
    spacing: tuple[float, float, float]
    reference: Volume


def load_image(
    path: str | Path | Volume, prep: Preprocessing, whole: bool = True
) -> tuple[Volume, torch.Tensor, Geometry]:
    """Read an image volume (or take one already read), refuse NaN/Inf, and preprocess it: (volume, slices
    (z, H, W), geometry).

    ``whole`` (default, for prediction): the slices are padded but never cropped, so no part of the scan is
    lost; ``whole=False`` crops to the preprocessing's ``size`` as training does.

    Raises:
        DataError: unreadable file, NaN/Inf, implausible spacing or resampled size (naming the file).
    """
    vol = path if isinstance(path, Volume) else load_volume(path)
    if not np.isfinite(vol.data).all():
        raise DataError(f"{vol.path}: image contains NaN or Inf values")
    try:
        image, geom = prep.image(vol.data, vol.spacing, whole=whole)
    except ValueError as exc:
        raise DataError(f"{vol.path}: {exc}") from None
    return vol, image, geom


def load_case(
    spec: DatasetSpec, case: Case, prep: Preprocessing, labels: LabelMap, with_label: bool = True, whole: bool = False
) -> LoadedCase:
    """Read, check and preprocess one case (image and, if asked and present, its label).

    ``whole``: keep whole slices (cases that are predicted: validation, evaluation); default the training crop.
    """
    vol, image, geom = load_image(spec.path(case.image), prep, whole=whole)
    label = native = None
    if with_label and case.label is not None:
        lab = load_volume(spec.path(case.label), dtype=None)
        if lab.data.shape != vol.data.shape:
            raise DataError(f"{lab.path}: label shape {lab.data.shape} != image shape {vol.data.shape}")
        native = labels.to_classes(lab.data, source=lab.path)
        label = prep.label(native, vol.spacing, whole=whole)
    return LoadedCase(case.id, image, label, geom, native, vol.spacing, vol)


def load_cases(
    spec: DatasetSpec,
    cases: list[Case],
    prep: Preprocessing | None = None,
    with_labels: bool = True,
    desc: str = "loading",
    workers: int = 2,
    whole: bool = False,
) -> list[LoadedCase]:
    """Load several cases in parallel threads (gzip inflation releases the GIL), in order.

    ``whole``: whole slices for cases that are predicted (sizes then differ between cases); default the
    training crop to the preprocessing's ``size``.
    """
    prep = prep or spec.preprocessing
    if not cases:
        return []

    def one(c: Case) -> LoadedCase:
        return load_case(spec, c, prep, spec.labels, with_labels, whole)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        it = pool.map(one, cases)
        return list(tqdm(it, total=len(cases), desc=desc, unit="vol", leave=False, disable=None))


@dataclass
class SliceStack:
    """All slices of a set of cases, stacked for O(1) indexing.

    Attributes:
        images: float32 (N, H, W).
        labels: uint8 (N, H, W) or None for an unlabelled pool.
        case_index: int64 (N,) index of each slice's case.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    case_index: torch.Tensor

    @classmethod
    def from_cases(cls, cases: list[LoadedCase], with_labels: bool) -> SliceStack:
        if not cases:
            raise DataError("no cases to train on (empty domain or split)")
        if with_labels:
            missing = [c.id for c in cases if c.label is None]
            if missing:
                raise DataError(f"source cases without labels cannot be used for training: {missing}")
        images = torch.cat([c.image for c in cases])
        labels = torch.cat([c.label for c in cases]) if with_labels else None  # type: ignore[misc]
        index = torch.cat([torch.full((c.image.shape[0],), i, dtype=torch.int64) for i, c in enumerate(cases)])
        return cls(images.contiguous(), labels.contiguous() if labels is not None else None, index)

    def __len__(self) -> int:
        return int(self.images.shape[0])

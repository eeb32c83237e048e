"""The udavae parts of an exported MONAI bundle, named by ``_target_`` in its ``configs/inference.json``.

A bundle written by ``udavae export RUN DIR --format monai-bundle`` runs with MONAI's own machinery
(``python -m monai.bundle run``: ``LoadImaged``, ``Compose``, ``Dataset``, ``AsDiscreted``, ``MapLabelValued``,
``SaveImaged``). The steps below are udavae's because MONAI has no transform that computes the same numbers, and
the bundle must write the masks ``udavae predict`` writes, voxel for voxel (docs/reference/export.md):

* :class:`ToSlicesd`: udavae's intensity normalisation (``np.percentile`` clipping) and in-plane resampling
  (torch's anti-aliased bilinear), as :meth:`udavae.data.preprocessing.Preprocessing.image` does them;
* :class:`SliceInferer`: the whole-slice inference of :class:`udavae.engine.inference.Predictor` (padding to the
  network stride, batches of slices, softmax);
* :class:`ToNativeGridd`: the way back to the scan's grid
  (:meth:`~udavae.data.preprocessing.Preprocessing.invert_probabilities`);
* :class:`KeepLargestComponentd`: udavae's largest-component filter (scipy, 26-connectivity, ties to the first
  component; MONAI's needs scikit-image and breaks ties the other way);
* :class:`SegmentationNetwork`: the UDA-VAE network returning the fusion head's logits;
* :class:`Segmenter`: the loop over the scans (MONAI's evaluators need pytorch-ignite and batch collation).

Each calls the function ``udavae predict`` calls, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from udavae.config import ModelConfig
from udavae.data.nifti import file_zooms, read_header, spacing_problem
from udavae.data.preprocessing import Geometry, Preprocessing
from udavae.errors import DataError
from udavae.evaluation.postprocess import keep_largest_component
from udavae.models.unet_vae import UNetVAE

__all__ = [
    "KeepLargestComponentd",
    "SegmentationNetwork",
    "Segmenter",
    "SliceInferer",
    "ToNativeGridd",
    "ToSlicesd",
]

#: Keys :class:`ToSlicesd` adds beside the image: its geometry record and the scan's metadata (for writing).
GEOMETRY_SUFFIX = "_geometry"
META_SUFFIX = "_meta_dict"


class SegmentationNetwork(nn.Module):
    """udavae's segmentation network (:class:`~udavae.models.unet_vae.UNetVAE`) returning logits only.

    ``forward(x)`` maps B x 1 x H x W images (H, W multiples of ``2 ** (depth - 1)``) to B x K x H x W logits of
    the fusion head, the latent means used as at prediction (no sampling): the interface MONAI's
    ``verify_net_in_out`` checks. The weights are those of ``method.net`` in a udavae checkpoint, under ``net.``.
    """

    def __init__(
        self,
        num_classes: int,
        base_width: int = 64,
        depth: int = 5,
        wiring: str = "skip",
        mean_head: str = "gate",
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        cfg = ModelConfig(base_width=base_width, depth=depth, wiring=wiring, mean_head=mean_head, dropout=dropout)
        self.net = UNetVAE(cfg, num_classes)

    @property
    def stride(self) -> int:
        """Input sides must be multiples of this."""
        return self.net.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, sample=False).logits


def _plain(x: Any) -> Any:
    """A MetaTensor as a plain tensor (other values unchanged)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class ToSlicesd:
    """Scan (x, y, z) -> float32 network slices (z, H, W) in [0, 1], as ``udavae predict`` preprocesses it.

    Intensities normalised per volume, slices resampled in-plane and padded (never cropped) to at least ``size``
    (:meth:`udavae.data.preprocessing.Preprocessing.image` with ``whole=True``). The spacing is the file's
    ``pixdim``, read as udavae reads it (a zero, NaN or implausible spacing is refused). Adds ``<key>_geometry``
    (the way back) and ``<key>_meta_dict`` (the scan's metadata, for ``SaveImaged``).

    Args:
        keys: the image key(s), loaded by ``LoadImaged`` (a MetaTensor with the scan's metadata).
        **rules: the preprocessing (``intensity``, ``lower``, ``upper``, ``target_spacing``, ``zoom``, ``size``).
    """

    def __init__(self, keys: str | Sequence[str], **rules: Any) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.prep = Preprocessing.from_dict(rules)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            image = d[key]
            meta = dict(getattr(image, "meta", None) or d.get(f"{key}{META_SUFFIX}", {}))
            name = meta.get("filename_or_obj", key)
            volume = np.asarray(_plain(image), dtype=np.float32)
            if volume.ndim == 4 and volume.shape[3] == 1:  # a trailing singleton axis, dropped as udavae does
                volume = volume[..., 0]
            if volume.ndim != 3:
                raise DataError(f"{name}: expected a 3-D volume, got shape {volume.shape}")
            if not np.isfinite(volume).all():
                raise DataError(f"{name}: image contains NaN or Inf values")
            spacing = _spacing(meta)
            problem = spacing_problem(spacing)
            if problem:
                raise DataError(f"{name}: {problem}")
            try:
                slices, geom = self.prep.image(volume, spacing, whole=True)
            except ValueError as exc:
                raise DataError(f"{name}: {exc}") from None
            d[key], d[f"{key}{GEOMETRY_SUFFIX}"], d[f"{key}{META_SUFFIX}"] = slices, geom, meta
        return d


def _spacing(meta: Mapping[str, Any]) -> tuple[float, ...]:
    """The voxel spacing as udavae reads it: the file's own ``pixdim`` (nibabel turns a 0 into 1 in ``meta``)."""
    name = meta.get("filename_or_obj")
    if isinstance(name, (str, Path)) and Path(name).is_file():
        return file_zooms(read_header(name), Path(name))[:3]
    pixdim = meta.get("pixdim")
    return tuple(abs(float(s)) for s in np.asarray(pixdim)[1:4]) if pixdim is not None else (1.0, 1.0, 1.0)


class SliceInferer:
    """Class probabilities (z, K, H, W) of network slices (z, H, W): udavae's whole-slice inference.

    Slices are zero-padded (centred) to a multiple of the network stride, run ``batch_size`` at a time in
    ``amp`` precision on the network's device, and the softmax is cropped back
    (:meth:`udavae.engine.inference.Predictor.probabilities`).
    """

    def __init__(self, batch_size: int = 16, amp: str = "none") -> None:
        self.batch_size, self.amp = batch_size, amp

    def __call__(self, inputs: torch.Tensor, network: SegmentationNetwork) -> torch.Tensor:
        from udavae.engine.inference import Predictor

        device = next(network.parameters()).device
        predictor = Predictor(network.net, Preprocessing(), device, batch_size=self.batch_size, amp=self.amp)
        return predictor.probabilities(_plain(inputs))


class ToNativeGridd:
    """Probabilities on the network grid (z, K, H, W) -> (K, x, y, z) on the scan's grid, with its metadata.

    Padding is removed, a cropped border becomes background and the slices are resampled back (bilinear), as
    :meth:`udavae.data.preprocessing.Preprocessing.invert_probabilities`. The result is a MetaTensor carrying
    the scan's metadata (affine, file name), so ``SaveImaged`` writes it in the scan's geometry.

    Args:
        keys: the prediction key(s).
        image_key: the key :class:`ToSlicesd` preprocessed (its ``_geometry`` and ``_meta_dict`` are read).
    """

    def __init__(self, keys: str | Sequence[str], image_key: str = "image") -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.data import MetaTensor

        d = dict(data)
        geom: Geometry = d[f"{self.image_key}{GEOMETRY_SUFFIX}"]
        meta = dict(d[f"{self.image_key}{META_SUFFIX}"])
        for key in self.keys:
            # Only the geometry record is used: the inverse does not depend on the intensity rules.
            native = Preprocessing().invert_probabilities(_plain(d[key]), geom)
            d[key] = MetaTensor(native, meta=meta)  # the meta holds the scan's affine
        return d


class KeepLargestComponentd:
    """Keep only the largest 3-D connected component (26-connectivity) of each class in ``classes``.

    The post-processing decided for the model (``postprocessing.json``), computed by udavae's
    :func:`~udavae.evaluation.postprocess.keep_largest_component`; ``classes`` empty leaves the masks unchanged.

    Args:
        keys: class-index maps (1, x, y, z) or (x, y, z).
        classes: class indices to filter, in the order udavae filters them (ascending).
    """

    def __init__(self, keys: str | Sequence[str], classes: Iterable[int] = ()) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.classes = sorted(int(c) for c in classes)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.classes:
            return d
        for key in self.keys:
            img = d[key]
            values = torch.as_tensor(_plain(img)).cpu()
            classes = values.numpy().astype(np.uint8)
            lead = classes.ndim == 4
            out = classes[0] if lead else classes
            for index in self.classes:
                out = keep_largest_component(out, index)
            d[key] = _like(torch.from_numpy(out[None] if lead else out).to(values.dtype), img)
        return d


def _like(values: torch.Tensor, template: Any) -> Any:
    """``values`` as a MetaTensor with ``template``'s metadata when the template is one."""
    if hasattr(template, "meta"):
        from monai.data import MetaTensor

        return MetaTensor(values, meta=dict(template.meta))
    return values


class Segmenter:
    """Segment every scan of ``dataset``: network probabilities (``inferer``), then ``postprocessing``.

    The bundle's ``run`` step. Items are dictionaries preprocessed by the dataset's transform; the probabilities
    are stored under ``pred`` and the post-processing (which ends by writing the mask) is applied to the item.
    """

    def __init__(
        self,
        dataset: Iterable[Mapping[Hashable, Any]],
        network: SegmentationNetwork,
        inferer: SliceInferer,
        postprocessing: Any,
        image_key: str = "image",
        pred_key: str = "pred",
    ) -> None:
        self.dataset, self.network, self.inferer, self.postprocessing = dataset, network, inferer, postprocessing
        self.image_key, self.pred_key = image_key, pred_key

    def run(self) -> int:
        """Segment every scan; return how many."""
        self.network.eval()
        n = 0
        for item in self.dataset:
            d = dict(item)
            d[self.pred_key] = self.inferer(d[self.image_key], self.network)
            self.postprocessing(d)
            n += 1
        return n

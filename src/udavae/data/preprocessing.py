"""Preprocessing declared as data, and its inverse for prediction.

A volume of shape (x, y, z) with spacing (sx, sy, sz) goes through:

1. intensities to [0, 1]: per-volume percentile clipping then min-max (``percentile``), plain min-max
   (``minmax``) or nothing (``none``, for data already in [0, 1]);
2. optional in-plane resampling to ``target_spacing`` (mm), or by a fixed pixel ``zoom`` factor (bilinear for
   images, nearest for labels);
3. centre crop or zero-pad in-plane to ``size``.

The result is a stack of 2-D slices (z, H, W). :meth:`Preprocessing.invert_probabilities` maps network
class probabilities back to the original grid (padding removed, cropped border filled with background,
bilinear resampling back), so predicted masks have the input's exact shape and geometry.
The same object is stored in ``dataset.json`` and with each trained model.

Training needs slices of one size, so step 3 crops; prediction (``whole=True``) only pads, so the network (fully
convolutional) sees the whole slice and no mask is cut by the crop. Where the slice fits in ``size`` both give
the same slices. :meth:`Preprocessing.cropped_share` says how much of a label volume the training crop loses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

INTENSITY_MODES = ("percentile", "minmax", "none")
#: Largest in-plane side (pixels) of a network slice or of a resampled slice: beyond it, a header or a target
#: spacing is almost certainly wrong, and the allocation would fail with an allocator error naming nothing.
MAX_SIDE = 4096


@dataclass(frozen=True)
class Geometry:
    """What :meth:`Preprocessing.invert_probabilities` needs to return to the original grid."""

    shape: tuple[int, int, int]  # original (x, y, z)
    resampled: tuple[int, int]  # in-plane shape after resampling (before crop/pad)


@dataclass
class Preprocessing:
    """Intensity normalisation, in-plane resampling and crop/pad, as stored data.

    Attributes:
        intensity: ``percentile`` | ``minmax`` | ``none``.
        lower / upper: clipping percentiles for ``percentile``.
        target_spacing: in-plane spacing (mm) to resample to, or None to keep the native grid.
        zoom: in-plane pixel scale factor used when ``target_spacing`` is None (1.0 = native grid). For data
            whose header spacing does not describe the pixels (MS-CMRSeg Patch192 C0: the anatomy is about
            1.6x larger than the header's 1.25 mm implies), a pixel zoom keeps the domains' relative scale.
        size: in-plane (H, W) after centre crop / pad.
    """

    intensity: str = "percentile"
    lower: float = 0.5
    upper: float = 99.5
    target_spacing: tuple[float, float] | None = None
    size: tuple[int, int] = (192, 192)
    zoom: float = 1.0

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"preprocessing.intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        if not 0 <= self.lower < self.upper <= 100:
            raise ValueError(f"need 0 <= lower < upper <= 100 percentiles, got {self.lower}, {self.upper}")
        self.size = tuple(int(s) for s in self.size)  # type: ignore[assignment]
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"preprocessing.size must be two positive integers, got {self.size}")
        if max(self.size) > MAX_SIDE:
            raise ValueError(f"preprocessing.size {list(self.size)} exceeds the limit of {MAX_SIDE} pixels per side")
        if not self.zoom > 0:
            raise ValueError(f"preprocessing.zoom must be > 0, got {self.zoom}")
        if self.target_spacing is not None:
            self.target_spacing = tuple(float(s) for s in self.target_spacing)  # type: ignore[assignment]
            if len(self.target_spacing) != 2 or min(self.target_spacing) <= 0:
                raise ValueError(
                    f"preprocessing.target_spacing must be two positive numbers, got {self.target_spacing}"
                )

    # ------------------------------------------------------------------ serialise
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["target_spacing"] = list(self.target_spacing) if self.target_spacing else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {sorted(unknown)}")
        if known.get("target_spacing") is not None:
            known["target_spacing"] = tuple(known["target_spacing"])
        if "size" in known:
            known["size"] = tuple(known["size"])
        return cls(**known)

    # ------------------------------------------------------------------ forward
    def normalize(self, image: np.ndarray) -> np.ndarray:
        """Intensities of one volume to [0, 1] (float32)."""
        img = np.asarray(image, dtype=np.float32)
        if self.intensity == "none":
            return np.clip(img, 0.0, 1.0)
        if self.intensity == "percentile":
            lo, hi = np.percentile(img, [self.lower, self.upper])
        else:
            lo, hi = float(img.min()), float(img.max())
        if hi <= lo:
            return np.zeros_like(img)
        return np.clip((img - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)

    def _resampled_shape(self, shape: tuple[int, int], spacing: tuple[float, ...]) -> tuple[int, int]:
        if self.target_spacing is None:
            if self.zoom == 1.0:
                return shape
            return tuple(max(1, round(n * self.zoom)) for n in shape)  # type: ignore[return-value]
        return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing[:2], self.target_spacing))  # type: ignore[return-value]

    def geometry(self, shape: tuple[int, ...], spacing: tuple[float, ...]) -> Geometry:
        """The geometry record of a volume of this shape / spacing.

        Raises:
            ValueError: the resampled slice would exceed :data:`MAX_SIDE` pixels per side.
        """
        x, y, z = (int(s) for s in shape)
        resampled = self._resampled_shape((x, y), spacing)
        if max(resampled) > MAX_SIDE:
            how = f"resampled to {list(self.target_spacing)} mm" if self.target_spacing else f"zoomed by {self.zoom:g}"
            raise ValueError(
                f"a {x}x{y} slice with spacing ({', '.join(f'{v:g}' for v in spacing[:2])}) mm "
                f"{how} would be {resampled[0]}x{resampled[1]} pixels, over the limit of {MAX_SIDE}"
            )
        return Geometry(shape=(x, y, z), resampled=resampled)

    def network_size(self, geom: Geometry, whole: bool = False) -> tuple[int, int]:
        """In-plane size of the network slices: ``size``, or with ``whole`` at least the resampled slice."""
        if not whole:
            return self.size
        return max(self.size[0], geom.resampled[0]), max(self.size[1], geom.resampled[1])

    def image(
        self, volume: np.ndarray, spacing: tuple[float, ...], whole: bool = False
    ) -> tuple[torch.Tensor, Geometry]:
        """Preprocess an image volume (x, y, z) -> float32 slices (z, H, W) in [0, 1].

        ``whole``: pad to at least ``size`` but never crop (prediction); else centre-crop / pad to ``size``.
        """
        geom = self.geometry(volume.shape, spacing)
        slices = torch.from_numpy(np.ascontiguousarray(self.normalize(volume).transpose(2, 0, 1)))
        if geom.resampled != tuple(slices.shape[1:]):
            slices = F.interpolate(
                slices[:, None], size=geom.resampled, mode="bilinear", align_corners=False, antialias=True
            )[:, 0].clamp_(0, 1)
        return crop_or_pad(slices, self.network_size(geom, whole)), geom

    def _resampled_label(self, classes: np.ndarray, spacing: tuple[float, ...]) -> tuple[torch.Tensor, Geometry]:
        """Class slices (z, rx, ry) on the resampled grid, before crop / pad (nearest resampling)."""
        geom = self.geometry(classes.shape, spacing)
        slices = torch.from_numpy(np.ascontiguousarray(np.asarray(classes, dtype=np.uint8).transpose(2, 0, 1)))
        if geom.resampled != tuple(slices.shape[1:]):
            slices = F.interpolate(slices[:, None].float(), size=geom.resampled, mode="nearest-exact")[:, 0].to(
                torch.uint8
            )
        return slices, geom

    def label(self, classes: np.ndarray, spacing: tuple[float, ...], whole: bool = False) -> torch.Tensor:
        """Preprocess a class-index volume (x, y, z) -> uint8 slices (z, H, W) (nearest resampling)."""
        slices, geom = self._resampled_label(classes, spacing)
        return crop_or_pad(slices, self.network_size(geom, whole))

    def cropped_share(self, classes: np.ndarray, spacing: tuple[float, ...]) -> float:
        """Share of the labelled (non-zero) voxels of ``classes`` (x, y, z) that the centre crop to ``size``
        leaves out, on the resampled grid (0.0 when nothing is cut or nothing is labelled).

        Training sees only that crop; a case with a positive share is trained on a cut heart.
        """
        slices, _ = self._resampled_label((np.asarray(classes) != 0).astype(np.uint8), spacing)
        total = int(torch.count_nonzero(slices))
        if not total:
            return 0.0
        return (total - int(torch.count_nonzero(crop_or_pad(slices, self.size)))) / total

    # ------------------------------------------------------------------ inverse
    def invert_probabilities(self, probs: torch.Tensor, geom: Geometry) -> torch.Tensor:
        """Class probabilities (z, K, H, W) on the network grid -> (K, x, y, z) on the original grid.

        Regions cropped away before the network saw them get probability 1 for background.
        """
        z, k = probs.shape[:2]
        rx, ry = geom.resampled
        back = uncrop_or_unpad(probs, (rx, ry), fill_channel0=1.0)
        if (rx, ry) != geom.shape[:2]:
            back = F.interpolate(back, size=geom.shape[:2], mode="bilinear", align_corners=False)
        return back.permute(1, 2, 3, 0)


def _offsets(n: int, s: int) -> tuple[int, int]:
    """(source start, target start) of a centred crop/pad of length ``n`` -> ``s``."""
    return ((n - s) // 2, 0) if n >= s else (0, (s - n) // 2)


def crop_or_pad(slices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Centre-crop or zero-pad the last two axes of (z, H, W) to ``size``."""
    z, h, w = slices.shape
    (sh, th), (sw, tw) = _offsets(h, size[0]), _offsets(w, size[1])
    lh, lw = min(h, size[0]), min(w, size[1])
    out = slices.new_zeros((z, *size))
    out[:, th : th + lh, tw : tw + lw] = slices[:, sh : sh + lh, sw : sw + lw]
    return out


def uncrop_or_unpad(x: torch.Tensor, shape: tuple[int, int], fill_channel0: float = 0.0) -> torch.Tensor:
    """Inverse of :func:`crop_or_pad` for (z, C, H, W): back to in-plane ``shape``.

    Cropped-away border is filled with zeros, except channel 0 which gets ``fill_channel0`` (so class
    probabilities there say "background").
    """
    z, c, h, w = x.shape
    (th, sh), (tw, sw) = _offsets(shape[0], h), _offsets(shape[1], w)
    lh, lw = min(h, shape[0]), min(w, shape[1])
    out = x.new_zeros((z, c, *shape))
    out[:, 0] = fill_channel0
    out[:, :, th : th + lh, tw : tw + lw] = x[:, :, sh : sh + lh, sw : sw + lw]
    return out

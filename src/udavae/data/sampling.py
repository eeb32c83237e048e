"""Training batches: random jittered crops, optional augmentation, multi-scale images and labels.

Reproducibility does not depend on workers or on where a run resumed: every draw has a global position
``pos`` in an endless stream; the slice it shows is ``perm_k[pos % n]`` with ``perm_k`` the seeded
permutation of pass ``k = pos // n``, and its crop offset / augmentation come from an RNG seeded by
``(seed, pos)``. A resumed run restarts the stream at ``step * batch`` and sees exactly the batches of
an uninterrupted run. Under DistributedDataParallel each rank takes its own slice of every global batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from udavae.augment.crop import CropAugment
from udavae.augment.stage import PYRAMID, image_pyramid, label_pyramid
from udavae.data.volumes import SliceStack

SCALES = PYRAMID  # full, 1/2, 1/4


class SliceCropDataset(Dataset):
    """Random crops of 2-D slices with the paper's jitter (160 from 192, +-16 px by default).

    Keys are ``(slice_index, position)`` pairs produced by :class:`StreamSampler`.

    Args:
        stack: the in-memory slices (labels optional).
        crop: square crop size.
        jitter: maximum shift of the crop from the centre (pixels); offsets are uniform in
            [-jitter, jitter - 1] as ``randint(-16, 16)`` in the reference, clipped to the slice.
        seed: stream seed.
        augment: random flips, 90-degree rotations and gamma on intensities (``data.augment``, kept for runs
            configured with it; the ``augment`` section's transforms are richer).
        crop_augment: the per-crop transforms of the ``augment`` section (standard, SLAug's views), drawn
            from the crop's own seeded stream; None for none.
    """

    def __init__(
        self,
        stack: SliceStack,
        crop: int,
        jitter: int,
        seed: int,
        augment: bool = False,
        crop_augment: CropAugment | None = None,
    ) -> None:
        h, w = stack.images.shape[1:]
        if crop > min(h, w):
            raise ValueError(f"crop {crop} is larger than the prepared slices ({h}x{w})")
        self.stack, self.crop, self.jitter, self.seed, self.augment = stack, crop, jitter, seed, augment
        self.crop_augment = crop_augment if crop_augment is not None and crop_augment.active else None

    def __len__(self) -> int:
        return len(self.stack)

    def _start(self, n: int, rng: np.random.Generator) -> int:
        centre = (n - self.crop) // 2
        r = int(rng.integers(-self.jitter, self.jitter)) if self.jitter > 0 else 0
        return int(np.clip(centre + r, 0, n - self.crop))

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, pos = key
        rng = np.random.default_rng((self.seed, pos))
        h, w = self.stack.images.shape[1:]
        y0, x0 = self._start(h, rng), self._start(w, rng)
        sl = (index, slice(y0, y0 + self.crop), slice(x0, x0 + self.crop))
        image = self.stack.images[sl]
        label = self.stack.labels[sl] if self.stack.labels is not None else None
        if self.augment:
            image, label = _augment(image, label, rng)
        if self.crop_augment is not None:
            return self.crop_augment(image, label, rng)
        item = {"image": image[None].contiguous()}
        if label is not None:
            item["label"] = label.long().contiguous()
        return item


def _augment(
    image: torch.Tensor, label: torch.Tensor | None, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flips, rot90 (geometry, applied to both) and gamma in [0.7, 1.5] (intensity only)."""
    k = int(rng.integers(0, 4))
    flip = bool(rng.integers(0, 2))
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5))))

    def geo(t: torch.Tensor) -> torch.Tensor:
        t = torch.rot90(t, k, (0, 1))
        return torch.flip(t, (1,)) if flip else t

    image = geo(image).clamp(0, 1) ** gamma
    return image, (geo(label) if label is not None else None)


def multiscale(batch: dict[str, torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Turn ``image`` (B,1,H,W) / ``label`` (B,H,W) into lists at full, 1/2 and 1/4 scale.

    Images are box-averaged (exact anti-aliasing, values stay in [0, 1]). Labels are sampled with
    exact nearest neighbour (the centre pixel of each block, as ``nearest-exact``), never smoothed, so no
    class can vanish through filtering; a structure survives at scale s as long as it covers some
    block centre (any structure wider than s pixels in both directions does).
    """
    out: dict[str, list[torch.Tensor]] = {}
    for key, value in batch.items():  # ``image`` and, with SLAug, its class-level view ``image_lla``
        if key.startswith("image"):
            out[key] = image_pyramid(value)
    if "label" in batch:
        # Exact nearest neighbour at an integer factor s = the pixel at offset s//2 of each s x s block
        # (identical to F.interpolate(mode="nearest-exact"), without a float round trip).
        out["label"] = label_pyramid(batch["label"])
    return out


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """Stack items and build the multi-scale pyramids (vectorised over the batch)."""
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    return multiscale(batch)


class StreamSampler(Sampler):
    """Endless, seeded, resumable stream of ``(slice_index, position)`` keys, sharded by rank.

    Global batch ``g`` covers positions ``[g*B*W, (g+1)*B*W)``; rank ``r`` takes the ``r``-th block of
    ``B``. ``start_batch`` skips whole global batches (resume).
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, start_batch: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if n < 1:
            raise ValueError("cannot sample from an empty set of slices")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size
        self._perm_cache: dict[int, np.ndarray] = {}

    def _perm(self, k: int) -> np.ndarray:
        if k not in self._perm_cache:
            self._perm_cache = {k: np.random.default_rng((self.seed, 7919, k)).permutation(self.n)}
        return self._perm_cache[k]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = self.start_batch
        b, w = self.batch_size, self.world_size
        while True:
            base = (g * w + self.rank) * b
            for pos in range(base, base + b):
                yield int(self._perm(pos // self.n)[pos % self.n]), pos
            g += 1

    def __len__(self) -> int:  # pragma: no cover - endless; DataLoader only needs it for warnings
        return 2**62


def make_loader(
    dataset: SliceCropDataset,
    batch_size: int,
    start_batch: int = 0,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> Iterator[dict[str, list[torch.Tensor]]]:
    """An endless iterator of multi-scale batches starting at global batch ``start_batch``."""
    sampler = StreamSampler(len(dataset), batch_size, dataset.seed, start_batch, rank, world_size)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(dataset.seed),
        prefetch_factor=4 if num_workers else None,
    )
    return iter(loader)

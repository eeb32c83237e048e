"""Training data pipeline: crops, multi-scale pyramids, label down-sampling, seeding, resume, sharding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from udavae.data.sampling import SliceCropDataset, StreamSampler, collate, make_loader, multiscale
from udavae.data.volumes import SliceStack


def _stack(n: int = 10, size: int = 192, labelled: bool = True, seed: int = 0) -> SliceStack:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand((n, size, size), generator=g)
    labels = None
    if labelled:
        labels = torch.zeros((n, size, size), dtype=torch.uint8)
        labels[:, 60:130, 50:140] = 1
        labels[:, 80:110, 70:120] = 2
        labels[:, 90:97, 20:27] = 3  # a 7x7 structure
    return SliceStack(images, labels, torch.arange(n))


def test_crop_and_multiscale_shapes() -> None:
    ds = SliceCropDataset(_stack(), crop=160, jitter=16, seed=1)
    batch = collate([ds[(i % 10, i)] for i in range(12)])
    assert [tuple(t.shape) for t in batch["image"]] == [(12, 1, 160, 160), (12, 1, 80, 80), (12, 1, 40, 40)]
    assert [tuple(t.shape) for t in batch["label"]] == [(12, 160, 160), (12, 80, 80), (12, 40, 40)]
    assert all(t.dtype == torch.long for t in batch["label"])
    # box-averaged images stay in [0, 1] and preserve the mean exactly
    assert torch.allclose(batch["image"][1].mean(), batch["image"][0].mean(), atol=1e-6)
    assert float(batch["image"][2].max()) <= 1.0


def test_jitter_range_matches_reference() -> None:
    """Offsets are centre (16) + randint(-16, 16), i.e. rows/cols start in [0, 31]."""
    stack = _stack(n=1)
    stack.images[0] = torch.arange(192.0)[:, None].expand(192, 192) / 1000  # encodes the row index
    ds = SliceCropDataset(stack, crop=160, jitter=16, seed=3)
    starts = {round(float(ds[(0, p)]["image"][0, 0, 0]) * 1000) for p in range(2000)}
    assert min(starts) == 0 and max(starts) == 31 and len(starts) == 32


def test_nearest_downsampling_keeps_every_class() -> None:
    """Every class covering more than a few pixels at full size survives at 1/2 and 1/4 (no smoothing)."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        lab = torch.zeros((1, 160, 160), dtype=torch.long)
        for cls in (1, 2, 3):
            h, w = rng.integers(4, 30, size=2)
            y, x = rng.integers(0, 160 - 30, size=2)
            lab[0, y : y + h, x : x + w] = cls
        pyramid = multiscale({"image": torch.zeros(1, 1, 160, 160), "label": lab})["label"]
        present = set(lab.unique().tolist())
        for t in pyramid[1:]:
            assert set(t.unique().tolist()) == present
            assert set(t.unique().tolist()) <= {0, 1, 2, 3}  # never an interpolated value


def test_nearest_downsampling_is_exact_subsampling() -> None:
    lab = torch.randint(0, 4, (2, 64, 64))
    half, quarter = multiscale({"image": torch.zeros(2, 1, 64, 64), "label": lab})["label"][1:]
    assert torch.equal(half, lab[:, 1::2, 1::2])
    assert torch.equal(quarter, lab[:, 2::4, 2::4])


def _batches(seed: int, start: int = 0, n: int = 3, workers: int = 0, rank: int = 0, world: int = 1):
    ds = SliceCropDataset(_stack(n=7), crop=128, jitter=16, seed=seed, augment=True)
    it = make_loader(ds, batch_size=4, start_batch=start, num_workers=workers, rank=rank, world_size=world)
    return list(itertools.islice(it, n))


def _equal(a, b) -> bool:
    return all(torch.equal(x, y) for k in a for x, y in zip(a[k], b[k]))


def test_identical_batches_under_same_seed_and_workers_do_not_matter() -> None:
    a, b = _batches(seed=5), _batches(seed=5, workers=2)
    assert all(_equal(x, y) for x, y in zip(a, b))
    c = _batches(seed=6)
    assert not _equal(a[0], c[0])


def test_resumed_stream_equals_uninterrupted() -> None:
    full = _batches(seed=2, n=5)
    resumed = _batches(seed=2, start=3, n=2)
    assert _equal(full[3], resumed[0]) and _equal(full[4], resumed[1])


def test_shorter_domain_is_cycled_and_each_pass_is_a_permutation() -> None:
    s = StreamSampler(n=7, batch_size=3, seed=0)
    keys = list(itertools.islice(iter(s), 21))
    for k in range(3):
        assert sorted(i for i, _ in keys[7 * k : 7 * k + 7]) == list(range(7))
    assert [p for _, p in keys] == list(range(21))


def test_rank_sharding_partitions_the_global_batch() -> None:
    one = list(itertools.islice(iter(StreamSampler(n=10, batch_size=6, seed=1)), 12))
    r0 = list(itertools.islice(iter(StreamSampler(n=10, batch_size=3, seed=1, rank=0, world_size=2)), 6))
    r1 = list(itertools.islice(iter(StreamSampler(n=10, batch_size=3, seed=1, rank=1, world_size=2)), 6))
    # global batch g = rank0's g-th block + rank1's g-th block
    assert r0[:3] + r1[:3] == one[:6] and r0[3:] + r1[3:] == one[6:]


def test_crop_larger_than_slice_is_an_error() -> None:
    with pytest.raises(ValueError, match="larger than the prepared slices"):
        SliceCropDataset(_stack(n=1, size=64), crop=96, jitter=0, seed=0)

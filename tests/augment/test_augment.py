"""Augmentations (issue: strong augmentation, SLAug, GIN-IPA): alignment, curves, class-level locality, fusion,
GIN networks, consistency, and that nothing augments at evaluation or prediction."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from udavae.augment import (
    SourceAugmenter,
    StandardAugment,
    bezier_curve,
    class_location_scale,
    fuse,
    gin_views,
    global_location_scale,
    local_location_scale,
    random_gin,
    saliency_map,
)
from udavae.augment.crop import CropAugment
from udavae.augment.stage import image_pyramid, label_pyramid
from udavae.config import AugmentConfig
from udavae.losses import symmetric_kl
from udavae.methods import UDAMethod, build_method
from udavae.methods.presets import build_config


def _phantom(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """An image whose intensity encodes its label (background 0.1, classes 0.4 / 0.7 / 0.95) and a label map."""
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - size / 2 + 3, xx - size / 2 + 5)
    label = np.zeros((size, size), np.int64)
    label[d < 18] = 1
    label[d < 11] = 2
    label[(abs(yy - size / 2) < 6) & (xx > size / 2 + 14) & (xx < size / 2 + 26)] = 3
    lut = np.array([0.1, 0.4, 0.7, 0.95], np.float32)
    return torch.from_numpy(lut[label]), torch.from_numpy(label)


@pytest.mark.parametrize("seed", range(6))
def test_spatial_transforms_move_label_with_image(seed: int) -> None:
    """After a random affine + elastic deformation the label still marks the pixels of its own intensity."""
    image, label = _phantom()
    aug = StandardAugment(AugmentConfig(spatial=True, affine_prob=1.0, elastic_prob=1.0, flip_prob=0.5, rotate_deg=30))
    out, lab = aug(image, label, seed)
    assert out.shape == image.shape and lab.shape == label.shape and lab.dtype == label.dtype
    assert set(lab.unique().tolist()) <= {0, 1, 2, 3}
    assert not torch.equal(lab, label)  # it did move
    lut = torch.tensor([0.1, 0.4, 0.7, 0.95])

    def agreement(lbl: torch.Tensor) -> float:
        inside = lbl > 0
        return float(((out[inside] - lut[lbl[inside]]).abs() < 0.05).float().mean())

    # Nearest labels vs bilinear images differ only on boundaries: most labelled pixels keep their intensity,
    # and clearly more than if the label had stayed where it was.
    assert agreement(lab) > 0.8
    assert 1 - agreement(lab) < 0.7 * (1 - agreement(label))


def test_intensity_transforms_leave_the_label_and_range() -> None:
    image, label = _phantom()
    aug = StandardAugment(AugmentConfig(intensity=True, gamma_prob=1, bias_prob=1, noise_prob=1, blur_prob=1))
    out, lab = aug(image, label, 3)
    assert torch.equal(lab, label)
    assert not torch.allclose(out, image) and float(out.min()) >= 0 and float(out.max()) <= 1
    again, _ = aug(image, label, 3)
    assert torch.equal(out, again)  # seeded: the same crop position gives the same draw


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_location_scale_curves_are_monotone_onto_unit_interval(seed: int, inverse: bool) -> None:
    xs, ys = bezier_curve(np.random.default_rng(seed), points=4, inverse=inverse)
    v = np.linspace(0, 1, 1001)
    y = np.interp(v, xs, ys)
    steps = np.diff(y)
    assert (steps <= 1e-12).all() if inverse else (steps >= -1e-12).all()
    assert (y[0], y[-1]) == ((1.0, 0.0) if inverse else (0.0, 1.0))
    assert y.min() >= 0 and y.max() <= 1


def test_global_view_stays_in_range_and_changes_intensities() -> None:
    image, _ = _phantom()
    out = global_location_scale(image.numpy(), np.random.default_rng(0))
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, image.numpy())


def test_class_level_changes_only_inside_the_structure() -> None:
    image, label = _phantom()
    region = (label == 2).numpy()
    out = class_location_scale(image.numpy(), region, np.random.default_rng(1))
    assert np.array_equal(out[~region], image.numpy()[~region])
    assert not np.allclose(out[region], image.numpy()[region])


def test_local_view_keeps_dark_background_and_labels_map_to_one_value_each() -> None:
    image, label = _phantom()
    img = image.numpy().copy()
    img[:4] = 0.0  # air
    out = local_location_scale(img, label.numpy(), np.random.default_rng(2))
    assert np.array_equal(out[:4], img[:4])
    for c in range(4):  # one input intensity per structure -> one output intensity per structure
        values = out[(label.numpy() == c) & (img > 0.01)]
        assert np.ptp(values) < 1e-6


def test_saliency_fusion_extremes_return_each_view() -> None:
    g = torch.Generator().manual_seed(0)
    gla, lla = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g)
    assert torch.equal(fuse(gla, lla, torch.ones(2, 1, 16, 16)), gla)
    assert torch.equal(fuse(gla, lla, torch.zeros(2, 1, 16, 16)), lla)


def test_saliency_map_is_coarse_and_normalised() -> None:
    grad = torch.zeros(1, 1, 30, 30)
    grad[..., :10, :10] = 5.0  # all gradient in the top-left cell of a 3x3 grid
    s = saliency_map(grad, grid=3)
    assert s.shape == (1, 1, 30, 30)
    assert float(s.max()) == pytest.approx(1.0) and float(s.min()) == pytest.approx(0.0, abs=1e-6)
    assert float(s[0, 0, 0, 0]) == pytest.approx(1.0) and float(s[0, 0, -1, -1]) == pytest.approx(0.0, abs=1e-6)


def test_gin_keeps_shape_range_and_redraws_each_call_under_a_seed() -> None:
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(7)
    a, b = random_gin(x, g), random_gin(x, g)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1 + 1e-6
    assert not torch.allclose(a, b)  # a new network per call
    again = random_gin(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, again)  # the same seed draws the same network
    assert not torch.allclose(a[0], a[1] * a[0].norm() / a[1].norm())  # one network per crop
    gin, ipa = gin_views(x, torch.Generator().manual_seed(1))
    assert gin.shape == ipa.shape == x.shape


def test_consistency_loss_is_zero_for_identical_views_and_positive_otherwise() -> None:
    logits = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert float(symmetric_kl(logits, logits)) == pytest.approx(0.0, abs=1e-7)
    assert float(symmetric_kl(logits, logits.flip(-1))) > 0
    # closed form for one pixel, two classes: p = (0.5, 0.5), q = (0.8, 0.2)
    p, q = torch.tensor([0.5, 0.5]), torch.tensor([0.8, 0.2])
    expected = 0.5 * float((p * (p / q).log()).sum() + (q * (q / p).log()).sum())
    got = symmetric_kl(p.log().view(1, 2, 1, 1), q.log().view(1, 2, 1, 1))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def _noadapt() -> UDAMethod:
    """A tiny noadapt method (width 4, crop 32): the segmentation terms and network the stage reads."""
    torch.manual_seed(0)
    over = {"model.base_width": 4, "model.recon_width": 8, "data.crop": 32, "optim.batch_size": 2}
    return build_method(build_config("noadapt", "tiny", over), 4)


def _slaug_batch() -> dict[str, list[torch.Tensor]]:
    image, label = _phantom(32)
    crop = CropAugment(AugmentConfig(slaug=True), source=True)
    items = [crop(image, label, np.random.default_rng(s)) for s in range(2)]
    return {
        "image": image_pyramid(torch.stack([i["image"] for i in items])),
        "image_lla": image_pyramid(torch.stack([i["image_lla"] for i in items])),
        "label": label_pyramid(torch.stack([i["label"] for i in items])),
    }


def test_slaug_stage_fuses_views_and_leaves_weights_without_gradient() -> None:
    batch, method = _slaug_batch(), _noadapt()
    out = SourceAugmenter(AugmentConfig(slaug=True, slaug_views="fused"), 0)(batch, method, 0)
    fused, gla, lla = out["image"][0], batch["image"][0], batch["image_lla"][0]
    assert [t.shape for t in out["image"]] == [t.shape for t in batch["image"]]
    lo, hi = torch.minimum(gla, lla), torch.maximum(gla, lla)
    assert bool(((fused >= lo - 1e-6) & (fused <= hi + 1e-6)).all())  # a convex blend of the two views
    assert not torch.equal(fused, gla) and not torch.equal(fused, lla)
    assert all(p.grad is None for p in method.parameters())  # the saliency pass does not touch the update
    assert out["label"] is batch["label"]
    # 'stacked': the global view, then a fused view, labels repeated
    stacked = SourceAugmenter(AugmentConfig(slaug=True, slaug_views="stacked"), 0)(batch, method, 0)
    assert torch.equal(stacked["image"][0][:2], gla)
    assert [tuple(t.shape) for t in stacked["image"]] == [(4, 1, 32, 32), (4, 1, 16, 16), (4, 1, 8, 8)]
    for full, lab in zip(stacked["label"], batch["label"]):
        assert torch.equal(full, torch.cat([lab, lab]))
    with pytest.raises(ValueError, match="slaug_views"):
        AugmentConfig(slaug=True, slaug_views="gla").validate()


def test_slaug_both_views_is_the_public_codes_two_loss_update() -> None:
    """slaug_views=both: one update = gradient of the global view's loss + gradient of the fused view's loss
    (the public code's two backward passes before one optimiser step), the saliency taken from the first."""
    batch, method = _slaug_batch(), _noadapt()
    reference = copy.deepcopy(method)
    aug = SourceAugmenter(AugmentConfig(slaug=True), 0)
    opt = torch.optim.SGD(method.parameters(), lr=1.0)
    aug.attach({"main": opt})
    before = [p.detach().clone() for p in method.parameters()]
    torch.manual_seed(7)  # the latent noise of both forward passes
    out = aug(batch, method, 0)
    assert out["image"][0].shape == (2, 1, 32, 32) and out["label"] is batch["label"]
    assert all(p.grad is None for p in method.parameters()) and aug.carried  # carried, not yet in .grad
    losses = method(out)
    opt.zero_grad(set_to_none=True)  # the method's step zeroes first: the carry must survive it
    losses["total"].backward()
    opt.step()
    assert not aug.carried  # used once
    step = [b - p.detach() for b, p in zip(before, method.parameters())]

    torch.manual_seed(7)
    params = list(reference.parameters())
    gla = batch["image"][0].clone().requires_grad_(True)
    first = sum(reference.segmentation_terms(reference.net(gla), batch["label"]).values())
    grad_x, *g_gla = torch.autograd.grad(first, [gla, *params], allow_unused=True)
    fused = fuse(batch["image"][0], batch["image_lla"][0], saliency_map(grad_x, 3))
    assert torch.allclose(out["image"][0], fused, atol=1e-6)
    g_fused = torch.autograd.grad(reference(out)["total"], params, allow_unused=True)
    expected = [(a if a is not None else 0) + (b if b is not None else 0) for a, b in zip(g_gla, g_fused)]
    assert aug.logged["seg_global_view"] == pytest.approx(float(first.detach()), rel=1e-5)
    for got, want in zip(step, expected):
        torch.testing.assert_close(got, torch.as_tensor(want).expand_as(got), atol=1e-5, rtol=1e-4)
    assert any(float(g.abs().max()) > 0 for g in g_gla if g is not None)  # the global view did contribute


def test_gin_pairs_stack_two_views_with_labels_repeated() -> None:
    image, label = _phantom(32)
    batch = {
        "image": image_pyramid(image[None, None].repeat(3, 1, 1, 1)),
        "label": label_pyramid(label[None].repeat(3, 1, 1)),
    }
    out = SourceAugmenter(AugmentConfig(gin=True), 0, pairs=True)(batch, _noadapt(), 5)
    assert out["image"][0].shape == (6, 1, 32, 32) and out["label"][0].shape == (6, 32, 32)
    assert torch.equal(out["label"][0][:3], out["label"][0][3:])
    single = SourceAugmenter(AugmentConfig(gin=True), 0)(batch, _noadapt(), 5)
    assert single["image"][0].shape == (3, 1, 32, 32)


def test_target_crops_get_standard_augmentation_only_when_asked() -> None:
    assert not CropAugment(AugmentConfig(spatial=True), source=False).active
    assert CropAugment(AugmentConfig(spatial=True, target=True), source=False).active
    assert not CropAugment(AugmentConfig(slaug=True, target=True), source=False).active  # SLAug needs labels


def test_config_validation_of_augment_keys() -> None:
    from udavae.methods.presets import build_config

    with pytest.raises(ValueError, match="affine_prob"):
        build_config("noadapt", "tiny", {"augment.affine_prob": 1.5})
    with pytest.raises(ValueError, match="choose one"):
        build_config("slaug", "tiny", {"augment.gin": True})
    with pytest.raises(ValueError, match="augment.gin=true"):
        build_config("gin-ipa", "tiny", {"augment.gin": False})


@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_cpu_and_paper_profiles_switch_standard_augmentation_on_except_over_a_presets_own(profile: str) -> None:
    """Standard augmentation is the default of the full profiles; SLAug / GIN-IPA keep only its spatial part."""
    from udavae.methods.presets import PRESETS, build_config

    for preset in PRESETS:
        aug = build_config(preset, profile).augment
        own = aug.slaug or aug.gin
        assert aug.spatial, preset
        assert aug.intensity is not own, preset  # MONAI intensity transforms never stack on SLAug / GIN
        assert not aug.target, preset
        assert build_config(preset, "tiny").augment.intensity is (preset == "noadapt-aug"), preset
    off = build_config("udavae++", profile, {"augment.spatial": False, "augment.intensity": False}).augment
    assert not off.standard and not off.slaug and not off.gin


def test_measured_grid_rows_pin_the_setting_they_were_trained_with() -> None:
    """Rows of the results tables trained before the default changed keep training without standard augmentation."""
    from udavae.engine.sweep_plan import build_plan, load_grid_file

    bench = Path(__file__).resolve().parents[2] / "benchmarks"
    for name in ("cpu_sweep_c0_lge.yaml", "cpu_sweep_lge_c0.yaml", "paper_sweep.yaml"):
        plan = build_plan({**load_grid_file(bench / name), "dataset": "data"}, where=name)
        for run in plan.runs:
            cfg = build_config(run.preset, plan.profile, dict(o.split("=", 1) for o in run.overrides))
            expected = run.preset in ("noadapt-aug", "slaug", "udavae++slaug", "gin-ipa")
            assert cfg.augment.spatial is expected, (name, run.name)
            assert cfg.augment.intensity is (run.preset == "noadapt-aug"), (name, run.name)


@pytest.mark.parametrize("preset", ["udavae++", "cfdnet", "sifa", "pnp-adanet", "noadapt"])
@pytest.mark.parametrize("aug", ["augment.slaug", "augment.gin"])
def test_each_augmentation_composes_with_each_adaptation_method(
    preset: str, aug: str, tmp_path: Path, tiny_overrides: dict
) -> None:
    """A batch-level augmentation changes the source batch (SLAug doubles it); every method's step takes it."""
    from udavae.data.synthetic import generate_dataset
    from udavae.engine.trainer import train
    from udavae.methods.presets import build_config

    data = tmp_path / "data"
    generate_dataset(data, n_source=3, n_target=3, size=64, slices=2, seed=1, n_val=1)
    over = {**tiny_overrides, "data.dataset": str(data), "optim.iters_per_epoch": 1, aug: True}
    fit = train(build_config(preset, "tiny", over), tmp_path / "run")  # PnP-AdaNet: one epoch per phase
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(rows) == 3 and fit["best_epoch"] in (1, 2)

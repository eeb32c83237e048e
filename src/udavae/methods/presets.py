"""Named method presets (rows of the deck's tables) and compute profiles.

A preset fixes *what* is trained (architecture variant and loss terms); a profile fixes *how much*
(width, crop, batch, schedule). ``build_config(preset, profile, overrides)`` combines them.

Ablation rows (the UDA-VAE++ deck of Lu et al., CVPRW 2022, bSSFP -> LGE), our reading
(docs/implementation-notes.md, "Presets and the ablation table"):

=================  ======  =========  ======  =====  =====
preset             wiring  mean head  global  local  prior
=================  ======  =========  ======  =====  =====
abl-base           skip    conv       -       -      -
abl-cn             concat  conv       -       -      -
abl-cn-att         concat  gate       -       -      -
abl-cn-att-g       concat  gate       x       -      -
abl-cn-att-gl      concat  gate       x       x      -
abl-cn-glp         concat  conv       x       x      x     (= udavae++, the headline row)
abl-full           concat  gate       x       x      x
=================  ======  =========  ======  =====  =====

``uda-vae`` is the UDA-VAE baseline (Wu & Zhuang, IEEE TMI 2021) as its authors' code (VarDA) builds it:
skip wiring with the spatial gate, no SMIE. ``noadapt`` trains the same segmenter on source labels only.
``cfdnet`` (Wu & Zhuang, IEEE TMI 2020) replaces the Gaussian-kernel distance with the characteristic-function
distance. A preset sets ``method.kind`` first, then options of that kind (``method.<option>`` keys are the
fields of the kind's options dataclass, e.g. :class:`udavae.methods.vae.VAEOptions`).
"""

from __future__ import annotations

from typing import Any

from udavae.config import Config, apply_overrides


def _vae(wiring: str, head: str, g: bool, l: bool, p: bool) -> dict[str, Any]:
    return {
        "method.kind": "vae",
        "model.wiring": wiring,
        "model.mean_head": head,
        "method.mi_global": g,
        "method.mi_local": l,
        "method.mi_prior": p,
    }


_NOADAPT = {"method.kind": "noadapt", "model.wiring": "skip", "model.mean_head": "gate"}

PRESETS: dict[str, dict[str, Any]] = {
    "udavae++": _vae("concat", "conv", True, True, True),
    "uda-vae": _vae("skip", "gate", False, False, False),
    "noadapt": dict(_NOADAPT),
    "cfdnet": {
        "method.kind": "cfd",
        "model.wiring": "skip",
        "model.mean_head": "gate",
        "method.weights.recon": 1.0,
    },
    # SIFA on the baselines' segmenter; weights.seg is set because a kind switch keeps the old kind's value (1000).
    "sifa": {"method.kind": "sifa", "model.wiring": "skip", "model.mean_head": "gate", "method.weights.seg": 1.0},
    "abl-base": _vae("skip", "conv", False, False, False),
    "abl-cn": _vae("concat", "conv", False, False, False),
    "abl-cn-att": _vae("concat", "gate", False, False, False),
    "abl-cn-att-g": _vae("concat", "gate", True, False, False),
    "abl-cn-att-gl": _vae("concat", "gate", True, True, False),
    "abl-cn-glp": _vae("concat", "conv", True, True, True),
    "abl-full": _vae("concat", "gate", True, True, True),
    "pnp-adanet": {"method.kind": "pnp_adanet", "model.wiring": "skip", "model.mean_head": "gate"},
    # Augmentation presets (docs/augmentation.md): the noadapt segmenter with stronger source crops. The first
    # three use no target images.
    "noadapt-aug": {**_NOADAPT, "augment.spatial": True, "augment.intensity": True},
    "slaug": {**_NOADAPT, "augment.spatial": True, "augment.slaug": True},
    "gin-ipa": {"method.kind": "gin_ipa", "model.wiring": "skip", "model.mean_head": "gate", "augment.spatial": True,
                "augment.gin": True},
    "udavae++slaug": {**_vae("concat", "conv", True, True, True), "augment.spatial": True, "augment.slaug": True},
}

PRESET_HELP: dict[str, str] = {
    "udavae++": "UDA-VAE++ headline row: concat wiring, conv mean head, global+local+prior SMIE",
    "uda-vae": "UDA-VAE baseline (VarDA code): skip wiring, spatial-gate mean head, no SMIE",
    "noadapt": "same segmenter trained on source labels only (no target images, no adaptation)",
    "cfdnet": "CFDNet: characteristic-function distance on the full-scale latent, skip wiring, gate head",
    "sifa": "SIFA (Chen et al. AAAI 2019 / TMI 2020): image translation + feature alignment (4 LSGAN critics), "
            "skip wiring, gate head",
    "abl-base": "ablation Base: skip wiring, conv mean head, no SMIE",
    "abl-cn": "ablation Base+CN: concat wiring (CN), conv mean head, no SMIE",
    "abl-cn-att": "ablation Base+CN+Att: concat wiring, spatial-gate mean head (Att), no SMIE",
    "abl-cn-att-g": "ablation Base+CN+Att+Global: concat wiring, gate head, global SMIE",
    "abl-cn-att-gl": "ablation Base+CN+Att+Global+Local: concat wiring, gate head, global+local SMIE",
    "abl-cn-glp": "ablation Base+CN+Global+Local+Prior: concat wiring, conv head, global+local+prior SMIE "
                  "(= udavae++)",
    "abl-full": "ablation, every component: concat wiring, gate head, global+local+prior SMIE",
    "pnp-adanet": "PnP-AdaNet: the noadapt segmenter, then its early encoder levels re-trained on target "
                  "images against WGAN critics of multi-level features and masks",
    "noadapt-aug": "noadapt with the standard augmentation (MONAI affine, elastic, gamma, bias field, noise, blur); "
                   "uses no target images",
    "slaug": "SLAug (Su et al. AAAI 2023): noadapt segmenter, spatial augmentation + global/class-level "
             "location-scale views fused by saliency balancing; uses no target images",
    "gin-ipa": "GIN-IPA (Ouyang et al. TMI 2023): random-convolution and IPA views + spatial augmentation, "
               "consistency between the views; uses no target images",
    "udavae++slaug": "UDA-VAE++ trained on SLAug's fused source views (+ spatial augmentation)",
}

PROFILES: dict[str, dict[str, Any]] = {
    # The paper's setting (a GPU setting: ~5.3-5.7 TFLOP per step).
    "paper": {
        "model.base_width": 64,
        "data.crop": 160,
        "data.jitter": 16,
        "optim.batch_size": 12,
        "optim.epochs": 30,
        "optim.iters_per_epoch": 130,
        "optim.lr": 1e-4,
    },
    # A budget that trains UDA-VAE++ on 2 CPU cores in <= 40 minutes: measured 39 min in fp32 and 28 min with
    # --amp bf16 on an idle 2-core AMD EPYC VM with AVX512-BF16 (README, benchmarks/mscmrseg_cpu.py).
    # Slices zoomed by 2/3 in pixels (192 -> 128; 2.25x fewer pixels), 96x96 training crops (the paper's
    # 160-of-192 at 2/3); evaluation still at the native grid. A pixel zoom rather than a common spacing:
    # the Patch192 C0 headers (1.25 mm) do not describe their pixels, and resampling by them made the C0
    # hearts twice the size of the LGE hearts.
    "cpu": {
        "model.base_width": 16,
        "model.recon_width": 32,
        "data.zoom": 2 / 3,
        "data.size": 128,
        "data.crop": 96,
        "data.jitter": 16,
        "optim.batch_size": 12,
        "optim.epochs": 12,
        "optim.iters_per_epoch": 100,
        "optim.lr": 1e-3,
        "optim.lr_decay": 0.85,
    },
    # Seconds-scale runs for tests and the demo.
    "tiny": {
        "model.base_width": 8,
        "model.recon_width": 16,
        "data.crop": 64,
        "data.jitter": 8,
        "optim.batch_size": 4,
        "optim.epochs": 2,
        "optim.iters_per_epoch": 5,
        "optim.lr": 1e-3,
        "optim.lr_decay": 0.9,
        "train.labelfree_cases": 2,
    },
}


def build_config(preset: str = "udavae++", profile: str = "paper",
                 overrides: dict[str, Any] | None = None) -> Config:
    """Defaults <- profile <- preset <- overrides, validated.

    Raises:
        ValueError: unknown preset / profile / key, or an inconsistent result.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    cfg = Config(preset=preset, profile=profile)
    apply_overrides(cfg, PROFILES[profile])
    apply_overrides(cfg, PRESETS[preset])
    cfg.method.name = preset
    apply_overrides(cfg, overrides or {})
    cfg.validate()
    return cfg

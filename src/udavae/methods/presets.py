"""Named method presets (rows of the results tables) and compute profiles.

A preset fixes *what* is trained (architecture variant, loss terms, augmentation); a profile fixes *how much*
(width, crop, batch, schedule). ``build_config(preset, profile, overrides)`` combines them. Presets are declared
beside their methods (``presets`` of each class in ``udavae.methods``); this module gathers them and holds the
profiles.

Ablation rows (the UDA-VAE++ paper, Lu et al., CVPRW 2022, bSSFP -> LGE), our reading
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

import udavae.methods  # noqa: F401  (registers every method and its presets)
from udavae.config import Config, apply_overrides
from udavae.methods.registry import PRESET_TABLE

#: Method kinds in the order their presets are listed (the headline method first, then the baselines).
_KIND_ORDER = ("vae", "noadapt", "cfd", "sifa", "pnp_adanet", "gin_ipa")
_TABLE = sorted(PRESET_TABLE.items(), key=lambda item: (_KIND_ORDER + (item[1][0],)).index(item[1][0]))
#: preset -> its overrides, ``method.kind`` first (each preset is declared beside its method).
PRESETS: dict[str, dict[str, Any]] = {name: {"method.kind": kind, **p.overrides} for name, (kind, p) in _TABLE}
#: preset -> one line of help.
PRESET_HELP: dict[str, str] = {name: p.help for name, (_, p) in _TABLE}

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
    # --amp bf16 on an idle 2-core AMD EPYC VM with AVX512-BF16 (docs/performance.md, benchmarks/mscmrseg_cpu.py).
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


def build_config(preset: str = "udavae++", profile: str = "paper", overrides: dict[str, Any] | None = None) -> Config:
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

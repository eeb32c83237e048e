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

from udavae.config import PROFILES, build_config, preset_table

__all__ = ["PRESETS", "PRESET_HELP", "PROFILES", "build_config"]

#: Method kinds in the order their presets are listed (the headline method first, then the baselines).
_KIND_ORDER = ("vae", "noadapt", "cfd", "sifa", "pnp_adanet", "gin_ipa")
_TABLE = sorted(preset_table().items(), key=lambda item: (*_KIND_ORDER, item[1][0]).index(item[1][0]))
#: preset -> its overrides, ``method.kind`` first (each preset is declared beside its method).
PRESETS: dict[str, dict[str, Any]] = {name: {"method.kind": kind, **over} for name, (kind, over, _) in _TABLE}
#: preset -> one line of help.
PRESET_HELP: dict[str, str] = {name: text for name, (_, _, text) in _TABLE}

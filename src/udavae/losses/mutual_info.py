"""Jensen-Shannon mutual-information estimate used by the SMIE critics.

Lu et al., CVPRW 2022 (after Hjelm et al., ICLR 2019); docs/implementation-notes.md, section 7.1 (#smie-critics).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["jsd_mi"]


def jsd_mi(t_pos: Tensor, t_neg: Tensor) -> Tensor:
    """I = E[-softplus(-T+)] - E[softplus(T-)] (Deep InfoMax JSD bound).

    ``t_pos`` are critic scores on matched pairs, ``t_neg`` on mismatched pairs; means are over every
    element (batch and, for a local critic, positions). The maximum is 0; at T = 0 it equals -2 ln 2.
    """
    return (-F.softplus(-t_pos.float())).mean() - F.softplus(t_neg.float()).mean()

"""Weight initialisation shared by every trained module.

See docs/implementation-notes.md, section 10 (#init).
"""

from __future__ import annotations

from torch import nn


def init_conv_weights(module: nn.Module, bias: float = 0.01) -> None:
    """Xavier-uniform every Conv2d / ConvTranspose2d weight and fill its bias with ``bias``.

    This is the authors' ``init_weights``; Linear and BatchNorm layers keep PyTorch's defaults, as in the
    authors' code, so parameter statistics at step 0 match it.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, bias)

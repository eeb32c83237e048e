"""Label-conditioned reconstruction decoders (Wu & Zhuang, IEEE TMI 2021; Lu et al., CVPRW 2022).

One decoder per (domain, scale). It reconstructs the image at that scale from the latent sample ``z``
concatenated with a class map ``y`` (one-hot labels for the source, the softmax prediction for the
target), which is what makes the reconstruction term train the target segmentation. See
docs/implementation-notes.md, section 4 (#reconstruction).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from udavae.models.init import init_conv_weights

__all__ = ["ReconDecoder"]


class ReconDecoder(nn.Module):
    """Seven 3x3 convolutions, BatchNorm2d + ReLU after the first six; returns logits.

    The image estimate is ``sigmoid(logits)`` in (0, 1). The sigmoid is left to the consumers (the BCE
    loss works on the logits, see :func:`udavae.losses.reconstruction_bce`) so that no probability is
    ever rounded to exactly 0 or 1 in bfloat16 before a logarithm is taken of it.

    Channels: width, width, width/2, width/2, width/4, width/4, 1 (128 -> 365,665 / 439,393 / 586,849
    parameters for 64 / 128 / 256 latent channels and K = 4).

    Args:
        latent_channels: channels of ``z`` at this scale.
        num_classes: channels of ``y``.
        width: widest channel count (128 in the paper); must be >= 4.
    """

    def __init__(self, latent_channels: int, num_classes: int, width: int = 128) -> None:
        super().__init__()
        if width < 4:
            raise ValueError(f"ReconDecoder width must be >= 4, got {width}")
        chans = [latent_channels + num_classes, width, width, width // 2, width // 2, width // 4, width // 4]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(chans[-1], 1, 3, padding=1))
        self.body = nn.Sequential(*layers)
        init_conv_weights(self)

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        """Reconstruction logits B x 1 x H x W from ``z`` (B x C x H x W) and ``y`` (B x K x H x W)."""
        return self.body(torch.cat((z, y.to(z.dtype)), dim=1))

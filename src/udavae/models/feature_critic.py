"""Domain critics of PnP-AdaNet: a strided-conv network that scores a whole image with one number.

PnP-AdaNet (Dou et al., IJCAI 2018; IEEE Access 2019) discriminates source from target with two critics: one on
multi-level features of the segmenter, brought to one spatial grid and stacked along the channels, and one on
the predicted segmentation masks. The authors' critics are residual networks with batch norm that end in a
flattened linear layer (so they accept one crop size only). Ours are a plain stack of stride-2 convolutions with
LeakyReLU(0.2) and no normalisation (weight clipping of a WGAN critic and batch statistics do not mix well), and
end in a global average pool, so any crop works. See docs/methods/pnp-adanet.md.

:func:`to_grid` moves a feature map of one scale to another *losslessly* (pixel shuffle up, pixel unshuffle
down), which is how the authors put their 1/8-scale features next to the full-scale logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from udavae.models.init import init_conv_weights

__all__ = ["ConvCritic", "grid_channels", "to_grid"]


def _can_shuffle(channels: int, factor: int) -> bool:
    return channels % (factor * factor) == 0


def grid_channels(channels: int, level: int, grid_level: int) -> int:
    """Channels of a level-``level`` map (scale 1/2**level) after :func:`to_grid` to ``grid_level``."""
    if level > grid_level:
        r = 2 ** (level - grid_level)
        return channels // (r * r) if _can_shuffle(channels, r) else channels
    if level < grid_level:
        return channels * 4 ** (grid_level - level)
    return channels


def to_grid(x: Tensor, level: int, grid_level: int) -> Tensor:
    """Bring a B x C x H x W map of scale 1/2**level to scale 1/2**grid_level without discarding values.

    Coarser maps are pixel-shuffled up (C / r**2 channels; nearest-neighbour up-sampling with C channels when C is
    not divisible by r**2), finer maps are pixel-unshuffled down (C * r**2 channels), as the authors' critic
    input does with its 1/8-scale features.
    """
    if level > grid_level:
        r = 2 ** (level - grid_level)
        return F.pixel_shuffle(x, r) if _can_shuffle(x.shape[1], r) else F.interpolate(x, scale_factor=r)
    if level < grid_level:
        return F.pixel_unshuffle(x, 2 ** (grid_level - level))
    return x


class ConvCritic(nn.Module):
    """An image-level critic: optional 1x1 stem, stride-2 3x3 convolutions, global average pool, linear score.

    Args:
        in_channels: channels of the input map.
        widths: output channels of the stride-2 convolutions (each halves the resolution).
        stem: channels of a 1x1 convolution applied first (0: none); it mixes a wide stacked input cheaply.

    ``forward`` returns one unbounded score (a WGAN potential, or a logit for the standard GAN loss) per image,
    shape B.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], stem: int = 0) -> None:
        super().__init__()
        if in_channels < 1 or not widths:
            raise ValueError("ConvCritic needs in_channels >= 1 and at least one stride-2 layer")
        layers: list[nn.Module] = []
        c = in_channels
        if stem:
            layers += [nn.Conv2d(c, stem, 1), nn.LeakyReLU(0.2, inplace=True)]
            c = stem
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c = w
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)
        init_conv_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Scores, shape B."""
        return self.head(self.body(x).mean(dim=(2, 3))).squeeze(1)

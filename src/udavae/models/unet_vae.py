"""The shared segmentation network: a U-Net whose decoder carries three Gaussian bottlenecks.

Layout (Wu & Zhuang, IEEE TMI 2021; Lu et al., CVPRW 2022; docs/implementation-notes.md, section 3,
#network): ``depth`` encoder levels of conv3x3-IN-ReLU pairs (channels ``base * 2**i``) joined by 2x2
max-pooling; a decoder of 2x2 stride-2 transposed convolutions and conv pairs. The last three decoder
scales (1/4, 1/2, full) each end in a variational bottleneck (mu / log-var heads + reparameterised
sample ``z``) and a segmentation head on ``z``; a fusion head combines the three softmax maps. The
bottlenecks are *sequential*: the coarse sample ``z`` (not ``mu``) feeds the next finer stage, so noise
injected at 1/4 propagates into the finer posteriors.

Two decoder wirings exist in the authors' code history and both are options (``ModelConfig.wiring``):

* ``skip``: stage input = cat[ConvT(z_coarse), encoder_skip] (VarDA, HEAD ``network2.py``);
* ``concat``: stage input = cat[ConvT(z_coarse), ConvT(h_coarse)], the *same* ConvT module applied
  twice, with no encoder skip at the 1/2 and full stages (2022 release, ``network_wo_A.py``).

See docs/implementation-notes.md, sections 3.3 (#wiring) and 3.4 (#mean-heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udavae.config import MEAN_HEADS, WIRINGS, ModelConfig
from udavae.models.init import init_conv_weights

__all__ = ["LATENT_SCALES", "UNetVAE", "VAEOutput"]

#: Order of every per-scale tuple in :class:`VAEOutput` (full resolution first).
LATENT_SCALES = ("full", "half", "quarter")


@dataclass
class VAEOutput:
    """Everything the objectives need from one forward pass.

    Attributes:
        logits: fusion-head logits, B x K x H x W (the prediction used at test time).
        seg_logits: per-scale head logits (full, 1/2, 1/4).
        mu / logvar: posterior mean and log-variance (full, 1/2, 1/4), each in (-1, 1) (tanh).
        z: the samples (``mu`` when not sampling) that fed the heads and the finer stages.
    """

    logits: Tensor
    seg_logits: tuple[Tensor, Tensor, Tensor]
    mu: tuple[Tensor, Tensor, Tensor]
    logvar: tuple[Tensor, Tensor, Tensor]
    z: tuple[Tensor, Tensor, Tensor]


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


def _conv_pair(cin: int, cout: int, dropout: float | None = None) -> nn.Sequential:
    """conv-IN-ReLU, optional Dropout2d, conv-IN-ReLU (one U-Net level)."""
    layers: list[nn.Module] = [_conv3x3(cin, cout), nn.InstanceNorm2d(cout), nn.ReLU(inplace=True)]
    if dropout is not None:
        layers.append(nn.Dropout2d(dropout))
    layers += [_conv3x3(cout, cout), nn.InstanceNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class GaussianHeads(nn.Module):
    """Posterior heads of one scale: mu and log sigma^2, both squashed by IN + tanh.

    ``gate`` (the ablation's "Att"): a 1x1 conv C->1 gives an unbounded per-pixel gate multiplied onto
    ``h`` (no sigmoid, as in the authors' code). ``conv``: a 3x3 conv C->C. The log-variance head is always a
    3x3 conv C->C, so sigma stays in (0.61, 1.65).
    """

    def __init__(self, channels: int, mean_head: str) -> None:
        super().__init__()
        if mean_head not in MEAN_HEADS:
            raise ValueError(f"mean_head={mean_head!r} is not one of {', '.join(MEAN_HEADS)}")
        self.mean_head = mean_head
        self.mean = nn.Conv2d(channels, 1, 1) if mean_head == "gate" else _conv3x3(channels, channels)
        self.logvar = _conv3x3(channels, channels)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Return (mu, logvar) for the feature map ``h``."""
        m = h * self.mean(h) if self.mean_head == "gate" else self.mean(h)
        mu = torch.tanh(F.instance_norm(m))
        logvar = torch.tanh(F.instance_norm(self.logvar(h)))
        return mu, logvar


class UNetVAE(nn.Module):
    """Three-scale variational U-Net of UDA-VAE / UDA-VAE++ (shared by both domains).

    Args:
        cfg: architecture (width, depth, wiring, mean head, dropout).
        num_classes: K, segmentation classes including background.
        in_channels: image channels (1 for MR).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        if cfg.depth < 3:
            raise ValueError(f"depth must be >= 3 (three latent scales), got {cfg.depth}")
        if cfg.wiring not in WIRINGS:
            raise ValueError(f"wiring={cfg.wiring!r} is not one of {', '.join(WIRINGS)}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.depth = cfg.depth
        self.wiring = cfg.wiring
        self.num_classes = num_classes
        ch = [cfg.base_width * 2**i for i in range(cfg.depth)]
        self.channels = tuple(ch)
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = nn.ModuleList(_conv_pair(in_channels if i == 0 else ch[i - 1], ch[i]) for i in range(cfg.depth))
        # Decoder stage at level l (0 = full .. depth-2) up-samples level l+1; index = level.
        # The stage producing the 1/4 latent (level 2) has no dropout, as in the authors' code.
        self.up = nn.ModuleList(nn.ConvTranspose2d(ch[l + 1], ch[l], 2, stride=2) for l in range(cfg.depth - 1))
        self.decoder = nn.ModuleList(
            _conv_pair(2 * ch[l], ch[l], None if l == 2 else cfg.dropout) for l in range(cfg.depth - 1)
        )
        # Latent scales, ordered (full, 1/2, 1/4) = levels (0, 1, 2).
        self.heads = nn.ModuleList(GaussianHeads(ch[l], cfg.mean_head) for l in range(3))
        k = num_classes
        self.seg_heads = nn.ModuleList(
            [
                nn.Sequential(
                    _conv3x3(ch[0], ch[0]), nn.InstanceNorm2d(ch[0]), nn.ReLU(inplace=True), _conv3x3(ch[0], k)
                ),
                _conv3x3(ch[1], k),
                _conv3x3(ch[2], k),
            ]
        )
        self.fusion = nn.Sequential(
            _conv3x3(3 * k, 3 * k), nn.InstanceNorm2d(3 * k), nn.ReLU(inplace=True), _conv3x3(3 * k, k)
        )
        init_conv_weights(self)

    @property
    def stride(self) -> int:
        """Total down-sampling factor; input sides must be multiples of it."""
        return 2 ** (self.depth - 1)

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` if ``x`` is not B x C x H x W with H, W divisible by the stride."""
        if x.dim() != 4:
            raise ValueError(f"UNetVAE expects a B x C x H x W tensor, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride or h == 0 or w == 0:
            raise ValueError(
                f"input size {h}x{w} is not divisible by the network stride {self.stride} "
                f"(2**(depth-1) with depth={self.depth}); crop or pad the image, e.g. to 160 or 192"
            )

    @staticmethod
    def reparameterize(mu: Tensor, logvar: Tensor, sample: bool) -> Tensor:
        """z = mu + sigma * eps with eps drawn on the tensor's own device; z = mu when not sampling."""
        if not sample:
            return mu
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def forward(self, x: Tensor, sample: bool | None = None) -> VAEOutput:
        """Segment ``x``; ``sample`` (default: ``self.training``) draws z, else z = mu.

        Passing ``sample=True`` in eval mode gives Monte-Carlo samples of the posterior predictive.
        """
        self.check_input(x)
        if sample is None:
            sample = self.training
        skips: list[Tensor] = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        # Deterministic stages down to (and including) the one that produces the 1/4 latent.
        for level in range(self.depth - 2, 1, -1):
            h = self.decoder[level](torch.cat((self.up[level](h), skips[level]), dim=1))
        mus: list[Tensor] = []
        lvs: list[Tensor] = []
        zs: list[Tensor] = []
        segs: list[Tensor] = []
        z = h
        for level in (2, 1, 0):
            if level < 2:
                up = self.up[level]
                other = skips[level] if self.wiring == "skip" else up(h)
                h = self.decoder[level](torch.cat((up(z), other), dim=1))
            mu, lv = self.heads[level](h)
            z = self.reparameterize(mu, lv, sample)
            mus.append(mu)
            lvs.append(lv)
            zs.append(z)
            segs.append(self.seg_heads[level](z))
        # Collected coarse -> fine; expose fine -> coarse.
        seg_full, seg_half, seg_quarter = segs[::-1]
        size = seg_full.shape[-2:]
        fused = torch.cat(
            (
                torch.softmax(seg_full, dim=1),
                F.interpolate(torch.softmax(seg_half, dim=1), size=size, mode="bilinear", align_corners=False),
                F.interpolate(torch.softmax(seg_quarter, dim=1), size=size, mode="bilinear", align_corners=False),
            ),
            dim=1,
        )
        return VAEOutput(
            logits=self.fusion(fused),
            seg_logits=(seg_full, seg_half, seg_quarter),
            mu=(mus[2], mus[1], mus[0]),
            logvar=(lvs[2], lvs[1], lvs[0]),
            z=(zs[2], zs[1], zs[0]),
        )

"""SMIE: the structural mutual-information estimators of UDA-VAE++ (Lu et al., CVPRW 2022).

Deep-InfoMax style critics between the segmentation logits Y and the reconstructions M of one domain,
at three scales. Only the layers the authors' code actually runs are built (its unused ``c0..c2``, ``c4``,
``c5`` are left out), and linear sizes are computed from ``crop_size`` instead of being hard-coded for
160 x 160 (at 160: global FC input 25,600, local FC 6,400 -> 32, prior FC 1,600 -> 256).

The critics and the networks minimise the same loss (the authors' non-adversarial form): both
maximise the global / local JSD bounds and the prior term E[log D(u)] + E[log(1 - D(Y))].
See docs/implementation-notes.md, section 7 (#smie) and, for the differences from the authors'
code, section 13, D1-D4.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udavae.losses.mutual_info import jsd_mi
from udavae.models.init import init_conv_weights

__all__ = ["SMIE"]

Triple = tuple[Tensor, Tensor, Tensor]

#: Reference distributions of the prior critic: ``uniform`` (the authors' code) or ``normal`` (the paper).
PRIORS = ("uniform", "normal")


def _conv_in_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.ReLU(inplace=True))


def _at_half(t: Triple) -> Tensor:
    """(full, 1/2, 1/4) maps -> cat[up2(1/4), 1/2, maxpool2(full)] at 1/2 resolution (the authors' order)."""
    full, half, quarter = t
    up = F.interpolate(quarter, scale_factor=2.0, mode="bilinear", align_corners=False)
    return torch.cat((up, half, F.max_pool2d(full, 2)), dim=1)


class GlobalCritic(nn.Module):
    """One score per image from the whole (Y, M) pair at 1/2 resolution."""

    def __init__(self, num_classes: int, half: int) -> None:
        super().__init__()
        self.y_branch = _conv_in_relu(3 * num_classes, 3)
        self.m_branch = nn.Sequential(_conv_in_relu(3, 3), _conv_in_relu(3, 1))
        self.fc = nn.Sequential(
            nn.Linear(4 * half * half, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, 1),
        )

    def forward(self, y_half: Tensor, m_half: Tensor) -> Tensor:
        """Scores B x 1 for the pre-assembled Y (3K channels) and M (3 channels) at 1/2 resolution."""
        y = self.y_branch(y_half).flatten(1)
        m = self.m_branch(m_half).flatten(1)
        return self.fc(torch.cat((y, m), dim=1))


class LocalCritic(nn.Module):
    """A score map at 1/2 resolution: a global summary of Y broadcast against local features of M."""

    def __init__(self, num_classes: int, half: int) -> None:
        super().__init__()
        self.y_branch = nn.Sequential(
            _conv_in_relu(3 * num_classes, 3), _conv_in_relu(3, 1), nn.Flatten(1), nn.Linear(half * half, 32)
        )
        self.m_branch = _conv_in_relu(3, 3)
        self.joint = nn.Sequential(
            nn.Conv2d(32 + 3, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(64, 1, 3, padding=1),
        )

    def forward(self, y_half: Tensor, m_half: Tensor) -> Tensor:
        """Score map B x 1 x H/2 x W/2."""
        m = self.m_branch(m_half)
        y = self.y_branch(y_half)[:, :, None, None].expand(-1, -1, m.shape[-2], m.shape[-1])
        return self.joint(torch.cat((y, m), dim=1))


class PriorCritic(nn.Module):
    """Discriminator between Y and samples of the reference distribution, at 1/4 resolution (logits)."""

    def __init__(self, num_classes: int, quarter: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_in_relu(3 * num_classes, 1),
            nn.Flatten(1),
            nn.Linear(quarter * quarter, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 1),
        )

    def forward(self, y: Triple) -> Tensor:
        """Logit of D(Y), B x 1, for Y = (full, 1/2, 1/4)."""
        full, half, quarter = y
        return self.body(torch.cat((quarter, F.max_pool2d(half, 2), F.max_pool2d(full, 4)), dim=1))


class SMIE(nn.Module):
    """Global / local / prior MI estimators of one domain; each can be switched off.

    Args:
        num_classes: K, channels of the segmentation logits.
        crop_size: side of the full-resolution maps (training crop); must be divisible by 4.
        use_global / use_local / use_prior: which estimators are built and used (at least one).
        alpha / beta / gamma: weights of the global, local and prior estimates (0.5 / 1.0 / 0.1).
        prior: reference distribution of the prior critic, ``uniform`` on [0, 1) or ``normal`` N(0, 1).
    """

    def __init__(
        self,
        num_classes: int,
        crop_size: int,
        *,
        use_global: bool = True,
        use_local: bool = True,
        use_prior: bool = True,
        alpha: float = 0.5,
        beta: float = 1.0,
        gamma: float = 0.1,
        prior: str = "uniform",
    ) -> None:
        super().__init__()
        if crop_size < 4 or crop_size % 4:
            raise ValueError(f"SMIE crop_size must be a positive multiple of 4, got {crop_size}")
        if prior not in PRIORS:
            raise ValueError(f"prior={prior!r} is not one of {', '.join(PRIORS)}")
        if not (use_global or use_local or use_prior):
            raise ValueError("SMIE needs at least one of the global, local and prior estimators")
        self.crop_size = crop_size
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.prior = prior
        half, quarter = crop_size // 2, crop_size // 4
        self.global_critic = GlobalCritic(num_classes, half) if use_global else None
        self.local_critic = LocalCritic(num_classes, half) if use_local else None
        self.prior_critic = PriorCritic(num_classes, quarter) if use_prior else None
        init_conv_weights(self)

    def _check(self, y: Triple, m: Triple) -> None:
        size = self.crop_size
        for i, (yy, mm) in enumerate(zip(y, m)):
            s = size // 2**i
            if tuple(yy.shape[-2:]) != (s, s) or tuple(mm.shape[-2:]) != (s, s) or mm.shape[1] != 1:
                raise ValueError(
                    f"SMIE built for {size}x{size} crops expects scale {i} maps of {s}x{s} (M with 1 "
                    f"channel), got Y {tuple(yy.shape)} and M {tuple(mm.shape)}"
                )

    def _reference_sample(self, t: Tensor) -> Tensor:
        return torch.rand_like(t) if self.prior == "uniform" else torch.randn_like(t)

    def forward(self, y: Triple, m: Triple) -> dict[str, Tensor]:
        """Estimates for segmentation logits ``y`` and reconstructions ``m``, both ordered (full, 1/2, 1/4).

        Negatives pair sample i's Y with sample i+1's M (the last with the first), the same roll at every
        scale. Returns the enabled estimates (``global``, ``local``, ``prior``) and
        ``loss = -(alpha * I_G + beta * I_L + gamma * P)`` over them.
        """
        self._check(y, m)
        out: dict[str, Tensor] = {}
        terms: list[Tensor] = []
        if self.global_critic is not None or self.local_critic is not None:
            y_half = _at_half(y)
            m_half = _at_half(m)
            m_neg = torch.roll(m_half, shifts=-1, dims=0)  # row i <- row i+1, last <- first
            for name, critic, weight in (
                ("global", self.global_critic, self.alpha),
                ("local", self.local_critic, self.beta),
            ):
                if critic is None:
                    continue
                out[name] = jsd_mi(critic(y_half, m_half), critic(y_half, m_neg))
                terms.append(weight * out[name])
        if self.prior_critic is not None:
            ref = tuple(self._reference_sample(t) for t in y)
            log_d_ref = F.logsigmoid(self.prior_critic(ref).float()).mean()  # type: ignore[arg-type]
            log_1m_d_y = F.logsigmoid(-self.prior_critic(y).float()).mean()
            out["prior"] = log_d_ref + log_1m_d_y
            terms.append(self.gamma * out["prior"])
        out["loss"] = -torch.stack(terms).sum()
        return out

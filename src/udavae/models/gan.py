"""Image-translation and adversarial parts of SIFA: generators, PatchGAN discriminators, LSGAN losses, image pool.

SIFA (Chen et al., AAAI 2019; IEEE TMI 2020; authors' TensorFlow code github.com/cchen-cc/SIFA) builds on
CycleGAN: a ResNet image generator (source -> target-like), a decoder that turns the segmenter's features back
into a source-like image, 70x70-style PatchGAN discriminators trained with the least-squares (LSGAN) objective,
and a history of generated images from which the discriminators are fed. The layouts follow the authors'
``model.py`` (instance norm, ReLU residual blocks, 4x4 discriminator kernels with leaky ReLU 0.2, a tanh
output with an optional residual connection from the input image) at widths chosen by the caller; see
docs/methods/sifa.md for the mapping onto udavae and every difference.

Images in these modules live in [-1, 1] (the generators' tanh range, as in the authors' code); the segmenter
keeps its [0, 1] inputs and :mod:`udavae.methods.sifa` converts between the two.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "ImageGenerator",
    "ImagePool",
    "LatentDecoder",
    "PatchDiscriminator",
    "ResidualBlock",
    "init_gan_weights",
    "lsgan_discriminator_loss",
    "lsgan_generator_loss",
]


def init_gan_weights(module: nn.Module, std: float = 0.02) -> None:
    """Every conv / transposed-conv weight ~ N(0, std) truncated at 2 std, biases 0 (the authors' TF initialiser).

    Instance-norm affine parameters keep PyTorch's defaults (scale 1, shift 0), as TensorFlow's do.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _norm(channels: int) -> nn.InstanceNorm2d:
    """Instance norm with a learned scale and shift (TensorFlow's ``instance_norm`` default)."""
    return nn.InstanceNorm2d(channels, affine=True)


def _conv_in_relu(cin: int, cout: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2), _norm(cout), nn.ReLU(inplace=True)]


def _up_in_relu(cin: int, cout: int) -> list[nn.Module]:
    """3x3 stride-2 transposed conv that exactly doubles the size (TF ``SAME``), IN, ReLU."""
    return [nn.ConvTranspose2d(cin, cout, 3, 2, padding=1, output_padding=1), _norm(cout), nn.ReLU(inplace=True)]


class ResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN plus the input, then ReLU (the authors' block; zero padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_in_relu(channels, channels, 3), nn.Conv2d(channels, channels, 3, padding=1), _norm(channels)
        )

    def forward(self, x: Tensor) -> Tensor:
        """``relu(x + body(x))``."""
        return torch.relu(x + self.body(x))


def _image_head(width: int, channels: int) -> nn.Conv2d:
    return nn.Conv2d(width, channels, 7, padding=3)


class ImageGenerator(nn.Module):
    """CycleGAN-style ResNet generator: c7s1-w, d2w, d4w, ``blocks`` x R4w, u2w, uw, c7s1-1, tanh.

    Input sides must be multiples of 4 (two stride-2 stages). With ``skip`` the output is
    ``tanh(x + residual)``, so an untrained generator starts near the identity map (the authors' ``skip=True``).

    Args:
        width: channels of the first stage (the authors' ngf = 32).
        blocks: residual blocks at 1/4 resolution (9 in the authors' code).
        skip: add the input image before the final tanh.
        channels: image channels.
    """

    def __init__(self, width: int, blocks: int = 9, skip: bool = True, channels: int = 1) -> None:
        super().__init__()
        self.skip = skip
        w = width
        self.body = nn.Sequential(
            *_conv_in_relu(channels, w, 7),
            *_conv_in_relu(w, 2 * w, 3, 2),
            *_conv_in_relu(2 * w, 4 * w, 3, 2),
            *[ResidualBlock(4 * w) for _ in range(blocks)],
            *_up_in_relu(4 * w, 2 * w),
            *_up_in_relu(2 * w, w),
            _image_head(w, channels),
        )
        init_gan_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Translated image in (-1, 1), same shape as ``x`` (B x C x H x W in [-1, 1])."""
        out = self.body(x)
        return torch.tanh(x + out if self.skip else out)


class LatentDecoder(nn.Module):
    """The decoder U: image from a feature map at 1/2**``upsamplings`` resolution.

    conv3x3 to 4w, ``blocks`` residual blocks, ``upsamplings`` stride-2 transposed convs (4w -> ... -> w),
    c7s1-1 and tanh; with ``skip`` the image whose features are decoded is added before the tanh (the
    authors' decoder with ``skip=True``: it then learns a residual appearance change, not the anatomy).

    Args:
        in_channels: channels of the feature map.
        width: w (the authors' ngf).
        blocks: residual blocks (4 in the authors' code).
        upsamplings: stride-2 stages back to full resolution (3 for their 1/8 features, 2 for our 1/4 latent).
        skip: add the encoded image before the final tanh.
        channels: image channels.
    """

    def __init__(
        self, in_channels: int, width: int, blocks: int = 4, upsamplings: int = 2, skip: bool = True, channels: int = 1
    ) -> None:
        super().__init__()
        if upsamplings < 1:
            raise ValueError(f"upsamplings must be >= 1, got {upsamplings}")
        self.skip = skip
        w = width
        widths = [4 * w] + [max(w, (4 * w) >> (i + 1)) for i in range(upsamplings)]
        ups: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            ups += _up_in_relu(cin, cout)
        self.body = nn.Sequential(
            *_conv_in_relu(in_channels, 4 * w, 3),
            *[ResidualBlock(4 * w) for _ in range(blocks)],
            *ups,
            _image_head(widths[-1], channels),
        )
        init_gan_weights(self)

    def forward(self, features: Tensor, image: Tensor) -> Tensor:
        """Decoded image in (-1, 1) with ``image``'s shape (``image``: the encoded image, in [-1, 1])."""
        out = self.body(features)
        return torch.tanh(image + out if self.skip else out)


class PatchDiscriminator(nn.Module):
    """PatchGAN: 4x4 convs, strides 2, 2, 2, 1, 1, widths w, 2w, 4w, 8w, ``out_channels``; IN except first/last.

    Leaky ReLU 0.2 after every conv but the last; padding 2 as in the authors' code. Returns raw scores
    (no sigmoid): the LSGAN losses regress them to 1 (real) and 0 (fake).

    Args:
        in_channels: input channels (1 for images, K for segmentation logits).
        width: w (the authors' ndf = 64).
        out_channels: score maps (2 for the source-image critic: real/fake and the auxiliary head).
    """

    def __init__(self, in_channels: int, width: int, out_channels: int = 1) -> None:
        super().__init__()
        w = width
        layers: list[nn.Module] = []
        for i, (cin, cout, stride) in enumerate(
            ((in_channels, w, 2), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 1))
        ):
            layers.append(nn.Conv2d(cin, cout, 4, stride, padding=2))
            if i > 0:
                layers.append(_norm(cout))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        layers.append(nn.Conv2d(8 * w, out_channels, 4, 1, padding=2))
        self.body = nn.Sequential(*layers)
        init_gan_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Score maps B x ``out_channels`` x h x w."""
        return self.body(x)


def lsgan_generator_loss(score: Tensor) -> Tensor:
    """Mean (D(fake) - 1)^2, in float32: what a generator minimises (Mao et al., ICCV 2017)."""
    return (score.float() - 1.0).square().mean()


def lsgan_discriminator_loss(real: Tensor, fake: Tensor) -> Tensor:
    """0.5 [mean (D(real) - 1)^2 + mean D(fake)^2], in float32 (the authors' discriminator loss)."""
    return 0.5 * ((real.float() - 1.0).square().mean() + fake.float().square().mean())


class ImagePool(nn.Module):
    """History of generated batches fed to a discriminator (Shrivastava et al., CVPR 2017), as SIFA keeps it.

    The first ``size`` batches are stored and returned unchanged; afterwards, with probability 1/2 the new
    batch is returned, otherwise a random stored batch is returned and replaced by the new one. Entries are
    whole batches, as in the authors' code. Decisions use PyTorch's CPU generator (seeded and restored on
    resume by the trainer) and never read a device tensor, so a step does not synchronise with the device.
    The pool travels in ``state_dict`` (extra state, one stacked tensor), so a resumed run continues exactly;
    a batch of another shape (e.g. a smaller last batch) bypasses it.

    Args:
        size: number of stored batches (50 in the authors' configuration); 0 disables the pool.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"pool size must be >= 0, got {size}")
        self.size = size
        self.images: list[Tensor] = []

    def query(self, batch: Tensor) -> Tensor:
        """The batch to show the discriminator in place of ``batch`` (detached); updates the history."""
        batch = batch.detach()
        if self.size == 0 or (self.images and self.images[0].shape != batch.shape):
            return batch
        if self.images and self.images[0].device != batch.device:  # e.g. loaded on the CPU, training on a GPU
            self.images = [im.to(batch.device) for im in self.images]
        if len(self.images) < self.size:
            self.images.append(batch.clone())
            return batch
        if torch.rand(()).item() < 0.5:
            return batch
        i = int(torch.randint(self.size, ()).item())
        old, self.images[i] = self.images[i], batch.clone()
        return old.to(batch.dtype)

    def get_extra_state(self) -> Tensor:
        """The stored batches stacked (N x B x C x H x W), or an empty tensor."""
        return torch.stack(self.images) if self.images else torch.empty(0)

    def set_extra_state(self, state: Tensor) -> None:
        """Restore the history from :meth:`get_extra_state`'s tensor."""
        self.images = [im.clone() for im in state.unbind(0)] if state.numel() else []

    def extra_repr(self) -> str:
        return f"size={self.size}, stored={len(self.images)}"

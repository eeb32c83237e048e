"""SIFA: synergistic image and feature alignment, on udavae's segmenter.

C. Chen, Q. Dou, H. Chen, J. Qin, P.-A. Heng. "Synergistic Image and Feature Adaptation: Towards Cross-Modality
Domain Adaptation for Medical Image Segmentation", AAAI 2019; extended as "Unsupervised Bidirectional
Cross-Modality Adaptation via Deeply Synergistic Image and Feature Alignment for Medical Image Segmentation",
IEEE TMI 39(7), 2020. Authors' TensorFlow code: github.com/cchen-cc/SIFA (master = TMI version; loss weights
from its ``main.py``, settings from ``config_param.json``).

Parts (x_s source, x_t target, images in [-1, 1] for the GAN parts):

* G_t (:class:`~udavae.models.gan.ImageGenerator`): x_s -> x^{s->t}, target-like;
* E + C = ``self.net`` (the udavae segmenter, deterministic: ``sample=False``, z = mu); it segments
  x^{s->t} with the source labels, and x_t at test time (:class:`~udavae.engine.inference.Predictor`);
* U (:class:`~udavae.models.gan.LatentDecoder`): E's 1/4-scale latent -> source-like image; x^{t->s} =
  U(E(x_t)), and the cycle x^{s->t->s} = U(E(x^{s->t}));
* critics: D_t (x_t vs x^{s->t}), D_s (x_s vs x^{t->s}, plus an auxiliary head x^{s->t->s} vs x^{t->s}),
  D_p and D_p,aux on the fusion and 1/4-head logits (x^{s->t} taken as real, x_t as fake).

Each part minimises its own objective, as in the authors' code (terms weighted as logged):

    G_t:   cyc_source + cyc_target + adv_target_image
    U:     cyc_source + cyc_target + adv_source_image
    E, C:  seg_fusion + seg_quarter [+ seg_source]
           + encoder * (cyc_source + cyc_target + adv_source_image)
           + adv_source_aux + adv_pred_fusion + adv_pred_quarter
    D_*:   LSGAN discriminator losses (fakes from the image pools)

One forward pass serves the three generator-side objectives (two backward passes restricted to their
parameters); the discriminators then step on detached outputs. See docs/methods/sifa.md for the weights
(paper vs ours), learning rates, architecture and every difference from the authors' code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from udavae.config import Config, OptimConfig
from udavae.methods.base import (
    AutocastFactory,
    Batch,
    Forward,
    MethodOptions,
    SegWeights,
    UDAMethod,
    adam,
    batch_images,
    batch_labels,
    one_hot,
)
from udavae.methods.registry import Preset, register_method
from udavae.models.gan import (
    ImageGenerator,
    ImagePool,
    LatentDecoder,
    PatchDiscriminator,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)

__all__ = ["SIFAMethod", "SIFAOptions", "SIFAWeights", "sifa_task_loss"]

#: The generator-side terms the encoder takes with the factor ``weights.encoder`` (SIFA's 0.1 * g_loss_B).
_SHARED_WITH_U = ("cyc_source", "cyc_target", "adv_source_image")


@dataclass
class SIFAWeights(SegWeights):
    """Loss weights of SIFA; defaults are the authors' code (TMI version), on its scale (segmentation = 1).

    Attributes:
        seg: weight of the main segmentation loss (weighted CE + Dice of the fusion head on the translated
            source images x^{s->t}, source labels); 1 in SIFA.
        seg_aux: weight of the same loss on the 1/4-scale head (SIFA's deeply supervised low-level classifier, 0.1).
        seg_source: weight of the same loss on the original source images (0: not computed, as in SIFA).
        cycle: lambda of both L1 cycle-consistency terms (lambda_A = lambda_B = 10 in SIFA).
        adv_target: LSGAN weight of G_t against the target-image critic D_t (1).
        adv_source: LSGAN weight of U against the source-image critic D_s (1).
        encoder: factor with which the encoder takes the cycle and adv_source terms (0.1, SIFA's 0.1 * g_loss_B).
        adv_aux: LSGAN weight of the encoder against D_s's auxiliary head (0.1).
        adv_pred: LSGAN weight of the encoder against the fusion-logit critic D_p (0.1).
        adv_pred_aux: LSGAN weight of the encoder against the 1/4-head logit critic (0.01).
    """

    seg: float = 1.0
    seg_aux: float = 0.1
    seg_source: float = 0.0
    cycle: float = 10.0
    adv_target: float = 1.0
    adv_source: float = 1.0
    encoder: float = 0.1
    adv_aux: float = 0.1
    adv_pred: float = 0.1
    adv_pred_aux: float = 0.01


@dataclass
class SIFAOptions(MethodOptions):
    """Options of ``method.kind=sifa`` (use ``--preset sifa``: it also sets ``weights.seg`` to SIFA's scale).

    Attributes:
        gen_width: first-stage channels of G_t and U (0: model.base_width // 2, SIFA's ngf 32 at width 64).
        disc_width: first-stage channels of the four PatchGAN critics (0: model.base_width, SIFA's ndf 64).
        gen_blocks: residual blocks of the image generator G_t (9 in SIFA).
        dec_blocks: residual blocks of the decoder U (4 in SIFA).
        skip: G_t and U add their input image before the final tanh (SIFA's skip=1).
        pool_size: generated batches kept per image critic (50 in SIFA; 0 disables the pools).
        gan_lr: Adam learning rate of G_t, U and the critics (2e-4 in SIFA); decayed by optim.lr_decay per epoch.
        gan_beta1: Adam beta1 of G_t, U and the critics (0.5 in SIFA); the segmenter keeps (0.9, 0.999).
        weights: loss weights.
    """

    kind: str = "sifa"
    gen_width: int = 0
    disc_width: int = 0
    gen_blocks: int = 9
    dec_blocks: int = 4
    skip: bool = True
    pool_size: int = 50
    gan_lr: float = 2e-4
    gan_beta1: float = 0.5
    weights: SIFAWeights = field(default_factory=SIFAWeights)

    def widths(self, cfg: Config) -> tuple[int, int]:
        """(generator width, discriminator width) with the defaults resolved from ``cfg.model.base_width``."""
        return (self.gen_width or max(1, cfg.model.base_width // 2), self.disc_width or cfg.model.base_width)

    part_labels: ClassVar[tuple[str, str]] = ("image generator G_t + decoder U", "discriminators (4 PatchGAN)")

    def describe(self) -> str:
        """The adversarial parts for ``udavae model info``'s header."""
        return (
            f"G_t={self.gen_blocks} res-blocks U={self.dec_blocks} res-blocks critics=4 PatchGAN pool={self.pool_size}"
        )

    def validate(self, cfg: Config) -> None:
        """Widths, block counts and pool are >= 0, Adam settings valid, weights >= 0, crop divisible by 4."""
        for name in ("gen_width", "disc_width", "gen_blocks", "dec_blocks", "pool_size"):
            if getattr(self, name) < 0:
                raise ValueError(f"method.{name} must be >= 0, got {getattr(self, name)}")
        if self.gan_lr <= 0:
            raise ValueError(f"method.gan_lr must be > 0, got {self.gan_lr}")
        if not 0 <= self.gan_beta1 < 1:
            raise ValueError(f"method.gan_beta1 must be in [0, 1), got {self.gan_beta1}")
        for key, value in vars(self.weights).items():
            if value < 0:
                raise ValueError(f"method.weights.{key} must be >= 0, got {value}")
        if cfg.data.crop % 4:
            raise ValueError(f"data.crop={cfg.data.crop} must be divisible by 4 (the generator's two stride-2 stages)")


def sifa_task_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """SIFA's segmentation loss: class-weighted cross-entropy + Dice loss, over the batch, in float32.

    CE: pixel mean of -sum_c w_c g_c log p_c with w_c = 1 - (pixels of class c) / (all pixels) in the batch.
    Dice: 1 - mean over all K classes (background included) of 2 sum(p g) / (sum p^2 + sum g + 1e-7).
    Unlike the authors' code the log-probability is not clipped at log(0.005) (no dead gradients).
    """
    logits = logits.float()
    g = one_hot(labels, logits.shape[1], logits.dtype)
    counts = g.sum(dim=(0, 2, 3))
    weight = 1.0 - counts / counts.sum()
    ce = -(weight[None, :, None, None] * g * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    p = torch.softmax(logits, dim=1)
    dims = (0, 2, 3)
    dice = 2 * (p * g).sum(dims) / (p.square().sum(dims) + counts + 1e-7)
    return ce + (1 - dice.mean())


def _to_unit(x: Tensor) -> Tensor:
    """[-1, 1] (GAN image space) -> [0, 1] (the segmenter's input range)."""
    return (x + 1) * 0.5


def _quarter_logits(out_logits: Tensor, size: torch.Size) -> Tensor:
    """The 1/4-scale head's logits bilinearly up-sampled to full resolution (SIFA resizes its heads' logits)."""
    return F.interpolate(out_logits, size=size, mode="bilinear", align_corners=False)


@register_method
class SIFAMethod(UDAMethod):
    """SIFA on the udavae segmenter: G_t, U and four critics around ``self.net`` (E + C)."""

    kind = "sifa"
    supports_distributed = False  # two backward passes over different parameter sets per step
    Options = SIFAOptions
    # weights.seg is set because a kind switch keeps the old kind's value (1000).
    presets: ClassVar[dict[str, Preset]] = {
        "sifa": Preset(
            {"model.wiring": "skip", "model.mean_head": "gate", "method.weights.seg": 1.0},
            "SIFA (Chen et al. AAAI 2019 / TMI 2020): image translation + feature alignment (4 LSGAN "
            "critics), skip wiring, gate head",
        ),
    }
    needs_target = True

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        me = self.options
        gw, dw = me.widths(cfg)
        self.generator = ImageGenerator(gw, me.gen_blocks, me.skip)
        self.decoder = LatentDecoder(self.net.channels[2], gw, me.dec_blocks, upsamplings=2, skip=me.skip)
        self.critics = nn.ModuleDict(
            {
                "target_image": PatchDiscriminator(1, dw),
                "source_image": PatchDiscriminator(1, dw, out_channels=2),  # channel 1: the auxiliary head
                "pred_fusion": PatchDiscriminator(num_classes, dw),
                "pred_quarter": PatchDiscriminator(num_classes, dw),
            }
        )
        self.pools = nn.ModuleDict({"target": ImagePool(me.pool_size), "source": ImagePool(me.pool_size)})
        self._critic_inputs: dict[str, Tensor] | None = None

    @property
    def options(self) -> SIFAOptions:
        """This method's options (``cfg.method``)."""
        return self.cfg.method  # type: ignore[return-value]

    # ------------------------------------------------------------------ forward and objectives
    def forward(self, source: Batch, target: Batch | None = None, *, keep: bool = False) -> dict[str, Tensor]:
        """Weighted generator-side terms and their sum ``"total"``; ``keep`` stores the critics' inputs.

        Names: ``seg_fusion``, ``seg_quarter`` (on x^{s->t}), ``seg_source`` (if its weight > 0), ``cyc_source``,
        ``cyc_target``, ``adv_target_image``, ``adv_source_image``, ``adv_source_aux``, ``adv_pred_fusion``,
        ``adv_pred_quarter``. ``total`` sums them; no single optimiser minimises it (see :meth:`objectives`).
        """
        if target is None:
            raise ValueError("method kind 'sifa' adapts to the target domain: it needs a target batch")
        xs, xt = batch_images(source, "source")[0], batch_images(target, "target")[0]
        y = batch_labels(source, "source")[0]
        w, size = self.options.weights, xs.shape[-2:]
        xs_pm, xt_pm = 2 * xs - 1, 2 * xt - 1
        fake_t = self.generator(xs_pm)  # x^{s->t}
        out_ft = self.net(_to_unit(fake_t), sample=False)  # E, C on the target-like source
        out_t = self.net(xt, sample=False)  # E, C on the real target
        fake_s = self.decoder(out_t.z[2], xt_pm)  # x^{t->s}
        rec_s = self.decoder(out_ft.z[2], fake_t)  # x^{s->t->s}
        rec_t = self.generator(fake_s)  # x^{t->s->t}
        q_ft, q_t = _quarter_logits(out_ft.seg_logits[2], size), _quarter_logits(out_t.seg_logits[2], size)
        d_src = self.critics["source_image"](fake_s)
        terms = {
            "seg_fusion": w.seg * sifa_task_loss(out_ft.logits, y),
            "seg_quarter": w.seg_aux * sifa_task_loss(q_ft, y),
            "cyc_source": w.cycle * (rec_s.float() - xs_pm).abs().mean(),
            "cyc_target": w.cycle * (rec_t.float() - xt_pm).abs().mean(),
            "adv_target_image": w.adv_target * lsgan_generator_loss(self.critics["target_image"](fake_t)),
            "adv_source_image": w.adv_source * lsgan_generator_loss(d_src[:, :1]),
            "adv_source_aux": w.adv_aux * lsgan_generator_loss(d_src[:, 1:]),
            "adv_pred_fusion": w.adv_pred * lsgan_generator_loss(self.critics["pred_fusion"](out_t.logits)),
            "adv_pred_quarter": w.adv_pred_aux * lsgan_generator_loss(self.critics["pred_quarter"](q_t)),
        }
        if w.seg_source > 0:
            terms["seg_source"] = w.seg_source * sifa_task_loss(self.net(xs, sample=False).logits, y)
        if keep:
            self._critic_inputs = {
                k: v.detach()
                for k, v in {
                    "real_source": xs_pm,
                    "real_target": xt_pm,
                    "fake_target": fake_t,
                    "fake_source": fake_s,
                    "cycle_source": rec_s,
                    "pred_fusion_real": out_ft.logits,
                    "pred_fusion_fake": out_t.logits,
                    "pred_quarter_real": q_ft,
                    "pred_quarter_fake": q_t,
                }.items()
            }
        return self.with_total(terms)

    def objectives(self, terms: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(objective of G_t and U, objective of E and C) from :meth:`forward`'s weighted terms.

        G_t's and U's objectives share one scalar: adv_target_image does not depend on U and adv_source_image
        not on G_t, so restricting its backward pass to their parameters gives each exactly its own gradient.
        """
        w = self.options.weights
        gen = terms["cyc_source"] + terms["cyc_target"] + terms["adv_target_image"] + terms["adv_source_image"]
        seg = w.encoder * torch.stack([terms[k] for k in _SHARED_WITH_U]).sum()
        for k in ("seg_fusion", "seg_quarter", "seg_source", "adv_source_aux", "adv_pred_fusion", "adv_pred_quarter"):
            if k in terms:
                seg = seg + terms[k]
        return gen, seg

    def critic_terms(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """LSGAN losses of the four critics on detached inputs, the fakes of the image critics from the pools."""
        d = self.critics
        fake_t = self.pools["target"].query(inputs["fake_target"])
        fake_s = self.pools["source"].query(inputs["fake_source"])
        real_t, pool_t = d["target_image"](torch.cat((inputs["real_target"], fake_t))).chunk(2)
        real_s, pool_s, cyc_s = d["source_image"](
            torch.cat((inputs["real_source"], fake_s, inputs["cycle_source"]))
        ).chunk(3)
        out = {
            "disc_target_image": lsgan_discriminator_loss(real_t, pool_t),
            "disc_source_image": lsgan_discriminator_loss(real_s[:, :1], pool_s[:, :1]),
            "disc_source_aux": lsgan_discriminator_loss(cyc_s[:, 1:], pool_s[:, 1:]),
        }
        for head in ("fusion", "quarter"):
            pair = torch.cat((inputs[f"pred_{head}_real"], inputs[f"pred_{head}_fake"]))
            real, fake = d[f"pred_{head}"](pair).chunk(2)
            out[f"disc_pred_{head}"] = lsgan_discriminator_loss(real, fake)
        return out

    # ------------------------------------------------------------------ optimisation
    def segmenter_parameters(self) -> list[nn.Parameter]:
        """E + C: the segmentation network (its log-variance heads stay unused: z = mu)."""
        return list(self.net.parameters())

    def generator_parameters(self) -> list[nn.Parameter]:
        """G_t and U."""
        return [*self.generator.parameters(), *self.decoder.parameters()]

    def configure_optimizers(self, optim_cfg: OptimConfig, fused: bool = False) -> dict[str, torch.optim.Optimizer]:
        """``seg``: Adam over the segmenter at ``optim.lr`` / ``optim.weight_decay`` (the protocol of every method);
        ``gen`` (G_t, U) and ``disc`` (critics): Adam at ``gan_lr``, betas (``gan_beta1``, 0.999), no decay."""
        me = self.options
        betas = (me.gan_beta1, 0.999)
        return {
            "seg": adam(self.segmenter_parameters(), optim_cfg.lr, optim_cfg.weight_decay, fused),
            "gen": adam(self.generator_parameters(), me.gan_lr, 0.0, fused, betas=betas),
            "disc": adam(self.critic_parameters(), me.gan_lr, 0.0, fused, betas=betas),
        }

    def training_step(
        self,
        forward: Forward,
        source: Batch,
        target: Batch | None,
        optimizers: Mapping[str, torch.optim.Optimizer],
        autocast_ctx: AutocastFactory,
        *,
        step: int = 0,
    ) -> dict[str, Tensor]:
        """Generator side (G_t + U, then E + C, one forward, two backward passes), then the critics.

        The generator-side backward passes are restricted to their parameters, so the critics receive no
        gradient there; the critics' pass sees detached inputs only, so nothing else receives one there. Returns
        the generator-side terms with ``total`` and the critics' ``disc_*`` losses (detached).

        Raises:
            NotImplementedError: under DistributedDataParallel (two backward passes per forward).
        """
        self.refuse_distributed(forward)
        with autocast_ctx():
            terms = forward(source, target, keep=True)
        inputs, self._critic_inputs = self._critic_inputs, None
        if inputs is None:
            raise RuntimeError("the forward pass did not keep the critics' inputs")
        gen, seg = self.objectives(terms)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        torch.autograd.backward(gen, inputs=self.generator_parameters(), retain_graph=True)
        torch.autograd.backward(seg, inputs=self.segmenter_parameters())
        optimizers["gen"].step()
        optimizers["seg"].step()
        with autocast_ctx():
            critic = self.critic_terms(inputs)
        torch.stack(list(critic.values())).sum().backward()
        optimizers["disc"].step()
        terms.update({k: v.detach() for k, v in critic.items()})
        return terms

    # ------------------------------------------------------------------ figures
    @torch.no_grad()
    def reconstruct(self, batch: Batch, domain: str) -> Tensor | None:
        """Cycle reconstruction in (0, 1): x^{s->t->s} for ``source``, x^{t->s->t} for ``target``."""
        if domain not in ("source", "target"):
            raise ValueError(f"domain must be 'source' or 'target', got {domain!r}")
        image = batch_images(batch, domain)[0]
        x = 2 * image - 1
        if domain == "source":
            fake = self.generator(x)
            rec = self.decoder(self.net(_to_unit(fake), sample=False).z[2], fake)
        else:
            rec = self.generator(self.decoder(self.net(image, sample=False).z[2], x))
        return _to_unit(rec.float())

"""PnP-AdaNet: a source segmenter whose early layers are re-trained adversarially for the target domain.

Papers: Q. Dou, C. Ouyang, C. Chen, H. Chen, P.-A. Heng, "Unsupervised Cross-Modality Domain Adaptation of
ConvNets for Biomedical Image Segmentations with Adversarial Loss", IJCAI 2018, pp. 691-697 (arXiv:1804.10916);
extended as Q. Dou, C. Ouyang, C. Chen, H. Chen, B. Glocker, X. Zhuang, P.-A. Heng, "PnP-AdaNet: Plug-and-Play
Adversarial Domain Adaptation Network at Unpaired Cross-Modality Cardiac Segmentation", IEEE Access 7, 2019
(arXiv:1812.07907). Authors' code (TensorFlow 1.4): github.com/carrenD/Medical-Cross-Modality-Domain-Adaptation
(``source_segmenter.py``, ``adversarial.py``, ``train_gan.py``).

The method is two-stage; in our single trainer run it is one training with a step schedule:

1. **Phase 1** (the first ``method.pretrain_epochs`` epochs): the segmenter trains on labelled source data only,
   exactly as NoAdapt does (same network, loss, optimiser and rate).
2. **Switch**: a frozen copy of the network, ``source_net``, is kept (a registered module without gradients, so
   checkpoints hold it and a resumed run continues exactly).
3. **Phase 2**: only the early encoder levels of ``net`` (the *domain adaptation module*, DAM; how many is
   ``method.adapt_levels``) train, on target images, against two critics: one sees multi-level features of the
   frozen higher layers (and of the DAM output) brought to one grid, the other the predicted masks. The
   critics learn to tell target features (DAM + frozen higher layers of ``net``) from source features (the
   frozen ``source_net`` on source images); the DAM learns to fool them. The higher layers never change again.
   Critic and DAM updates alternate, each with its own RMSprop optimiser and rate; Wasserstein (WGAN, weight
   clipping, as the authors) or standard GAN losses.

At test time ``net`` (adapted early layers + source higher layers) segments target images. The trainer still
selects the best epoch on the target validation split every epoch, so the best checkpoint may come from either
phase (from phase 1 it is a NoAdapt model). Everything we chose or changed is listed in
docs/methods/pnp-adanet.md.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
)
from udavae.methods.registry import Preset, register_method
from udavae.models.feature_critic import ConvCritic, grid_channels, to_grid
from udavae.models.unet_vae import UNetVAE, VAEOutput

__all__ = ["FEATURES", "GAN_LOSSES", "PnPAdaNet", "PnPAdaNetOptions", "PnPAdaNetWeights"]

#: Feature taps the multi-level critic may see (``method.features``): the DAM's output (last adapted encoder
#: level), the bottleneck (deepest encoder level), the first decoder stage, the 1/4-scale posterior mean and the
#: fusion head's softmax.
FEATURES = ("dam", "bottleneck", "decoder", "latent", "output")
#: Adversarial losses (``method.gan``): Wasserstein with weight clipping (the authors' code) or the standard GAN.
GAN_LOSSES = ("wgan", "gan")
#: Scale level (1/2**level) of the grid every tap is brought to before it is stacked: 1/4.
GRID_LEVEL = 2
#: Loss-term keys of the segmentation phase (``UDAMethod.segmentation_terms``).
SEG_TERMS = ("seg_full", "seg_fusion", "seg_half", "seg_quarter")


@dataclass
class PnPAdaNetWeights(SegWeights):
    """Loss weights of PnP-AdaNet (``seg`` is phase 1's source segmentation weight).

    Attributes:
        adv: weight of the feature critic's terms, the DAM's adversarial loss and the critic's own loss (the
            authors' code: miu_gen = miu_dis = 0.002).
        mask: weight of the mask critic's terms (the authors' code: lambda_mask_loss 0.3 times 0.002).
    """

    adv: float = 2e-3
    mask: float = 6e-4


@dataclass
class PnPAdaNetOptions(MethodOptions):
    """Options of ``method.kind=pnp_adanet`` (PnP-AdaNet, Dou et al. IJCAI 2018 / IEEE Access 2019).

    Attributes:
        pretrain_epochs: epochs of phase 1 (source-only segmenter) before the adaptation phase; -1 = half of
            optim.epochs (rounded down); must leave at least one adaptation epoch.
        adapt_levels: encoder levels 0..N-1 that form the domain adaptation module (DAM) trained in phase 2;
            1 to model.depth-1 (4 = full to 1/8 scale, the whole down-sampling path but the bottleneck).
        features: comma-separated taps the multi-level feature critic sees, of dam, bottleneck, decoder,
            latent, output (docs/methods/pnp-adanet.md).
        mask_critic: add the second critic, on the predicted masks (softmax of the fusion head).
        gan: adversarial loss, wgan (Wasserstein with weight clipping, the authors' code) or gan (standard GAN).
        clip: WGAN weight clipping bound of every critic parameter (0.03, the authors' code).
        critic_iters: critic updates per training step, on that step's batches (the WGAN n_critic).
        critic_warmup: epochs at the start of phase 2 in which only the critics train (the authors' warm-up).
        adapt_lr: RMSprop learning rate of the DAM at the start of phase 2 (3e-4, the authors' code).
        critic_lr: RMSprop learning rate of the critics at the start of phase 2 (3e-4, the authors' code).
        weights: loss weights.
    """

    kind: str = "pnp_adanet"
    pretrain_epochs: int = -1
    adapt_levels: int = 4
    features: str = ",".join(FEATURES)
    mask_critic: bool = True
    gan: str = "wgan"
    clip: float = 0.03
    critic_iters: int = 5
    critic_warmup: float = 0.5
    adapt_lr: float = 3e-4
    critic_lr: float = 3e-4
    weights: PnPAdaNetWeights = field(default_factory=PnPAdaNetWeights)

    @property
    def feature_taps(self) -> tuple[str, ...]:
        """``features`` as a tuple of tap names (empty items dropped)."""
        return tuple(s.strip() for s in self.features.split(",") if s.strip())

    def resolved_pretrain_epochs(self, epochs: int) -> int:
        """Phase-1 epochs for a run of ``epochs`` epochs (``pretrain_epochs``, or half the run when -1)."""
        return epochs // 2 if self.pretrain_epochs == -1 else self.pretrain_epochs

    part_labels: ClassVar[tuple[str, str]] = ("other trained modules", "feature / mask critics")

    def describe(self) -> str:
        """The DAM, the critics and the loss for ``udavae model info``'s header."""
        critics = "+".join(self.feature_taps) + (" & mask" if self.mask_critic else "")
        return (
            f"DAM=encoder levels 0-{self.adapt_levels - 1} critics={critics} loss={self.gan} "
            f"n_critic={self.critic_iters}"
        )

    def validate(self, cfg: Config) -> None:
        """Taps, loss and rates are known / positive; the DAM leaves higher layers; both phases have epochs."""
        taps = self.feature_taps
        unknown = [t for t in taps if t not in FEATURES]
        if not taps or unknown or len(set(taps)) != len(taps):
            raise ValueError(f"method.features={self.features!r} must list distinct taps of {', '.join(FEATURES)}")
        if not 1 <= self.adapt_levels <= cfg.model.depth - 1:
            raise ValueError(
                f"method.adapt_levels={self.adapt_levels} must be between 1 and model.depth-1="
                f"{cfg.model.depth - 1} (the higher layers must keep at least the bottleneck)"
            )
        if self.gan not in GAN_LOSSES:
            raise ValueError(f"method.gan={self.gan!r} is not one of {', '.join(GAN_LOSSES)}")
        if self.gan == "wgan" and self.clip <= 0:
            raise ValueError(f"method.clip must be > 0 for the WGAN critics, got {self.clip}")
        if self.critic_iters < 1:
            raise ValueError(f"method.critic_iters must be >= 1, got {self.critic_iters}")
        if self.critic_warmup < 0:
            raise ValueError(f"method.critic_warmup must be >= 0, got {self.critic_warmup}")
        if self.adapt_lr <= 0 or self.critic_lr <= 0:
            raise ValueError("method.adapt_lr and method.critic_lr must be > 0")
        if self.pretrain_epochs < -1:
            raise ValueError(f"method.pretrain_epochs must be >= 1, or -1 for half the run, got {self.pretrain_epochs}")
        pre, epochs = self.resolved_pretrain_epochs(cfg.optim.epochs), cfg.optim.epochs
        if not 1 <= pre < epochs:
            raise ValueError(
                f"method.pretrain_epochs={self.pretrain_epochs} gives {pre} source-only epochs of "
                f"optim.epochs={epochs}: PnP-AdaNet needs at least one epoch in each phase"
            )


@register_method
class PnPAdaNet(UDAMethod):
    """PnP-AdaNet on the shared U-Net: source pretraining, then adversarial re-training of the early layers.

    Modules: ``net`` (the segmenter; its first ``adapt_levels`` encoder levels are the DAM), ``source_net`` (the
    frozen copy taken at the switch; no gradients), ``critics`` (``feature`` and optionally ``mask``) and the
    buffer ``source_frozen`` (whether the copy has been taken). Optimisers: ``segmenter`` (Adam, phase 1),
    ``adapt`` (RMSprop over the DAM) and ``disc`` (RMSprop over the critics); the last two start phase 2 at
    ``adapt_lr`` / ``critic_lr`` and then decay per epoch like every rate.

    Not supported under DDP (``torchrun``): the parameters used change from phase to phase and from update to
    update, which DDP's gradient reducer does not allow; a clear error is raised.
    """

    kind = "pnp_adanet"
    supports_distributed = False  # the trained parameters differ per phase and per update
    Options = PnPAdaNetOptions
    presets: ClassVar[dict[str, Preset]] = {
        "pnp-adanet": Preset(
            {"model.wiring": "skip", "model.mean_head": "gate"},
            "PnP-AdaNet: the noadapt segmenter, then its early encoder levels re-trained on target "
            "images against WGAN critics of multi-level features and masks",
        ),
    }
    needs_target = True

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        me = self.options
        self.source_net = UNetVAE(cfg.model, num_classes)
        self.source_net.requires_grad_(False)
        self.register_buffer("source_frozen", torch.zeros((), dtype=torch.bool))
        self._source_ready = False  # Python mirror of the buffer: no host sync per step
        self.register_load_state_dict_post_hook(lambda module, incompatible: module._sync_source_flag())

        net = self.net
        w, d, a = cfg.model.base_width, net.depth, me.adapt_levels
        #: tap -> scale level (1/2**level) and channels of the map.
        self.tap_levels = {
            "dam": (a - 1, net.channels[a - 1]),
            "bottleneck": (d - 1, net.channels[d - 1]),
            "decoder": (d - 2, net.channels[d - 2]),
            "latent": (2, net.channels[2]),
            "output": (0, num_classes),
        }
        in_ch = sum(grid_channels(self.tap_levels[t][1], self.tap_levels[t][0], GRID_LEVEL) for t in me.feature_taps)
        critics = {"feature": ConvCritic(in_ch, (4 * w, 8 * w, 8 * w), stem=4 * w)}
        if me.mask_critic:
            critics["mask"] = ConvCritic(num_classes, (w, 2 * w, 4 * w, 4 * w))
        self.critics = nn.ModuleDict(critics)
        self.clip_critics()

        # Forward hooks give the intermediate maps of either network without re-implementing its forward.
        self._taps: dict[str, Tensor] | None = None
        for module in (self.net, self.source_net):
            points = {
                "dam": module.encoder[a - 1],
                "bottleneck": module.encoder[d - 1],
                "decoder": module.decoder[d - 2],
            }
            for name, sub in points.items():
                if name in me.feature_taps:
                    sub.register_forward_hook(functools.partial(self._store_tap, name))

    # ------------------------------------------------------------------ schedule and state
    @property
    def options(self) -> PnPAdaNetOptions:
        """This method's options (``cfg.method``)."""
        return self.cfg.method  # type: ignore[return-value]

    @property
    def switch_step(self) -> int:
        """First global step of phase 2 (pretrain epochs x iterations per epoch)."""
        return self.options.resolved_pretrain_epochs(self.cfg.optim.epochs) * self.cfg.optim.iters_per_epoch

    @property
    def warmup_steps(self) -> int:
        """Steps at the start of phase 2 in which only the critics train."""
        return round(self.options.critic_warmup * self.cfg.optim.iters_per_epoch)

    def step_phases(self) -> dict[str, int]:
        """Phase 1 (source segmenter), the critic warm-up (if any) and phase 2 (adaptation), by first step."""
        phases = {"phase 1, source segmenter": 0}
        if self.warmup_steps:
            phases["phase 2 warm-up, critics only"] = self.switch_step
        phases["phase 2, adaptation"] = self.switch_step + self.warmup_steps
        return phases

    @property
    def source_ready(self) -> bool:
        """Whether the frozen source copy has been taken (phase 2 has begun)."""
        return self._source_ready

    def _sync_source_flag(self) -> None:
        if self.source_frozen.device.type != "meta":
            self._source_ready = bool(self.source_frozen)

    @torch.no_grad()
    def freeze_source(self) -> None:
        """Take the frozen copy: ``source_net`` <- ``net`` (the source segmenter at the end of phase 1)."""
        self.source_net.load_state_dict(self.net.state_dict())
        self.source_frozen.fill_(True)
        self._source_ready = True

    def adaptation_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the DAM: the first ``adapt_levels`` encoder levels of ``net``."""
        for level in self.net.encoder[: self.options.adapt_levels]:
            yield from level.parameters()

    @torch.no_grad()
    def clip_critics(self) -> None:
        """WGAN weight clipping: every critic parameter into [-clip, clip] (no-op for the standard GAN)."""
        me = self.options
        if me.gan == "wgan":
            for p in self.critics.parameters():
                p.clamp_(-me.clip, me.clip)

    # ------------------------------------------------------------------ passes and terms
    def _store_tap(self, name: str, module: nn.Module, args: Any, output: Tensor) -> None:
        if self._taps is not None:
            self._taps[name] = output

    def run_with_taps(self, net: UNetVAE, x: Tensor) -> tuple[VAEOutput, dict[str, Tensor]]:
        """``net(x)`` and the encoder / decoder maps the feature critic taps (by name)."""
        self._taps = {}
        try:
            out = net(x)
            taps = self._taps
        finally:
            self._taps = None
        return out, taps

    def critic_inputs(self, out: VAEOutput, taps: Mapping[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The feature critic's input (every tap moved to the 1/4 grid, stacked) and the mask critic's (softmax)."""
        prob = torch.softmax(out.logits.float(), dim=1)
        maps = {**taps, "latent": out.mu[2], "output": prob}
        stack = torch.cat(
            [to_grid(maps[t].float(), self.tap_levels[t][0], GRID_LEVEL) for t in self.options.feature_taps], dim=1
        )
        return stack, (prob if self.options.mask_critic else None)

    def _generator_loss(self, score: Tensor) -> Tensor:
        score = score.float()
        if self.options.gan == "wgan":
            return -score.mean()
        return F.binary_cross_entropy_with_logits(score, torch.ones_like(score))

    def _critic_loss(self, source: Tensor, target: Tensor) -> Tensor:
        source, target = source.float(), target.float()
        if self.options.gan == "wgan":
            return target.mean() - source.mean()
        return F.binary_cross_entropy_with_logits(source, torch.ones_like(source)) + F.binary_cross_entropy_with_logits(
            target, torch.zeros_like(target)
        )

    def generator_terms(self, feature_tgt: Tensor, mask_tgt: Tensor | None) -> dict[str, Tensor]:
        """The DAM's weighted adversarial terms: target critic inputs should score as source."""
        w = self.options.weights
        terms = {"adv_feature": w.adv * self._generator_loss(self.critics["feature"](feature_tgt))}
        if mask_tgt is not None:
            terms["adv_mask"] = w.mask * self._generator_loss(self.critics["mask"](mask_tgt))
        return terms

    def critic_terms(
        self, feature_src: Tensor, feature_tgt: Tensor, mask_src: Tensor | None = None, mask_tgt: Tensor | None = None
    ) -> dict[str, Tensor]:
        """The critics' weighted losses (WGAN: target score minus source score; GAN: BCE, source = 1)."""
        w = self.options.weights
        feat = self.critics["feature"]
        terms = {"critic_feature": w.adv * self._critic_loss(feat(feature_src), feat(feature_tgt))}
        if mask_src is not None and mask_tgt is not None:
            mask = self.critics["mask"]
            terms["critic_mask"] = w.mask * self._critic_loss(mask(mask_src), mask(mask_tgt))
        return terms

    def forward(self, source: Batch, target: Batch | None = None, *, stage: str = "segment") -> dict[str, Tensor]:
        """Weighted loss terms of one stage and their ``total``.

        Args:
            source / target: batches (``target`` is needed by the ``adapt`` stage only).
            stage: ``segment`` (phase 1: the four source segmentation terms, NoAdapt's objective) or ``adapt``
                (phase 2: ``source_net`` on the source images without gradients, ``net`` on the target images,
                the DAM's adversarial terms ``adv_*``). The ``adapt`` stage also returns the detached critic
                inputs under keys starting with ``_`` (``_feature_src``, ``_feature_tgt``, ``_mask_src``,
                ``_mask_tgt``), which :meth:`training_step` removes before logging.
        """
        if stage == "segment":
            images = batch_images(source, "source")
            return self.with_total(self.segmentation_terms(self.net(images[0]), batch_labels(source, "source")))
        if stage != "adapt":
            raise ValueError(f"stage must be 'segment' or 'adapt', got {stage!r}")
        if target is None:
            raise ValueError(
                "method kind 'pnp_adanet' adapts to the target domain: its adapt stage needs a target batch"
            )
        src_img, tgt_img = batch_images(source, "source"), batch_images(target, "target")
        with torch.no_grad():
            feat_s, mask_s = self.critic_inputs(*self.run_with_taps(self.source_net, src_img[0]))
        feat_t, mask_t = self.critic_inputs(*self.run_with_taps(self.net, tgt_img[0]))
        terms = self.with_total(self.generator_terms(feat_t, mask_t))
        terms.update(_feature_src=feat_s, _feature_tgt=feat_t.detach())
        if mask_s is not None and mask_t is not None:
            terms.update(_mask_src=mask_s, _mask_tgt=mask_t.detach())
        return terms

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self, optim_cfg: OptimConfig, fused: bool = False) -> dict[str, torch.optim.Optimizer]:
        """``segmenter``: Adam over ``net`` at ``optim.lr`` (phase 1, as NoAdapt); ``adapt`` and ``disc``:
        RMSprop (decay 0.9, no weight decay) over the DAM and the critics.

        The trainer sets every rate to base_lr * lr_decay**epoch; the phase-2 optimisers record
        base_lr = rate / lr_decay**pretrain_epochs, so their schedule starts at ``adapt_lr`` / ``critic_lr`` in
        the first epoch of phase 2 and decays from there.
        """
        me = self.options
        decay = optim_cfg.lr_decay
        restart = decay ** me.resolved_pretrain_epochs(self.cfg.optim.epochs) if decay > 0 else 1.0
        return {
            "segmenter": adam(self.net.parameters(), optim_cfg.lr, optim_cfg.weight_decay, fused),
            "adapt": _rmsprop(self.adaptation_parameters(), me.adapt_lr, restart),
            "disc": _rmsprop(self.critic_parameters(), me.critic_lr, restart),
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
        """Phase 1: one segmenter step. Phase 2: one DAM step, then ``critic_iters`` critic steps.

        Phase 2 computes both domains' critic inputs once (``forward(..., stage="adapt")``): the DAM steps on
        the gradient of its adversarial terms only (``torch.autograd.grad`` restricted to the DAM, so neither the
        frozen higher layers nor the critics receive gradients), then the critics step on the detached inputs,
        each step followed by the weight clipping. During the warm-up only the critics step. Every step returns
        the same keys: the segmentation, adversarial and critic terms (zeros in the phase that has none) and
        ``total``, their sum. Phase 2 starts at :attr:`switch_step` and, once the copy is taken, never ends:
        a run extended with ``--resume`` and more epochs (which moves the automatic switch) keeps adapting.
        """
        self.refuse_distributed(forward)
        if step < self.switch_step and not self._source_ready:  # once taken, the copy is never retaken
            with autocast_ctx():
                terms = forward(source, target, stage="segment")
            opt = optimizers["segmenter"]
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            opt.step()
            return self._log_terms(terms, total=terms["total"])
        if not self._source_ready:
            self.freeze_source()
        if step < self.switch_step + self.warmup_steps:
            with torch.no_grad(), autocast_ctx():
                out = forward(source, target, stage="adapt")
        else:
            with autocast_ctx():
                out = forward(source, target, stage="adapt")
            self.adaptation_update(out["total"], optimizers["adapt"])
        inputs = {k[1:]: out.pop(k) for k in [k for k in out if k.startswith("_")]}
        out.pop("total")
        critic = self.critic_update(inputs, optimizers["disc"], autocast_ctx)
        return self._log_terms({k: v.detach() for k, v in out.items()} | critic)

    def adaptation_update(self, adversarial: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """One DAM step on the gradient of ``adversarial`` with respect to the DAM's parameters only."""
        params = list(self.adaptation_parameters())
        grads = torch.autograd.grad(adversarial, params, allow_unused=True)
        optimizer.zero_grad(set_to_none=True)
        for p, g in zip(params, grads):
            p.grad = g
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def critic_update(
        self, inputs: Mapping[str, Tensor], optimizer: torch.optim.Optimizer, autocast_ctx: AutocastFactory
    ) -> dict[str, Tensor]:
        """``critic_iters`` critic steps on detached critic inputs (each clipped); the last step's terms."""
        terms: dict[str, Tensor] = {}
        for _ in range(self.options.critic_iters):
            with autocast_ctx():
                terms = self.critic_terms(**inputs)
            optimizer.zero_grad(set_to_none=True)
            torch.stack([t.float() for t in terms.values()]).sum().backward()
            optimizer.step()
            self.clip_critics()
        optimizer.zero_grad(set_to_none=True)
        return {k: v.detach() for k, v in terms.items()}

    def _log_terms(self, terms: dict[str, Tensor], total: Tensor | None = None) -> dict[str, Tensor]:
        """Every logged key in a fixed set (zeros for the other phase's terms) plus ``total``."""
        keys = list(SEG_TERMS) + ["adv_feature", "critic_feature"]
        if self.options.mask_critic:
            keys += ["adv_mask", "critic_mask"]
        zero = torch.zeros((), device=self.source_frozen.device)
        out = {k: terms[k].detach() if k in terms else zero for k in keys}
        if total is None:
            return self.with_total(out)
        out["total"] = total.detach()
        return out


def _rmsprop(params: Iterator[nn.Parameter], lr: float, restart: float) -> torch.optim.RMSprop:
    """RMSprop with TensorFlow's decay 0.9 and epsilon 1e-10 at ``lr``, recording base_lr = lr / restart."""
    opt = torch.optim.RMSprop(list(params), lr=lr, alpha=0.9, eps=1e-10)
    for group in opt.param_groups:
        group["base_lr"] = lr / restart
    return opt

"""Common interface of every UDA method: one ``nn.Module`` that owns its options, optimisers and training step.

Batch format (produced by the data layer): a dict with ``"image"``, a list of three float tensors
B x 1 x H x W, B x 1 x H/2 x W/2, B x 1 x H/4 x W/4 in [0, 1] (full, 1/2, 1/4) and, for the source,
``"label"``, a list of three long tensors B x H x W, B x H/2 x W/2, B x H/4 x W/4 of class indices.

A method sub-class defines

* ``kind`` and ``Options``: its name in ``method.kind`` and its options dataclass (a :class:`MethodOptions`
  sub-class in the method's own module, whose fields are the ``method.*`` config keys of that kind);
* :meth:`UDAMethod.forward`: every *weighted* loss term by name plus their sum ``"total"``; it never calls
  ``.item()`` or branches on tensor values, so a training step has no host synchronisation;
* optionally :meth:`UDAMethod.configure_optimizers` and :meth:`UDAMethod.training_step`. The defaults are
  the step of the published UDA-VAE / UDA-VAE++ code: two parameter sets, the main one (segmentation
  network + decoders) and the critics (SMIE), each trained by its own Adam, both minimising the same total
  after one backward pass. Adversarial methods override both (alternating generator / discriminator updates
  with their own optimisers and learning rates).

The trainer, the benchmarks and the FLOP counter call only these hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from udavae.config import Config, MethodConfig, OptimConfig
from udavae.losses import balanced_cross_entropy
from udavae.methods.registry import Preset
from udavae.models.unet_vae import LATENT_SCALES, UNetVAE, VAEOutput

__all__ = [
    "AutocastFactory",
    "Batch",
    "Forward",
    "MethodOptions",
    "SegWeights",
    "UDAMethod",
    "adam",
    "batch_images",
    "batch_labels",
    "one_hot",
]

Batch = Mapping[str, Sequence[Tensor]]
#: The module call the trainer wraps (the method itself, DDP-wrapped or ``torch.compile``-d): it takes the
#: arguments of the method's ``forward`` and returns its loss dict.
Forward = Callable[..., dict[str, Tensor]]
#: Zero-argument callable returning a fresh autocast context (``with autocast_ctx(): ...``) for the run's
#: precision; enter one around every forward pass of a step.
AutocastFactory = Callable[[], AbstractContextManager]


@dataclass
class SegWeights:
    """Loss weight of the source segmentation terms (every method has them).

    Attributes:
        seg: weight of each balanced cross-entropy term (full, fusion, 1/2 and 1/4 heads, source labels only);
            the paper's c2 after dividing every weight by it (docs/implementation-notes.md, "Loss terms and
            default weights").
    """

    seg: float = 1000.0


@dataclass
class MethodOptions(MethodConfig):
    """Base of every method's options dataclass (``name`` and ``kind`` come from :class:`MethodConfig`).

    A sub-class lists the options of one method kind as fields with defaults, ends with a ``weights`` field
    (a :class:`SegWeights` sub-class: :meth:`UDAMethod.segmentation_terms` reads ``weights.seg``), documents
    every field in an ``Attributes:`` section (``udavae config show`` prints the first sentence) and puts its
    cross-field checks in :meth:`validate`.
    """

    #: ``udavae model info``'s names of the parameters outside the network and of the critics.
    part_labels: ClassVar[tuple[str, str]] = ("reconstruction decoders", "SMIE critics")

    def describe(self) -> str:
        """The method's parts for ``udavae model info``'s header line (methods without SMIE critics: off)."""
        return "SMIE=off"


def one_hot(label: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """B x H x W class indices -> B x K x H x W one-hot map (``scatter``: no value check, no host sync)."""
    b, h, w = label.shape
    out = torch.zeros(b, num_classes, h, w, dtype=dtype, device=label.device)
    return out.scatter_(1, label.unsqueeze(1), 1.0)


def batch_images(batch: Batch | None, what: str) -> Sequence[Tensor]:
    """The three images of a batch; ``ValueError`` naming ``what`` if missing or malformed."""
    if batch is None or "image" not in batch:
        raise ValueError(f"{what} batch with an 'image' entry is required")
    images = batch["image"]
    if len(images) != len(LATENT_SCALES):
        raise ValueError(f"{what} 'image' must list {len(LATENT_SCALES)} scales (full, 1/2, 1/4), got {len(images)}")
    return images


def batch_labels(batch: Batch, what: str) -> Sequence[Tensor]:
    """The three label maps of a labelled batch."""
    if "label" not in batch or len(batch["label"]) != len(LATENT_SCALES):
        raise ValueError(f"{what} batch needs 'label': three label maps (full, 1/2, 1/4)")
    return batch["label"]


class UDAMethod(nn.Module):
    """Base class: holds the segmentation network ``net`` and method-specific modules.

    Sub-classes set ``kind`` and ``Options`` and implement :meth:`forward`. Critic modules (if any) live under
    ``self.critics`` so the parameter split of :meth:`main_parameters` / :meth:`critic_parameters` is by name.

    Args:
        cfg: the run configuration (model and method parts are used); ``cfg.method`` must be an instance of
            ``Options`` (``udavae.methods.build_method`` validates the configuration first).
        num_classes: K, segmentation classes including background.
    """

    #: ``method.kind`` of this method (its key in ``udavae.methods.METHODS``).
    kind: ClassVar[str] = ""
    #: The options dataclass of this kind (the ``method.*`` config keys).
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    #: Named configurations of this method (``--preset``), declared beside it; see ``udavae.methods.registry``.
    presets: ClassVar[dict[str, Preset]] = {}
    #: Whether the method can train under DistributedDataParallel (see :meth:`refuse_distributed`).
    supports_distributed: ClassVar[bool] = True
    #: Whether :meth:`forward` needs a target batch.
    needs_target: bool = True
    #: Whether the source batch holds two augmented views of every crop, stacked along the batch
    #: (:class:`udavae.augment.SourceAugmenter` builds them; GIN-IPA's consistency loss reads them).
    view_pairs: ClassVar[bool] = False

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__()
        if not isinstance(cfg.method, self.Options):
            raise TypeError(
                f"{type(self).__name__} needs {self.Options.__name__} options, got "
                f"{type(cfg.method).__name__} (method.kind={cfg.method.kind!r})"
            )
        self.cfg = cfg
        self.num_classes = num_classes
        self.net = UNetVAE(cfg.model, num_classes)
        self.critics: nn.ModuleDict | None = None

    @property
    def options(self) -> MethodOptions:
        """This method's options (``cfg.method``, an instance of ``Options``)."""
        return self.cfg.method  # type: ignore[return-value]

    def forward(self, source: Batch, target: Batch | None = None) -> dict[str, Tensor]:
        """Weighted loss terms by name and their sum under ``"total"``."""
        raise NotImplementedError

    def step_phases(self) -> dict[str, int]:
        """Stretches of a run whose training steps differ, by name, each with its first global step (ascending).

        Default: one phase from step 0. A method whose :meth:`training_step` changes with ``step`` (PnP-AdaNet's
        source phase, critic warm-up and adaptation phase) lists them, so that ``udavae model info`` counts the
        cost of each and of the whole run.
        """
        return {"training": 0}

    def refuse_distributed(self, forward: Forward | None = None) -> None:
        """Raise ``NotImplementedError`` if this method cannot train under DDP and it is asked to.

        A method whose step runs several backward passes over different parameter sets (adversarial updates)
        sets :attr:`supports_distributed` to False: DDP reduces the gradients of one backward per forward. The
        trainer calls this before wrapping; ``training_step`` may call it again with the ``forward`` it got.
        """
        if self.supports_distributed:
            return
        wrapped = getattr(forward, "_orig_mod", forward)  # torch.compile keeps the module it wraps here
        dist = torch.distributed
        multi = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if multi or isinstance(wrapped, nn.parallel.DistributedDataParallel):
            raise NotImplementedError(
                f"method kind {self.kind!r} does not support multi-process (DDP) training: run it in one process"
            )

    def configure_optimizers(self, optim_cfg: OptimConfig, fused: bool = False) -> dict[str, torch.optim.Optimizer]:
        """The optimisers of a run, by name (checkpoints store their states under these names).

        Default: Adam over :meth:`main_parameters` (``"main"``) and, if the method has critics, Adam over
        :meth:`critic_parameters` (``"critic"``), both at ``optim_cfg.lr`` with its weight decay (Adam's coupled
        L2, as the published code). Every param group records its learning rate as ``group["base_lr"]``
        (:func:`adam` does it); the trainer's per-epoch decay scales that, so an override may give each
        optimiser or group its own rate.

        Args:
            optim_cfg: learning rate and weight decay of the run.
            fused: use the fused single-kernel Adam when the parameters are on a CUDA device (the same update,
                rounded in another order); ignored elsewhere, so CPU runs keep the default implementation.
        """
        opts = {"main": adam(self.main_parameters(), optim_cfg.lr, optim_cfg.weight_decay, fused)}
        critic = list(self.critic_parameters())
        if critic:
            opts["critic"] = adam(critic, optim_cfg.lr, optim_cfg.weight_decay, fused)
        return opts

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
        """One optimisation step on a source (and target) batch; returns the loss terms it logs.

        Default (the published code's step): the loss terms under autocast, every optimiser's gradients
        zeroed, one backward of ``"total"``, then the ``"critic"`` optimiser steps first and the others after
        (all gradients exist before any step, so the order does not change the maths). Sub-classes with
        several updates per step (generator / discriminator) override it.

        Args:
            forward: the module call to use for the main pass instead of ``self`` (the trainer passes the
                DDP-wrapped or ``torch.compile``-d method, which must be called for DDP's gradient
                synchronisation and for the compiled graph to run); it takes :meth:`forward`'s arguments.
            source / target: batches already on the device (``target`` None if not :attr:`needs_target`).
            optimizers: what :meth:`configure_optimizers` returned (the learning rates already set).
            autocast_ctx: returns a fresh autocast context of the run's precision; wrap each forward pass.
            step: 0-based global step (for methods with schedules; the default ignores it).

        Returns:
            Weighted loss terms and ``"total"`` (the trainer detaches and averages every key for the log).
            Under CUDA graphs the tensors may be overwritten by the next step: read them before it.
        """
        with autocast_ctx():
            losses = forward(source, target)
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        for name in sorted(optimizers, key=lambda k: k != "critic"):
            optimizers[name].step()
        return losses

    def main_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside ``self.critics``: network and decoders (the default ``"main"`` optimiser)."""
        for name, p in self.named_parameters():
            if not name.startswith("critics."):
                yield p

    def critic_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters under ``self.critics`` (SMIE critics, discriminators; the default ``"critic"`` optimiser)."""
        if self.critics is not None:
            yield from self.critics.parameters()

    def reconstruct(self, batch: Batch, domain: str) -> Tensor | None:
        """Full-scale reconstruction of ``batch`` by ``domain``'s decoder (report figures); None if none."""
        return None

    def segmentation_terms(self, out: VAEOutput, labels: Sequence[Tensor]) -> dict[str, Tensor]:
        """Balanced CE of the full, fusion, 1/2 and 1/4 heads against the source labels, times ``seg``."""
        w = self.options.weights.seg  # type: ignore[attr-defined]
        full, half, quarter = out.seg_logits
        return {
            "seg_full": w * balanced_cross_entropy(full, labels[0]),
            "seg_fusion": w * balanced_cross_entropy(out.logits, labels[0]),
            "seg_half": w * balanced_cross_entropy(half, labels[1]),
            "seg_quarter": w * balanced_cross_entropy(quarter, labels[2]),
        }

    @staticmethod
    def with_total(terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """Add ``"total"`` = sum of all terms (as a float32 scalar)."""
        terms["total"] = torch.stack([t.float() for t in terms.values()]).sum()
        return terms


def adam(
    params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0, fused: bool = False, **kwargs: object
) -> torch.optim.Adam:
    """``torch.optim.Adam`` whose param groups record ``lr`` as ``"base_lr"`` (the trainer decays from it).

    Args:
        params: the parameters to optimise (already on their device).
        lr / weight_decay: Adam's learning rate and coupled L2 weight decay.
        fused: the fused single-kernel Adam when the parameters are on a CUDA device; ignored elsewhere.
        kwargs: further ``torch.optim.Adam`` arguments (``betas``...).
    """
    params = list(params)
    options: dict = {"lr": lr, "weight_decay": weight_decay, **kwargs}
    if fused and params and params[0].device.type == "cuda":
        options["fused"] = True
    opt = torch.optim.Adam(params, **options)
    for group in opt.param_groups:
        group["base_lr"] = group["lr"]
    return opt

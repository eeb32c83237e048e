"""Parameter and FLOP counts of a configured method, its training step counted through its own hooks.

The step is :meth:`UDAMethod.training_step` with the optimisers of :meth:`UDAMethod.configure_optimizers`,
so a method with several updates per step (generator / discriminator) is counted as it trains. FLOPs follow
:mod:`udavae.models.complexity`'s convention (conv / linear / matmul only: optimiser updates count 0). By
default everything runs on the ``meta`` device: shapes only, instant even at the paper size
(docs/implementation-notes.md, "Model size and cost").
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch

from udavae.config import Config
from udavae.methods import build_method
from udavae.methods.base import UDAMethod
from udavae.models.complexity import count_flops, count_parameters, inference_flops, synthetic_batch

__all__ = ["Complexity", "augmented_source", "measure", "training_step_flops"]


@dataclass
class Complexity:
    """Sizes and costs of one configured method.

    Attributes:
        net_params: parameters of the segmentation network (the inference model).
        decoder_params / critic_params: the method's other trained modules (reconstruction decoders, image
            generators) and its critics (SMIE, discriminators); ``part_labels`` names them for this method.
        frozen_params: parameters kept without gradients (PnP-AdaNet's frozen source network).
        trained_params: everything the optimisers update (net + decoders + critics).
        step_flops: one training step (:meth:`UDAMethod.training_step`: forward and backward passes),
            ``batch`` source + ``batch`` target crops of ``crop`` x ``crop`` (source only if not ``uses_target``);
            the first step of the run, for a method with several phases.
        phase_flops: one training step of each phase of :meth:`UDAMethod.step_phases`, by phase name.
        run_flops: the whole run's schedule (``optim.epochs`` x ``optim.iters_per_epoch`` steps, each phase's
            steps at its own cost).
        inference_flops: one ``infer_size`` x ``infer_size`` slice through the network (eval mode).
    """

    net_params: int
    decoder_params: int
    critic_params: int
    trained_params: int
    step_flops: int
    inference_flops: int
    batch: int
    crop: int
    infer_size: int
    device: str
    uses_target: bool
    frozen_params: int = 0
    phase_flops: dict[str, int] = field(default_factory=dict)
    run_flops: int = 0
    part_labels: tuple[str, str] = ("reconstruction decoders", "SMIE critics")


def training_step_flops(method: UDAMethod, batch: int, crop: int, step: int = 0) -> int:
    """FLOPs of one training step of ``method`` on a synthetic batch (train mode, fp32), as the trainer runs it.

    The step is the batch-level augmentation of ``cfg.augment`` followed by :meth:`~UDAMethod.training_step`
    on the batch it hands over (see :func:`augmented_source`). ``step`` is the global step passed to the hook
    (it selects the phase of a multi-phase method). The optimisers come from
    :meth:`~UDAMethod.configure_optimizers` and really step, so on a real device the method's weights (and a
    phase switch's state) change; gradients are cleared afterwards.
    """
    device = next(method.parameters()).device
    k = method.num_classes
    src, extra = augmented_source(method, synthetic_batch(batch, crop, k, device))
    tgt = synthetic_batch(batch, crop, k, device, labelled=False) if method.needs_target else None
    method.train()
    optimizers = method.configure_optimizers(method.cfg.optim)
    flops = extra + count_flops(
        lambda: method.training_step(method, src, tgt, optimizers, contextlib.nullcontext, step=step)
    )
    method.zero_grad(set_to_none=True)
    return flops


def augmented_source(method: UDAMethod, src: dict) -> tuple[dict, int]:
    """The source batch the method's step sees under ``cfg.augment``, and the FLOPs spent building it.

    Shapes as :class:`~udavae.augment.SourceAugmenter` makes them (SLAug with ``slaug_views=stacked`` and GIN
    view pairs double the batch). SLAug's saliency pass is counted as one forward and backward pass of the
    network (with ``slaug_views=fused`` its input-only backward skips the weight gradients, so this overcounts
    it slightly); GIN's random networks (a few 3x3 convolutions of 2 channels) are not counted.
    """
    from udavae.losses import balanced_cross_entropy

    aug = method.cfg.augment
    doubled = {k: [torch.cat([t, t]) for t in v] for k, v in src.items()}
    if aug.slaug:
        x = src["image"][0].detach().requires_grad_(True)
        flops = count_flops(lambda: balanced_cross_entropy(method.net(x).logits, src["label"][0]).backward())
        method.zero_grad(set_to_none=True)
        return (doubled if aug.slaug_views == "stacked" else src), flops
    if aug.gin and method.view_pairs:
        return doubled, 0
    return src, 0


def measure(
    cfg: Config,
    num_classes: int,
    batch: int | None = None,
    crop: int | None = None,
    infer_size: int = 192,
    device: str = "meta",
) -> Complexity:
    """Build the method of ``cfg`` on ``device`` and count its parameters and FLOPs.

    Args:
        cfg: run configuration (not modified); ``batch`` / ``crop`` default to its batch size and crop.
        num_classes: K.
        batch: per-domain batch of the training step.
        crop: training crop side (the SMIE critics are sized for it).
        infer_size: side of the inference slice (192 in the paper's protocol).
        device: ``meta`` (instant, shapes only) or a real device.
    """
    cfg = copy.deepcopy(cfg)
    cfg.data.crop = crop if crop is not None else cfg.data.crop
    cfg.optim.batch_size = batch if batch is not None else cfg.optim.batch_size
    cfg.validate()
    with torch.device(device):
        method = build_method(cfg, num_classes)
    critics = sum(p.numel() for p in method.critic_parameters())
    net = count_parameters(method.net)
    everything = count_parameters(method)
    frozen = sum(p.numel() for p in method.parameters() if not p.requires_grad)
    trained = everything - frozen
    starts = method.step_phases()  # ascending first steps; counted in order, as a run reaches them
    phase_flops = {
        name: training_step_flops(method, cfg.optim.batch_size, cfg.data.crop, step=start)
        for name, start in starts.items()
    }
    total_steps = cfg.optim.epochs * cfg.optim.iters_per_epoch
    ends = [*list(starts.values())[1:], total_steps]
    run_flops = sum(
        phase_flops[name] * max(0, min(end, total_steps) - min(start, total_steps))
        for (name, start), end in zip(starts.items(), ends, strict=True)
    )
    return Complexity(
        net_params=net,
        decoder_params=trained - net - critics,
        critic_params=critics,
        trained_params=trained,
        step_flops=next(iter(phase_flops.values())),
        inference_flops=inference_flops(method.net, infer_size),
        batch=cfg.optim.batch_size,
        crop=cfg.data.crop,
        infer_size=infer_size,
        device=device,
        uses_target=method.needs_target,
        frozen_params=frozen,
        phase_flops=phase_flops,
        run_flops=run_flops,
        part_labels=type(cfg.method).part_labels,  # type: ignore[attr-defined]  (MethodOptions)
    )

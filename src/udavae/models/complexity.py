"""Parameter and FLOP counts of a configured method (REFERENCE_SPEC s9).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions, linear layers
and matrix products (1 multiply-accumulate = 2 FLOPs) and ignores element-wise work (norms,
activations, the Gaussian and CF distances): the convention of the reference measurements. By default
everything runs on the ``meta`` device, where only shapes are propagated, so even the paper-size model
is counted instantly; the counts equal those of a real run (checked by the tests).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from udavae.config import Config
from udavae.methods import UDAMethod, build_method
from udavae.models.unet_vae import UNetVAE

__all__ = ["Complexity", "count_parameters", "inference_flops", "measure", "synthetic_batch",
           "training_step_flops"]


@dataclass
class Complexity:
    """Sizes and costs of one configured method.

    Attributes:
        net_params: parameters of the segmentation network (the inference model).
        decoder_params / critic_params: reconstruction decoders and SMIE critics.
        trained_params: everything the optimisers update (net + decoders + critics).
        step_flops: one training step, forward + backward of the total loss, ``batch`` source +
            ``batch`` target crops of ``crop`` x ``crop`` (source only if not ``uses_target``).
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


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def synthetic_batch(batch: int, crop: int, num_classes: int, device: torch.device | str,
                    labelled: bool = True) -> dict[str, list[torch.Tensor]]:
    """A random batch in the data layer's format (three scales; labels if ``labelled``)."""
    sizes = [crop // 2**i for i in range(3)]
    out: dict[str, list[torch.Tensor]] = {
        "image": [torch.rand(batch, 1, s, s, device=device) for s in sizes]
    }
    if labelled:
        out["label"] = [torch.randint(0, num_classes, (batch, s, s), device=device) for s in sizes]
    return out


def training_step_flops(method: UDAMethod, batch: int, crop: int) -> int:
    """FLOPs of forward + backward of ``method``'s total loss on a synthetic batch (train mode)."""
    device = next(method.parameters()).device
    k = method.num_classes
    src = synthetic_batch(batch, crop, k, device)
    tgt = synthetic_batch(batch, crop, k, device, labelled=False) if method.needs_target else None
    method.train()
    method.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        method(src, tgt)["total"].backward()
    method.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def inference_flops(net: UNetVAE, size: int = 192) -> int:
    """FLOPs of one ``size`` x ``size`` slice through the network in eval mode (z = mu)."""
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    x = torch.rand(1, net.encoder[0][0].in_channels, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x)
    net.train(was_training)
    return int(counter.get_total_flops())


def measure(cfg: Config, num_classes: int, batch: int | None = None, crop: int | None = None,
            infer_size: int = 192, device: str = "meta") -> Complexity:
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
    trained = count_parameters(method)
    return Complexity(
        net_params=net,
        decoder_params=trained - net - critics,
        critic_params=critics,
        trained_params=trained,
        step_flops=training_step_flops(method, cfg.optim.batch_size, cfg.data.crop),
        inference_flops=inference_flops(method.net, infer_size),
        batch=cfg.optim.batch_size,
        crop=cfg.data.crop,
        infer_size=infer_size,
        device=device,
        uses_target=method.needs_target,
    )

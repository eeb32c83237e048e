"""``udavae model info``: parameter and FLOP counts of a preset.

See docs/implementation-notes.md, section 12 (#complexity).
"""

from __future__ import annotations

import argparse
from typing import Any

from udavae.cli import add_preset_profile_args, presets_epilog
from udavae.config import parse_overrides
from udavae.methods.presets import build_config

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``model`` command (sub-command ``info``) to the top-level parser."""
    parser = subparsers.add_parser(
        "model",
        help="inspect model variants (parameters, FLOPs)",
        description="Inspect the network and objective of a preset.",
    )
    sub = parser.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    info = sub.add_parser(
        "info",
        help="parameter counts and FLOPs of a preset; or what a model zip / model folder holds",
        description="Print the parameter count of the segmentation network and of everything trained,\n"
        "the FLOPs of one training step (forward + backward, BATCH source + BATCH target crops)\n"
        "and of one inference slice. Counted on the meta device: instant, no data.\n"
        "The ablation presets (abl-*) are the rows of the UDA-VAE++ paper's ablation table\n"
        "(bSSFP -> LGE): "
        "CN = concat wiring, Att = spatial-gate mean head, Global / Local / Prior = SMIE terms.\n\n"
        "'udavae model info MODEL' (a model zip of 'udavae export' or a model folder) instead prints what\n"
        "it holds: method, checkpoint and epoch, label map, preprocessing, post-processing, training data\n"
        "(counts) and, for a zip, its format and udavae version after verifying every member's sha256.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=presets_epilog(),
    )
    add_preset_profile_args(info)
    info.add_argument("--crop", type=int, default=None, help="training crop side (default: the profile's)")
    info.add_argument("--batch", type=int, default=None, help="per-domain batch (default: the profile's)")
    info.add_argument("--classes", type=int, default=4, help="segmentation classes incl. background")
    info.add_argument("--infer-size", type=int, default=192, help="side of the inference slice")
    info.add_argument(
        "--device", default="meta", help="where to count: meta (instant, default) or a real device such as cpu"
    )
    info.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. model.wiring=skip model.mean_head=gate; or one path: a model zip or "
        "model folder to describe",
    )
    info.set_defaults(func=_info)

    def _usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)


def _fmt_params(n: int) -> str:
    return f"{n:,} ({n / 1e6:.2f} M)"


def _fmt_flops(n: int) -> str:
    if n >= 1e15:
        return f"{n / 1e15:.2f} PFLOP"
    return f"{n / 1e12:.3f} TFLOP" if n >= 1e12 else f"{n / 1e9:.1f} GFLOP"


def _describe(path: str) -> int:
    """``udavae model info MODEL``: the rows of :func:`udavae.export.summary.model_summary`."""
    from udavae.export.summary import model_summary

    rows = model_summary(path)
    width = max(len(k) for k, _ in rows)
    print(path)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    return 0


def _info(args: argparse.Namespace) -> int:
    if args.overrides and "=" not in args.overrides[0]:  # a path, not KEY=VALUE
        if len(args.overrides) > 1:
            raise ValueError(f"model info takes one model zip or folder, or KEY=VALUE overrides, got {args.overrides}")
        return _describe(args.overrides[0])
    from udavae.methods.complexity import measure  # torch import only when the command runs

    overrides: dict[str, Any] = dict(parse_overrides(args.overrides))
    if args.crop is not None:
        overrides["data.crop"] = args.crop
    if args.batch is not None:
        overrides["optim.batch_size"] = args.batch
    if args.classes < 2:
        raise ValueError(f"--classes must be >= 2, got {args.classes}")
    if args.infer_size < 1:
        raise ValueError(f"--infer-size must be >= 1, got {args.infer_size}")
    cfg = build_config(args.preset, args.profile, overrides)
    c = measure(cfg, args.classes, infer_size=args.infer_size, device=args.device)
    m, me = cfg.model, cfg.method
    crops = f"{c.batch} source + {c.batch} target" if c.uses_target else f"{c.batch} source"
    aug = ""  # what the batch-level augmentation adds to the step (methods.complexity.augmented_source)
    if cfg.augment.slaug:
        aug = {
            "both": "; SLAug: a training pass on the global view (it gives the saliency) + the fused view",
            "fused": "; SLAug: saliency pass + the fused view",
            "stacked": "; SLAug: saliency pass + global and fused views stacked",
        }[cfg.augment.slaug_views]
    elif cfg.augment.gin and cfg.method.kind == "gin_ipa":
        aug = "; GIN-IPA: 2 views"
    rows = [
        ("segmentation network", _fmt_params(c.net_params)),
        (c.part_labels[0], _fmt_params(c.decoder_params)),
        (c.part_labels[1], _fmt_params(c.critic_params)),
        ("trained in total", _fmt_params(c.trained_params)),
        *[
            (
                f"training step{f', {name}' if len(c.phase_flops) > 1 else ''} (fwd+bwd, {crops} crops "
                f"{c.crop}x{c.crop}{aug})",
                _fmt_flops(flops),
            )
            for name, flops in c.phase_flops.items()
        ],
        (f"training run ({cfg.optim.epochs} epochs x {cfg.optim.iters_per_epoch} steps)", _fmt_flops(c.run_flops)),
        (f"inference ({c.infer_size}x{c.infer_size} slice, net forward)", _fmt_flops(c.inference_flops)),
    ]
    print(
        f"preset {args.preset} (profile {args.profile}): kind={me.kind} wiring={m.wiring} "
        f"mean_head={m.mean_head} base_width={m.base_width} depth={m.depth} classes={args.classes} "
        f"{me.describe()}"
    )  # type: ignore[attr-defined]  (udavae.methods.base.MethodOptions)
    if c.frozen_params:
        rows.insert(3, ("frozen (no gradients, not trained)", _fmt_params(c.frozen_params)))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    print(f"  (FLOPs: conv/linear/matmul, 1 MAC = 2 FLOP, counted on {c.device})")
    return 0

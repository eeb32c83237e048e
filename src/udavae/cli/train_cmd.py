"""``udavae train``: train a method on a prepared dataset into a model folder."""

from __future__ import annotations

import argparse
import json

from udavae.config import parse_overrides
from udavae.methods.presets import PRESET_HELP, PROFILES, build_config


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a UDA method (or NoAdapt) into a model folder",
        description="Train a method on a prepared dataset. The paper's setting is --profile paper; "
        "--profile cpu trains on 2 CPU cores in about an hour. Extra key=value items override any "
        "config value (e.g. model.base_width=32 optim.lr=2e-4 method.mi_prior=false).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets:\n" + "\n".join(f"  {k:<14} {v}" for k, v in PRESET_HELP.items()),
    )
    p.add_argument("--dataset", required=True, help="prepared dataset folder (with dataset.json)")
    p.add_argument("--source", default="C0", help="labelled source domain (default C0)")
    p.add_argument("--target", default="LGE", help="unlabelled target domain (default LGE)")
    p.add_argument("--preset", default="udavae++", choices=list(PRESET_HELP), help="method preset")
    p.add_argument("--profile", default="paper", choices=list(PROFILES), help="compute profile (default paper)")
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides the profile)")
    p.add_argument("--iters-per-epoch", type=int, help="iterations per epoch (overrides the profile)")
    p.add_argument("--batch-size", type=int, help="slices per domain per step (per process under torchrun)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"),
                   help="mixed precision (default none = fp32): bf16 on CPUs with AVX512-BF16 / AMX and on "
                   "GPUs, fp16 on CUDA; about 2x faster on such CPUs, changes rounding (see README)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (minutes of "
                   "compilation first; pays off over long runs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run, tune_malloc=True)


def config_from_args(args: argparse.Namespace):
    """Build the run configuration from CLI arguments (profile <- preset <- flags <- key=value)."""
    over: dict[str, object] = {
        "data.dataset": args.dataset, "data.source": args.source, "data.target": args.target,
        "runtime.device": args.device, "runtime.seed": args.seed,
    }
    for flag, key in (("epochs", "optim.epochs"), ("iters_per_epoch", "optim.iters_per_epoch"),
                      ("batch_size", "optim.batch_size"), ("workers", "data.num_workers"),
                      ("amp", "runtime.amp")):
        if getattr(args, flag) is not None:
            over[key] = getattr(args, flag)
    if args.compile:
        over["runtime.compile"] = True
    over.update(parse_overrides(args.overrides))
    return build_config(args.preset, args.profile, over)


def run(args: argparse.Namespace) -> int:
    from udavae.engine.trainer import train

    cfg = config_from_args(args)
    summary = train(cfg, args.out, resume=args.resume)
    print(json.dumps({"out": str(args.out), **summary}, indent=2))
    return 0

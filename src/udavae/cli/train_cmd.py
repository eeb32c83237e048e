"""``udavae train``: train a method on a prepared dataset into a model folder."""

from __future__ import annotations

import argparse
import json

from udavae.config import COMPILE_MODES, Config, parse_overrides
from udavae.methods.presets import build_config

#: ``train`` flags (argparse dest) and the config key each sets; ``udavae config show`` prints this map.
FLAG_KEYS: dict[str, str] = {
    "dataset": "data.dataset",
    "source": "data.source",
    "target": "data.target",
    "device": "runtime.device",
    "seed": "runtime.seed",
    "epochs": "optim.epochs",
    "iters_per_epoch": "optim.iters_per_epoch",
    "batch_size": "optim.batch_size",
    "workers": "data.num_workers",
    "amp": "runtime.amp",
    "compile": "runtime.compile",
    "compile_mode": "runtime.compile_mode",  # and runtime.compile=true
}

_DESCRIPTION = """\
Train a method on a prepared dataset. The paper's setting is --profile paper (a GPU setting).
--profile cpu trains UDA-VAE++ on 2 CPU cores in <= 40 minutes: measured 39 min in fp32 and
28 min with --amp bf16 on an idle 2-core AMD EPYC VM with AVX512-BF16 (12 epochs x 100
iterations; on CPUs without native bf16, --amp bf16 is emulated and far slower: keep fp32).
Extra key=value items override any config value (e.g. model.base_width=32 optim.lr=2e-4
method.mi_prior=false); 'udavae config show --preset P --profile Q' lists every key with its value."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` command to the top-level parser."""
    from udavae.cli import add_preset_profile_args, presets_epilog

    p = sub.add_parser(
        "train",
        help="train a UDA method (or NoAdapt) into a model folder",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=presets_epilog(),
    )
    p.add_argument("--dataset", required=True, help="prepared dataset folder (with dataset.json)")
    p.add_argument("--source", default="C0", help="labelled source domain (default C0)")
    p.add_argument("--target", default="LGE", help="unlabelled target domain (default LGE)")
    add_preset_profile_args(p)
    p.add_argument("--out", required=True, help="model folder to write")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    p.add_argument("--epochs", type=int, help="number of epochs (overrides the profile)")
    p.add_argument("--iters-per-epoch", type=int, help="iterations per epoch (overrides the profile)")
    p.add_argument("--batch-size", type=int, help="slices per domain per step (per process under torchrun)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: 4 on CUDA, 0 on the CPU)")
    p.add_argument(
        "--amp",
        choices=("none", "bf16", "fp16"),
        help="mixed precision (default none = fp32): bf16 on GPUs and on CPUs with AVX512-BF16 / "
        "AMX (about 2x faster there), changes rounding (docs/performance.md); fp16 is refused for training",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step (minutes of compilation first; pays off over long runs)",
    )
    p.add_argument(
        "--compile-mode",
        choices=COMPILE_MODES,
        help="torch.compile mode, implies --compile (default: default); reduce-overhead also "
        "replays the step as CUDA graphs on a GPU (on the CPU it falls back to default)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint (prints from which epoch)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=run, tune_malloc=True)


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the run configuration from CLI arguments (profile <- preset <- flags <- key=value)."""
    over: dict[str, object] = {}
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag)
        if value is not None and value is not False:  # unset optional flags keep the profile's value
            over[key] = value
    if args.compile_mode:  # a mode implies compilation
        over["runtime.compile"] = True
    over.update(parse_overrides(args.overrides))
    return build_config(args.preset, args.profile, over)


def run(args: argparse.Namespace) -> int:
    """Train (or resume: the trainer says from which epoch) and print the fit summary as JSON."""
    from udavae.api import train

    model = train(config_from_args(args), args.out, resume=args.resume)
    print(json.dumps({"out": str(args.out), **(model.training or {})}, indent=2))
    return 0

"""Which test-time transforms make a per-case agreement that tracks the case Dice (docs/selection.md, "Choosing the
per-case ranking"). For each run, at the last epoch's EMA weights, on every labelled target test case: the case's
mean Dice, the agreement (mean Dice over structures) of its mask with the mask under each candidate transform
mapped back, and the entropy of the predicted foreground alone. Then, per candidate set of transforms, the
Spearman correlation with the case Dice and how many of the 10 worst cases are among the 10 it ranks worst.

    python benchmarks/qc_transforms.py benchmarks/work/sweep_c0_lge \\
        --runs udavae++slaug_seed0,slaug_seed0,noadapt-aug_seed0 [--only flip-x,gamma-0.7,gamma-1.5] [--weights]

``--weights`` adds agreements that need no transform: with the weights of the last epoch before averaging (every
model folder trained with ``train.ema`` has them), with earlier epochs' weights (runs that kept every epoch), and
with two draws of the variational latents (``sample=True``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import repo_relative
from scipy.stats import spearmanr

from udavae.data.spec import DatasetSpec
from udavae.data.volumes import load_cases
from udavae.engine import model_folder as mf
from udavae.engine.inference import Predictor
from udavae.engine.labelfree import TTA
from udavae.engine.trainer import run_preprocessing
from udavae.evaluation.labelfree import agreement
from udavae.evaluation.metrics import dice_per_class
from udavae.fileio import write_json

HERE = Path(__file__).resolve().parent


def _affine(n: int, degrees: float, zoom: float) -> torch.Tensor:
    t = math.radians(degrees)
    c, s = math.cos(t) / zoom, math.sin(t) / zoom
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0]]).expand(n, 2, 3)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _inverse(theta: torch.Tensor) -> torch.Tensor:
    bottom = torch.tensor([[0.0, 0.0, 1.0]]).expand(theta.shape[0], 1, 3)
    return torch.linalg.inv(torch.cat([theta, bottom], 1))[:, :2]


def _spatial(degrees: float, zoom: float):  # noqa: ANN202
    def forward(s: torch.Tensor) -> torch.Tensor:
        return _warp(s.unsqueeze(1), _affine(s.shape[0], degrees, zoom)).squeeze(1)

    def back(p: torch.Tensor) -> torch.Tensor:
        return _warp(p, _inverse(_affine(p.shape[0], degrees, zoom)))

    return forward, back


def _gamma(g: float):  # noqa: ANN202
    return (lambda s: s.clamp(0, 1) ** g), (lambda p: p)


#: name -> (transform of the slices z x H x W, inverse of the probabilities z x K x H x W)
CANDIDATES = {
    **{f"gamma-{g}": _gamma(g) for g in (0.5, 2.0, 3.0)},
    **{name: (forward, back) for name, forward, back in TTA},  # the shipped ones: flip-x, gamma-0.7, gamma-1.5
    "flip-y": (lambda s: s.flip(-2), lambda p: p.flip(-2)),
    "contrast-0.7": ((lambda s: 0.5 + (s.clamp(0, 1) - 0.5) * 0.7), (lambda p: p)),
    "rot+15": _spatial(15, 1.0),
    "rot-15": _spatial(-15, 1.0),
    "zoom-0.85": _spatial(0, 0.85),
    "zoom-1.15": _spatial(0, 1.15),
}
SETS = {
    "first definition (flips, gamma 0.7, 1.5)": ("flip-x", "flip-y", "gamma-0.7", "gamma-1.5"),
    "flip-x, gamma 0.7, 1.5 (current)": tuple(name for name, _, _ in TTA),
    "gamma 0.5, 2.0": ("gamma-0.5", "gamma-2.0"),
    "rotations and zooms": ("rot+15", "rot-15", "zoom-0.85", "zoom-1.15"),
    **{name: (name,) for name in CANDIDATES},
}


#: name -> checkpoint whose mask the EMA mask is compared with (``--weights``), beside the latent draws
WEIGHT_CANDIDATES = {"weights-last": "last", "weights-epoch-10": "epoch_010", "weights-epoch-8": "epoch_008"}
WEIGHT_SETS = {
    "last epoch's weights + latent draws": ("weights-last", "latent-1", "latent-2"),
    "last and earlier epochs' weights": ("weights-last", "weights-epoch-10", "weights-epoch-8"),
    "current transforms + last epoch's weights": (*(name for name, _, _ in TTA), "weights-last"),
}


def case_rows(run: Path, only: set[str], weights: bool) -> list[dict]:
    """Per test case: Dice, agreement under every candidate (those in ``only`` when given; with ``weights`` the
    agreement with other weights and latent draws too), foreground entropy."""
    cfg, info = mf.read_model_folder(run)
    spec = DatasetSpec.load(cfg.data.dataset)
    prep = run_preprocessing(cfg, spec)
    test = set(spec.splits[cfg.data.target]["test"])
    cases = load_cases(spec, [c for c in spec.cases(cfg.data.target) if c.id in test], prep, True, desc="test")
    _, _, method, _ = mf.load_trained(run, mf.epoch_checkpoint(cfg.optim.epochs, True), "cpu")
    pred = Predictor(method.net, prep, torch.device("cpu"), batch_size=32)
    others = {}
    if weights:
        for name, ckpt in WEIGHT_CANDIDATES.items():
            if mf.checkpoint_path(run, ckpt).is_file():
                others[name] = Predictor(mf.load_trained(run, ckpt, "cpu")[2].net, prep, torch.device("cpu"), 32)
    k = info.num_classes
    rows = []
    for case in cases:
        probs = pred.probabilities(case.image)
        classes = probs.argmax(1)
        native = prep.invert_probabilities(probs, case.geometry).argmax(0).numpy()
        fg = classes > 0
        p = probs.clamp_min(1e-8)
        entropy = -(p * p.log()).sum(1) / math.log(k)
        row = {
            "case": case.id,
            "dice": float(np.nanmean(dice_per_class(native, case.native_label, k))),
            "foreground_entropy": float(entropy[fg].mean()) if fg.any() else 1.0,
        }
        for name, (forward, back) in CANDIDATES.items():
            if only and name not in only:
                continue
            other = back(pred.probabilities(forward(case.image))).argmax(1)
            row[name] = agreement(classes.numpy(), other.numpy(), k)
        for name, other_pred in others.items():
            row[name] = agreement(classes.numpy(), other_pred.probabilities(case.image).argmax(1).numpy(), k)
        if weights:
            for i in (1, 2):
                torch.manual_seed(i)
                drawn = pred.probabilities(case.image, samples=2).argmax(1)  # the mean of two latent draws
                row[f"latent-{i}"] = agreement(classes.numpy(), drawn.numpy(), k)
        rows.append(row)
    return rows


def rank_quality(rows: list[dict], values: np.ndarray) -> dict:
    """Spearman with the case Dice and the worst 10 by Dice among the 10 lowest ``values``."""
    dice = np.array([r["dice"] for r in rows])
    worst = set(np.argsort(dice)[:10].tolist())
    return {
        "spearman": float(spearmanr(values, dice).statistic),
        "worst10_caught": len(worst & set(np.argsort(values)[:10].tolist())),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="sweep folder (runs under SWEEP/runs)")
    ap.add_argument("--runs", required=True, help="comma-separated run names")
    ap.add_argument("--only", default="", help="comma-separated transforms to score (default: every candidate)")
    ap.add_argument("--weights", action="store_true", help="also the agreement with other weights / latent draws")
    ap.add_argument("--out", default=str(HERE / "results" / "selection" / "qc_transforms.json"))
    args = ap.parse_args()
    sweep = repo_relative(str(Path(args.sweep).resolve()))
    extra = (f" --only {args.only}" if args.only else "") + (" --weights" if args.weights else "")
    result: dict = {"command": f"python benchmarks/qc_transforms.py {sweep} --runs {args.runs}{extra}"}
    only = set(filter(None, args.only.split(",")))
    for name in args.runs.split(","):
        rows = case_rows(Path(args.sweep) / "runs" / name, only, args.weights)
        sets = {**SETS, **{n: (n,) for n in rows[0] if n.startswith(("weights-", "latent-"))}, **WEIGHT_SETS}
        quality = {
            s: rank_quality(rows, np.mean([[r[t] for t in ts] for r in rows], axis=1))
            for s, ts in sets.items()
            if all(t in rows[0] for t in ts)
        }
        quality["foreground entropy (lower is worse)"] = rank_quality(
            rows, -np.array([r["foreground_entropy"] for r in rows])
        )
        result[name] = {"cases": rows, "quality": quality}
        for s, q in quality.items():
            print(f"{name}  {s:45s} Spearman {q['spearman']:.2f}  worst 10 caught {q['worst10_caught']}")
    write_json(Path(args.out), result)


if __name__ == "__main__":
    main()

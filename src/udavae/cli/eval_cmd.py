"""``udavae evaluate``, ``udavae predict`` and ``udavae report``: using a trained model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from udavae.errors import DataError, UserError


def _model_args(p: argparse.ArgumentParser, batch: bool = True) -> None:
    """Arguments every command that loads a model folder takes."""
    p.add_argument("--checkpoint", default="best", choices=("best", "last"))
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    if batch:
        p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
        p.add_argument("--amp", choices=("none", "bf16", "fp16"),
                       help="mixed precision for inference (default: the model's training setting)")


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="per-patient, per-structure metrics of a model on a split",
                       description="Dice, IoU, ASSD, HD95 and HD (mm) per case and structure on the 3-D "
                       "volumes at their native resolution. Writes metrics.csv and summary.json.")
    e.add_argument("run", help="model folder written by 'udavae train'")
    e.add_argument("--split", default="test", help="split of the evaluated domain (default test)")
    e.add_argument("--domain", help="domain to evaluate (default: the model's target domain)")
    e.add_argument("--dataset", help="dataset folder (default: the one the model was trained on)")
    e.add_argument("--out", help="output folder (default RUN/eval/<domain>_<split>_<checkpoint>)")
    _model_args(e)
    e.add_argument("--save-masks", action="store_true", help="also write the predicted masks (NIfTI)")
    e.set_defaults(func=run_evaluate, tune_malloc=True)

    p = sub.add_parser("predict", help="segment new scans (NIfTI in, NIfTI masks out)",
                       description="Masks keep the input's shape, spacing, origin and direction and use the "
                       "dataset's own label codes. --samples K > 1 also writes an uncertainty map "
                       "(normalised entropy of the mean softmax over K latent samples).")
    p.add_argument("run", help="model folder written by 'udavae train'")
    p.add_argument("input", help="a NIfTI file or a folder of them")
    p.add_argument("output", help="output folder")
    p.add_argument("--samples", type=int, default=1, help="latent samples for uncertainty (default 1)")
    _model_args(p)
    p.set_defaults(func=run_predict, tune_malloc=True)

    r = sub.add_parser("report", help="figures: overlays, reconstructions, training curves (PNG)")
    r.add_argument("run", help="model folder")
    r.add_argument("--out", help="output folder (default RUN/report)")
    r.add_argument("--split", default="test")
    r.add_argument("--cases", type=int, default=4, help="number of target cases shown")
    _model_args(r, batch=False)
    r.set_defaults(func=run_report)


def _load(run: str | Path, checkpoint: str, device_name: str, batch_size: int, amp: str | None = None):
    """Load a model folder and a predictor for it (``amp`` None: the precision the model trained in)."""
    from udavae.engine.inference import Predictor
    from udavae.engine.model_folder import load_trained
    from udavae.engine.runtime import resolve_device

    device = resolve_device(device_name)
    cfg, info, method, state = load_trained(run, checkpoint, device)
    predictor = Predictor(method.net, info.preprocessing, device, batch_size=batch_size,
                          amp=amp or cfg.runtime.amp)
    return cfg, info, method, state, predictor


def evaluate_run(run: str | Path, split: str = "test", checkpoint: str = "best", domain: str | None = None,
                 dataset: str | None = None, out: str | Path | None = None, device: str = "auto",
                 batch_size: int = 16, save_masks: bool = False, verbose: bool = True,
                 amp: str | None = None) -> tuple[dict, Path]:
    """Evaluate a model folder on a split; write metrics.csv / summary.json; return (summary, folder)."""
    from udavae.data.nifti import save_like
    from udavae.data.spec import DatasetSpec
    from udavae.data.volumes import load_cases
    from udavae.evaluation.evaluate import evaluate_cases, format_table, summary_of, write_metrics_csv, write_summary
    from udavae.fileio import ensure_writable_dir

    cfg, info, method, state, predictor = _load(run, checkpoint, device, batch_size, amp)
    spec = DatasetSpec.load(dataset or info.dataset_path)
    domain = domain or info.target
    cases = spec.split(domain, split)
    unlabelled = [c.id for c in cases if c.label is None]
    if unlabelled:
        raise DataError(f"cannot evaluate {domain}/{split}: cases without labels {unlabelled}")
    out = ensure_writable_dir(Path(out) if out else Path(run) / "eval" / f"{domain}_{split}_{checkpoint}")
    loaded = load_cases(spec, cases, info.preprocessing, with_labels=True, desc=f"loading {domain}/{split}")
    on_pred = None
    if save_masks:
        ensure_writable_dir(out / "masks")

        def on_pred(case, pred):  # noqa: ANN001
            save_like(info.labels.to_codes(pred.classes), case.reference, out / "masks" / f"{case.id}.nii.gz")

    rows = evaluate_cases(predictor, loaded, info.labels.class_names, on_pred)
    summary = summary_of(rows, {
        "run": str(Path(run).resolve()), "method": cfg.method.name, "checkpoint": checkpoint,
        "epoch": state.get("epoch"), "domain": domain, "split": split, "n_cases": len(loaded),
        "seed": cfg.runtime.seed,
    })
    write_metrics_csv(out / "metrics.csv", rows)
    write_summary(out / "summary.json", summary)
    if verbose:
        names = list(info.labels.class_names.values())
        print(format_table({cfg.method.name: summary}, names, "dice",
                           title=f"Dice % on {domain}/{split} ({len(loaded)} cases, {checkpoint} checkpoint)"))
        print(format_table({cfg.method.name: summary}, names, "assd", title="ASSD (mm)"))
        for s, n in summary["missed_structures"].items():
            print(f"note: {s} present but not predicted in {n} case(s): Dice 0, distances NaN (excluded from means)")
        print(f"wrote {out / 'metrics.csv'} and {out / 'summary.json'}")
    return summary, out


def run_evaluate(args: argparse.Namespace) -> int:
    evaluate_run(args.run, args.split, args.checkpoint, args.domain, args.dataset, args.out, args.device,
                 args.batch_size, args.save_masks, amp=args.amp)
    return 0


def _input_files(path: Path) -> list[Path]:
    from udavae.data.nifti import is_nifti

    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
        if not files:
            raise UserError(f"no NIfTI files (*.nii, *.nii.gz) in {path}")
        return files
    raise UserError(f"input {path} not found")


def run_predict(args: argparse.Namespace) -> int:
    from udavae.data.nifti import read_header, save_like, strip_nifti_suffix
    from udavae.data.volumes import load_image
    from udavae.fileio import ensure_writable_dir

    if args.samples < 1:
        raise UserError("--samples must be >= 1")
    files = _input_files(Path(args.input))
    # Check every input before writing anything.
    for f in files:
        shape = read_header(f).shape
        if not (len(shape) == 3 or (len(shape) == 4 and shape[3] == 1)):
            raise DataError(f"{f}: expected a 3-D volume, got shape {tuple(shape)}")
    out = ensure_writable_dir(args.output)
    cfg, info, method, state, predictor = _load(args.run, args.checkpoint, args.device, args.batch_size,
                                                args.amp)
    prep = info.preprocessing
    for f in tqdm(files, desc="predicting", unit="vol", disable=None):
        vol, slices, geom = load_image(f, prep)
        pred = predictor.predict(slices, geom, samples=args.samples)
        name = strip_nifti_suffix(f.name)
        save_like(info.labels.to_codes(pred.classes), vol, out / f"{name}.nii.gz")
        if pred.uncertainty is not None:
            save_like(pred.uncertainty, vol, out / f"{name}_uncertainty.nii.gz", dtype=np.float32)
    print(f"wrote {len(files)} mask(s) to {out}" + (" with uncertainty maps" if args.samples > 1 else ""))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from udavae.reports.figures import make_report

    out = Path(args.out) if args.out else Path(args.run) / "report"
    files = make_report(args.run, out, split=args.split, n_cases=args.cases, checkpoint=args.checkpoint,
                        device=args.device)
    for f in files:
        print(f"wrote {f}")
    return 0

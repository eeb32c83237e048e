"""``udavae evaluate``, ``udavae predict`` and ``udavae report``: using a trained model folder."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from udavae.errors import DataError, UserError


def _model_args(p: argparse.ArgumentParser, batch: bool = True) -> None:
    """Arguments every command that loads a model folder takes."""
    p.add_argument("--checkpoint", default="selected",
                   help="which saved weights to use: 'selected' = the one the run's selection rule chose "
                   "(RUN/selection.json; default), 'best' = the epoch that rule chose (the best validation Dice "
                   "under the default rule when the target has labelled validation cases), 'last' = the final epoch, "
                   "'ema' = the weight average, 'epoch_NNN' / 'epoch_NNN_ema' = a kept epoch")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    if batch:
        p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
        p.add_argument("--amp", choices=("none", "bf16", "fp16"),
                       help="mixed precision for inference (default: the model's training setting)")
        p.add_argument("--no-postprocess", action="store_true",
                       help="use the network's raw masks; by default the post-processing decided on the "
                       "validation cases (RUN/postprocessing.json, see 'udavae postprocess') is applied")


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("evaluate", help="per-patient, per-structure metrics of a model on a split",
                       description="Dice, IoU, ASSD, HD95 and HD (mm) per case and structure on the 3-D "
                       "volumes at their native resolution. Writes metrics.csv and summary.json for the masks "
                       "as 'predict' writes them (post-processed when the model folder holds a decision) and, "
                       "when post-processing changes anything, metrics_raw.csv for the network's raw masks; "
                       "summary.json has both.")
    e.add_argument("run", help="model folder written by 'udavae train'")
    e.add_argument("--split", default="test", help="split of the evaluated domain (default test); "
                   "'source-holdout' = the source cases the run held out of training (RUN/selection.json), the "
                   "evaluation a run with an unlabelled target can have")
    e.add_argument("--domain", help="domain to evaluate (default: the model's target domain)")
    e.add_argument("--dataset", help="dataset folder (default: the one the model was trained on)")
    e.add_argument("--out", help="output folder (default RUN/eval/<domain>_<split>_<checkpoint>)")
    _model_args(e)
    e.add_argument("--save-masks", action="store_true", help="also write the predicted masks (NIfTI)")
    e.add_argument("--no-qc", action="store_true", help="skip qc.csv (label-free per-case scores and the "
                   "doubtful flag; 4 more network passes per case)")
    e.set_defaults(func=run_evaluate, tune_malloc=True)

    p = sub.add_parser("predict", help="segment new scans (NIfTI in, NIfTI masks out)",
                       description="Masks keep the input's shape, spacing, origin and direction and use the "
                       "dataset's own label codes. --samples K > 1 also writes an uncertainty map "
                       "(normalised entropy of the mean softmax over K latent samples); with --samples 1 an "
                       "older <name>_uncertainty.nii.gz beside a rewritten mask is removed. Every input is "
                       "read and checked first: if one is unreadable, not 3-D or has NaN/Inf values nothing "
                       "is written (unless --skip-bad), and an output folder or file that would overwrite "
                       "an input is refused.")
    p.add_argument("run", help="model folder written by 'udavae train'")
    p.add_argument("input", help="a NIfTI file or a folder of them")
    p.add_argument("output", help="output folder")
    p.add_argument("--samples", type=int, default=1, help="latent samples for uncertainty (default 1)")
    p.add_argument("--skip-bad", action="store_true",
                   help="segment the good inputs even if some are bad; the skipped files are listed on stderr "
                   "and the exit status is 1 (default: write nothing if any input is bad, exit status 2)")
    p.add_argument("--no-qc", action="store_true", help="skip qc.csv (label-free per-case scores, volumes in ml "
                   "and the doubtful flag, worst case first; 4 more network passes per scan)")
    _model_args(p)
    p.set_defaults(func=run_predict, tune_malloc=True)

    q = sub.add_parser("postprocess", help="decide the mask post-processing of a model on its validation cases",
                       description="For each structure, decide on the target validation split (never the test "
                       "split) whether keeping only its largest 3-D connected component raises the mean Dice "
                       "(kept when it is not lower), and store the decision in RUN/postprocessing.json, where "
                       "'predict' and 'evaluate' apply it. Training does this itself when it ends; run it for "
                       "model folders trained before, or to decide again.")
    q.add_argument("run", help="model folder written by 'udavae train'")
    q.add_argument("--checkpoint", choices=("best", "last", "both"), default="both",
                   help="which checkpoint(s) to decide for (default both)")
    q.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    q.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    q.set_defaults(func=run_postprocess, tune_malloc=True)

    r = sub.add_parser("report", help="figures: overlays, reconstructions, training curves (PNG)",
                       description="Writes PNG figures into the output folder: overlays.png (image, reference "
                       "label and prediction of the first --cases labelled target-domain cases of --split), "
                       "reconstructions.png (source and target slices and their reconstructions; methods with "
                       "a decoder only) and training_curves.png (losses and validation Dice per epoch, from "
                       "RUN/log.jsonl). Existing files of the same names are replaced.")
    r.add_argument("run", help="model folder")
    r.add_argument("--out", help="output folder (default RUN/report)")
    r.add_argument("--split", default="test",
                   help="split of the target domain whose cases the overlay figure shows (default test)")
    r.add_argument("--cases", type=int, default=4, help="number of target cases shown")
    _model_args(r, batch=False)
    r.set_defaults(func=run_report)


def _load(run: str | Path, checkpoint: str, device_name: str, batch_size: int, amp: str | None = None):  # noqa: ANN202
    """Load a model folder and a predictor for it (``amp`` None: the precision the model trained in).

    Returns a :class:`udavae.engine.model_folder.TrainedModel`; warns on stderr when ``amp`` would be emulated.
    """
    from udavae.engine.model_folder import open_model
    from udavae.engine.runtime import resolve_device, slow_amp_warning

    device = resolve_device(device_name)
    model = open_model(run, checkpoint, device, batch_size, amp)
    warning = slow_amp_warning(device, amp or model.config.runtime.amp)
    if warning:
        print(f"{warning} (for inference: --amp none)", file=sys.stderr)
    return model


def run_evaluate(args: argparse.Namespace) -> int:
    """``udavae evaluate``: load the model folder (engine), evaluate it (:mod:`udavae.evaluation.run`)."""
    from udavae.evaluation.run import evaluate_run as evaluate_model

    model = _load(args.run, args.checkpoint, args.device, args.batch_size, args.amp)
    qc = None
    if not args.no_qc:
        from udavae.engine.labelfree import case_scores

        names = model.info.labels.class_names

        def qc(case):  # noqa: ANN001, ANN202
            return case_scores(model.predictor, case, names).to_row()

    domain, case_ids = args.domain, None
    if args.split == "source-holdout":
        from udavae.engine.model_folder import read_selection

        record = read_selection(args.run) or {}
        case_ids = record.get("source_holdout") or []
        if not case_ids:
            raise UserError(f"{args.run} held no source cases out of training (data.source_holdout)")
        domain = model.info.source
    evaluate_model(model, args.split, domain, args.dataset, args.out, args.save_masks,
                   postprocess=not args.no_postprocess, qc=qc, case_ids=case_ids)
    return 0


def _input_files(path: Path) -> list[Path]:
    """The NIfTI file ``path`` or the NIfTI files in folder ``path``, sorted."""
    from udavae.data.nifti import is_nifti

    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and is_nifti(p))
        if not files:
            raise UserError(f"no NIfTI files (*.nii, *.nii.gz) in {path}")
        return files
    raise UserError(f"input {path} not found")


def _output_plan(files: list[Path], out: Path) -> dict[Path, tuple[Path, Path]]:
    """Input file -> (mask path, uncertainty-map path) in ``out``."""
    from udavae.data.nifti import strip_nifti_suffix

    names = {f: strip_nifti_suffix(f.name) for f in files}
    return {f: (out / f"{n}.nii.gz", out / f"{n}_uncertainty.nii.gz") for f, n in names.items()}


def _file_keys(path: Path) -> set[object]:
    """Identities of ``path``: its resolved path (symlinks, ``./``, ``..``) and, if it exists, its inode."""
    keys: set[object] = {path.resolve()}
    with contextlib.suppress(OSError):
        st = path.stat()
        keys.add((st.st_dev, st.st_ino))
    return keys


def _check_plan(inp: Path, plan: dict[Path, tuple[Path, Path]], out: Path, samples: int) -> None:
    """Refuse outputs that would overwrite (or, for stale uncertainty maps, delete) an input, or each other."""
    if inp.is_dir() and _file_keys(out) & _file_keys(inp):
        raise UserError(f"output folder {out} is the input folder {inp}: the masks would overwrite the input "
                        "images; choose another output folder")
    inputs = {key: f for f in plan for key in _file_keys(f)}
    for q in (q for paths in plan.values() for q in paths):
        clash = next((inputs[key] for key in _file_keys(q) if key in inputs), None)
        if clash is not None:
            raise UserError(f"output {q} would overwrite the input {clash}; choose another output folder")
    owner: dict[Path, Path] = {}
    for f, (mask, unc) in plan.items():
        for q in (mask, unc) if samples > 1 else (mask,):
            other = owner.setdefault(q.resolve(), f)
            if other != f:
                raise UserError(f"inputs {other} and {f} would both be written to {q}; rename one of them")


def _problem(f: Path, exc: Exception) -> str:
    """One-line description of why ``f`` cannot be segmented, starting with the file name."""
    msg = " ".join(str(exc).split())
    return msg if msg.startswith(str(f)) else f"{f}: {msg}"


def _find_bad_inputs(files: list[Path], prep) -> dict[Path, str]:  # noqa: ANN001
    """Read and preprocess every input as prediction will; return the problem of each one that fails.

    Header checks miss truncated data and NaN voxels, so each volume is read in full. It is dropped right
    after its check and read again when predicted: memory holds one volume at a time instead of the whole
    input folder, at the price of reading each file twice.
    """
    from udavae.data.volumes import load_image

    bad: dict[Path, str] = {}
    for f in tqdm(files, desc="checking inputs", unit="vol", leave=False, disable=None):
        try:
            load_image(f, prep)
        except (UserError, ValueError) as exc:
            bad[f] = _problem(f, exc)
    return bad


def _predict_files(files: list[Path], plan: dict[Path, tuple[Path, Path]], predictor, labels,  # noqa: ANN001
                   prep, samples: int, pp=None, qc_rows: list | None = None) -> list[Path]:  # noqa: ANN001
    """Write the mask (and uncertainty map) of each file; return the stale uncertainty maps removed.

    ``qc_rows``: when a list, each file's label-free scores (``udavae.engine.labelfree``) are appended to it.

    With ``samples == 1`` an uncertainty map left by an earlier ``--samples K`` run would no longer match
    the new mask beside it, so it is removed before the mask is written. ``pp``: the post-processing
    applied to each mask (None: raw masks).
    """
    from udavae.data.nifti import save_like
    from udavae.data.volumes import load_image

    masks = {m.resolve() for m, _ in plan.values()}
    removed = []
    for f in tqdm(files, desc="predicting", unit="vol", disable=None):
        mask, unc = plan[f]
        vol, slices, geom = load_image(f, prep)
        pred = predictor.predict(slices, geom, samples=samples)
        if pred.uncertainty is None and unc.is_file() and unc.resolve() not in masks:
            unc.unlink()
            removed.append(unc)
        classes = pp.apply(pred.classes, labels.class_names) if pp is not None else pred.classes
        save_like(labels.to_codes(classes), vol, mask)
        if pred.uncertainty is not None:
            save_like(pred.uncertainty, vol, unc, dtype=np.float32)
        if qc_rows is not None:
            from udavae.engine.labelfree import image_scores

            scores = image_scores(predictor, mask.name.removesuffix(".nii.gz"), slices, geom, vol.spacing,
                                  labels.class_names)
            qc_rows.append({**scores.to_row(), "input": str(f), "mask": str(mask)})
    return removed


def run_predict(args: argparse.Namespace) -> int:
    """Segment NIfTI files, all or nothing (or the good ones with ``--skip-bad``, exit status 1).

    Nothing is written, not even the output folder, when an output would overwrite an input or, without
    ``--skip-bad``, when any input cannot be segmented.
    """
    from udavae.fileio import ensure_writable_dir

    if args.samples < 1:
        raise UserError("--samples must be >= 1")
    inp, out = Path(args.input), Path(args.output)
    files = _input_files(inp)
    plan = _output_plan(files, out)
    _check_plan(inp, plan, out, args.samples)
    model = _load(args.run, args.checkpoint, args.device, args.batch_size, args.amp)
    info, predictor = model.info, model.predictor
    bad = _find_bad_inputs(files, info.preprocessing)
    good = [f for f in files if f not in bad]
    if bad and not (args.skip_bad and good):
        hint = "; --skip-bad segments the others" if good else ""
        raise DataError(f"{len(bad)} of {len(files)} input(s) cannot be segmented, nothing written: "
                        + "; ".join(bad.values()) + hint)
    pp = None if args.no_postprocess else model.postprocessing()
    out = ensure_writable_dir(out)
    rows: list | None = None if args.no_qc else []
    removed = _predict_files(good, plan, predictor, info.labels, info.preprocessing, args.samples, pp, rows)
    print(f"wrote {len(good)} mask(s) to {out}" + (" with uncertainty maps" if args.samples > 1 else ""))
    if rows is not None:
        from udavae.evaluation.qc import qc_rows, write_qc_csv

        ranked = qc_rows(rows, list(info.labels.class_names.values()))
        write_qc_csv(out / "qc.csv", ranked)
        n = sum(r["doubtful"] for r in ranked)
        print(f"quality control: {n} of {len(ranked)} mask(s) doubtful, listed first in {out / 'qc.csv'}")
    if pp is not None:
        print(pp.describe())
    for u in removed:
        print(f"removed {u}: an uncertainty map of an earlier --samples run that no longer matches the new mask")
    for problem in bad.values():
        print(f"udavae predict: skipped {problem}", file=sys.stderr)
    return 1 if bad else 0


def run_postprocess(args: argparse.Namespace) -> int:
    from udavae.engine.postprocessing import postprocess_run

    checkpoints = ("best", "last") if args.checkpoint == "both" else (args.checkpoint,)
    for checkpoint, pp in postprocess_run(args.run, checkpoints, args.device, args.batch_size).items():
        dice = ", ".join(f"{s} {100 * d['raw']:.2f} -> {100 * d['largest_component']:.2f}"
                         for s, d in pp.val_dice.items())
        print(f"{checkpoint}: {pp.describe()}\n  validation Dice raw -> largest component: {dice}")
    print(f"wrote {Path(args.run) / 'postprocessing.json'}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from udavae.reports.figures import make_report

    out = Path(args.out) if args.out else Path(args.run) / "report"
    files = make_report(args.run, out, split=args.split, n_cases=args.cases, checkpoint=args.checkpoint,
                        device=args.device)
    for f in files:
        print(f"wrote {f}")
    return 0

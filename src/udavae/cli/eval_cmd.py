"""``udavae evaluate``, ``udavae predict`` and ``udavae report``: using a trained model folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _model_args(p: argparse.ArgumentParser, batch: bool = True) -> None:
    """Arguments every command that loads a model folder takes."""
    p.add_argument(
        "--checkpoint",
        default="selected",
        help="which saved weights to use: 'selected' = the one the run's selection rule chose "
        "(RUN/selection.json; default), 'best' = the epoch that rule chose (the best validation Dice "
        "under the default rule when the target has labelled validation cases), 'last' = the final epoch, "
        "'ema' = the weight average, 'epoch_NNN' / 'epoch_NNN_ema' = a kept epoch",
    )
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    if batch:
        p.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
        p.add_argument(
            "--amp",
            choices=("none", "bf16", "fp16"),
            help="mixed precision for inference (default: the model's training setting)",
        )
        p.add_argument(
            "--no-postprocess",
            action="store_true",
            help="use the network's raw masks; by default the post-processing decided on the "
            "validation cases (RUN/postprocessing.json, see 'udavae postprocess') is applied",
        )


def _html_args(p: argparse.ArgumentParser, what: str) -> None:
    """``--html`` and ``--html-cases``."""
    from udavae.reports.html import MAX_CASES

    p.add_argument("--html", action="store_true", help=f"also write {what} (self-contained, opens offline)")
    p.add_argument(
        "--html-cases",
        type=int,
        default=MAX_CASES,
        metavar="N",
        help=f"cases given a viewer in report.html, worst first (default {MAX_CASES}; about 0.1-0.3 MB each)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        help="per-patient, per-structure metrics of a model on a split",
        description="Dice, IoU, ASSD, HD95 and HD (mm) per case and structure on the 3-D "
        "volumes at their native resolution. Writes metrics.csv and summary.json for the masks "
        "as 'predict' writes them (post-processed when the model folder holds a decision) and, "
        "when post-processing changes anything, metrics_raw.csv for the network's raw masks; "
        "summary.json has both.",
    )
    e.add_argument("run", help="model folder written by 'udavae train', or a model zip of 'udavae export'")
    e.add_argument(
        "--split",
        default="test",
        help="split of the evaluated domain (default test); "
        "'source-holdout' = the source cases the run held out of training (RUN/selection.json), the "
        "evaluation a run with an unlabelled target can have",
    )
    e.add_argument("--domain", help="domain to evaluate (default: the model's target domain)")
    e.add_argument("--dataset", help="dataset folder (default: the one the model was trained on)")
    e.add_argument(
        "--out", help="output folder (default RUN/eval/<domain>_<split>_<checkpoint>; required for a model zip)"
    )
    _model_args(e)
    e.add_argument("--save-masks", action="store_true", help="also write the predicted masks (NIfTI)")
    e.add_argument(
        "--no-qc",
        action="store_true",
        help="skip qc.csv (label-free per-case scores and the doubtful flag; 3 more network passes per case)",
    )
    e.set_defaults(func=run_evaluate, tune_malloc=True)

    p = sub.add_parser(
        "predict",
        help="segment new scans (NIfTI or DICOM in, NIfTI masks out)",
        description="Masks keep the input's shape, spacing, origin and direction and use the "
        "dataset's own label codes. --samples K > 1 also writes an uncertainty map "
        "(normalised entropy of the mean softmax over K latent samples); with --samples 1 an "
        "older <name>_uncertainty.nii.gz beside a rewritten mask is removed. Every input is "
        "read and checked first: if one is unreadable, not 3-D or has NaN/Inf values nothing "
        "is written (unless --skip-bad), and an output folder or file that would overwrite "
        "an input is refused. A folder may hold DICOM series (in nested folders too; pip install "
        "'udavae[dicom]'): each gives the mask <series UID>.nii.gz in the scan's geometry and a row of "
        "series.csv (UID, patient id, study and series descriptions, slices, folder, mask).",
    )
    p.add_argument("run", help="model folder written by 'udavae train', or a model zip of 'udavae export'")
    p.add_argument("input", help="a NIfTI file, or a folder of NIfTI files and/or DICOM series")
    p.add_argument("output", help="output folder")
    p.add_argument("--samples", type=int, default=1, help="latent samples for uncertainty (default 1)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="segment the good inputs even if some are bad; the skipped files are listed on stderr "
        "and the exit status is 1 (default: write nothing if any input is bad, exit status 2)",
    )
    p.add_argument(
        "--no-qc",
        action="store_true",
        help="skip qc.csv (label-free per-case scores, volumes in ml "
        "and the doubtful flag, worst case first; 3 more network passes per scan)",
    )
    _html_args(p, "OUTPUT/report.html: the quality control and a viewer per mask")
    _model_args(p)
    p.set_defaults(func=run_predict, tune_malloc=True)

    q = sub.add_parser(
        "postprocess",
        help="decide the mask post-processing of a model on its validation cases",
        description="For each structure, decide on the target validation split (never the test "
        "split) whether keeping only its largest 3-D connected component raises the mean Dice "
        "(kept when it is not lower), and store the decision in RUN/postprocessing.json, where "
        "'predict' and 'evaluate' apply it. Training does this itself when it ends; run it for "
        "model folders trained before, or to decide again.",
    )
    q.add_argument("run", help="model folder written by 'udavae train'")
    q.add_argument(
        "--checkpoint",
        choices=("best", "last", "both"),
        default="both",
        help="which checkpoint(s) to decide for (default both)",
    )
    q.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    q.add_argument("--batch-size", type=int, default=16, help="slices per forward pass")
    q.set_defaults(func=run_postprocess, tune_malloc=True)

    r = sub.add_parser(
        "report",
        help="figures: overlays, reconstructions, training curves (PNG); --html: one page with everything",
        description="Writes PNG figures into the output folder: overlays.png (image, reference "
        "label and prediction of the first --cases labelled target-domain cases of --split), "
        "reconstructions.png (source and target slices and their reconstructions; methods with "
        "a decoder only) and training_curves.png (losses and validation Dice per epoch, from "
        "RUN/log.jsonl). Existing files of the same names are replaced. The doubtful cases of every "
        "RUN/eval/*/qc.csv are listed, worst first, with their reason. --html also writes report.html, one "
        "self-contained page (opens offline) with the metrics of every RUN/eval folder, the quality control, "
        "the training curves and an overlay viewer per --split case, doubtful cases first.",
    )
    r.add_argument("run", help="model folder")
    r.add_argument("--out", help="output folder (default RUN/report)")
    r.add_argument(
        "--split", default="test", help="split of the target domain whose cases the overlay figure shows (default test)"
    )
    r.add_argument("--cases", type=int, default=4, help="number of target cases shown")
    _html_args(r, "OUT/report.html: metrics, quality control, curves and a viewer per case")
    _model_args(r, batch=False)
    r.set_defaults(func=run_report)


def _load(run: str | Path, checkpoint: str, device_name: str, batch_size: int, amp: str | None = None):  # noqa: ANN202
    """Load a model folder (:func:`udavae.api.load`); warns on stderr when ``amp`` would be emulated."""
    from udavae.api import load
    from udavae.engine.runtime import resolve_device, slow_amp_warning

    device = resolve_device(device_name)
    model = load(run, checkpoint, device, batch_size, amp)
    warning = slow_amp_warning(device, amp or model.config.runtime.amp)
    if warning:
        print(f"{warning} (for inference: --amp none)", file=sys.stderr)
    return model


def run_evaluate(args: argparse.Namespace) -> int:
    """``udavae evaluate``: :func:`udavae.api.evaluate` with the tables printed."""
    from udavae.api import evaluate

    model = _load(args.run, args.checkpoint, args.device, args.batch_size, args.amp)
    evaluate(
        model,
        args.split,
        domain=args.domain,
        dataset=args.dataset,
        out=args.out,
        postprocess=not args.no_postprocess,
        qc=not args.no_qc,
        save_masks=args.save_masks,
        verbose=True,
    )
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Segment NIfTI files, all or nothing (or the good ones with ``--skip-bad``, exit status 1).

    Nothing is written, not even the output folder, when an output would overwrite an input or, without
    ``--skip-bad``, when any input cannot be segmented. The workflow is :meth:`udavae.Model.predict_folder`.
    """
    from udavae.engine.evaluate import print_doubtful
    from udavae.engine.predict import plan_outputs

    plan_outputs(args.input, args.output, args.samples)  # fails before the model is loaded
    model = _load(args.run, args.checkpoint, args.device, args.batch_size, args.amp)
    res = model.predict_folder(
        args.input,
        args.output,
        samples=args.samples,
        skip_bad=args.skip_bad,
        postprocess=not args.no_postprocess,
        qc=not args.no_qc,
        html=args.html,
        html_cases=args.html_cases,
    )
    print(f"wrote {len(res.masks)} mask(s) to {res.out}" + (" with uncertainty maps" if args.samples > 1 else ""))
    if res.qc:
        print(
            f"quality control: {res.n_doubtful} of {len(res.qc)} mask(s) doubtful, listed first in {res.out / 'qc.csv'}"
        )
        print_doubtful(res.qc, res.out / "qc.csv")
    if any(hasattr(f, "uid") for f in res.inputs):
        print(f"DICOM series -> masks: {res.out / 'series.csv'}")
    if res.report is not None:
        print(f"wrote {res.report}")
    if res.postprocessing is not None:
        print(res.postprocessing.describe())
    for u in res.removed:
        print(f"removed {u}: an uncertainty map of an earlier --samples run that no longer matches the new mask")
    for problem in res.bad.values():
        print(f"udavae predict: skipped {problem}", file=sys.stderr)
    return 1 if res.bad else 0


def run_postprocess(args: argparse.Namespace) -> int:
    from udavae.engine.postprocessing import postprocess_run

    checkpoints = ("best", "last") if args.checkpoint == "both" else (args.checkpoint,)
    for checkpoint, pp in postprocess_run(args.run, checkpoints, args.device, args.batch_size).items():
        dice = ", ".join(
            f"{s} {100 * d['raw']:.2f} -> {100 * d['largest_component']:.2f}" for s, d in pp.val_dice.items()
        )
        print(f"{checkpoint}: {pp.describe()}\n  validation Dice raw -> largest component: {dice}")
    print(f"wrote {Path(args.run) / 'postprocessing.json'}")
    return 0


def run_report(args: argparse.Namespace) -> int:
    """The PNG figures (when the run holds its weights, or without ``--html``), ``report.html`` with ``--html``,
    and the doubtful cases of every ``RUN/eval/*/qc.csv``."""
    from udavae.engine.evaluate import print_doubtful
    from udavae.engine.model_folder import checkpoint_path, read_model_folder, resolve_checkpoint
    from udavae.errors import UserError
    from udavae.evaluation.qc import read_qc_csv
    from udavae.layout import EVAL_DIR, report_folder
    from udavae.reports.figures import make_report

    run = Path(args.run)
    read_model_folder(run)  # one clear error for a folder that is not a model folder
    out = Path(args.out) if args.out else report_folder(run)
    files = []
    if not args.html or checkpoint_path(run, resolve_checkpoint(run, args.checkpoint)).is_file():
        files = make_report(
            run, out, split=args.split, n_cases=args.cases, checkpoint=args.checkpoint, device=args.device
        )
    else:
        print(f"no weights ({args.checkpoint}) in {run}: no PNG figures and no case viewer, tables and curves only")
    if args.html:
        from udavae.reports.html import REPORT_FILE, run_report

        files.append(run_report(run, out / REPORT_FILE, args.split, args.checkpoint, args.device, args.html_cases))
    for f in files:
        print(f"wrote {f}")
    for qc in sorted((run / EVAL_DIR).glob("*/qc.csv")):
        try:
            print_doubtful(read_qc_csv(qc), qc)
        except UserError as exc:  # the figures are written; say what could not be listed
            print(f"udavae report: {exc}", file=sys.stderr)
    return 0

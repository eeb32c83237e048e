"""``udavae compare``: methods x seeds on their evaluated per-patient scores, with intervals and paired tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from udavae.errors import UserError

_DESCRIPTION = """\
Compare groups of trained models (methods, each trained with one or more seeds) on the per-patient metrics
'udavae evaluate' wrote into each model folder (RUN/eval/<target>_<split>_<checkpoint>/metrics.csv).

For every group, split, structure and metric it reports the mean +- std over seeds of each seed's mean over
patients (the seed-to-seed spread: how much retraining moves the number), a 95% percentile-bootstrap interval
of the mean over patients of the seed-averaged patient scores, and a two-sided Wilcoxon signed-rank test over
patients against the reference group (how consistently the difference holds across patients for these
trained models). Dice is in %, ASSD and HD95 in mm; distances undefined for a missed structure are excluded.

Groups: LABEL=PATH puts the runs under PATH into group LABEL; otherwise a run's group is the 'group' of its
sweep_run.json (runs of 'udavae sweep') or its config's preset. Two runs of one group must have different
seeds.

Writes into --out: compare.md (tables and notes), compare.csv (one row per group, split, structure and
metric), tests.csv (one row per test), compare.tex (booktabs table of the test-split Dice), compare.json
(everything, machine readable) and box_<split>_<metric>.png (box plots of the seed-averaged patient scores).
"""

_EPILOG = """\
examples:
  udavae compare sweeps/mscmr                      # a sweep folder: groups from sweep_run.json
  udavae compare runs/ --reference noadapt --splits test
  udavae compare NoAdapt=runs/noadapt_s0 NoAdapt=runs/noadapt_s1 Ours=runs/ours_s0 Ours=runs/ours_s1
"""


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``compare`` sub-command."""
    p = sub.add_parser(
        "compare",
        help="compare methods x seeds: mean +- std over seeds, bootstrap CIs, Wilcoxon tests, tables and box plots",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a model folder, a sweep folder, or any folder searched for model folders (folders with "
        "model.json and config.yaml); LABEL=PATH puts those runs into group LABEL",
    )
    p.add_argument("--out", help="output folder (default: <first PATH>/compare for a sweep folder, else ./compare)")
    p.add_argument(
        "--reference",
        metavar="GROUP",
        help="group the others are tested against (default: noadapt if present, else the first group)",
    )
    p.add_argument(
        "--splits",
        default="test,val",
        help="comma-separated splits of the target domain to compare (default test,val); each run "
        "needs 'udavae evaluate RUN --split S' for each",
    )
    p.add_argument(
        "--checkpoint",
        default="best",
        choices=("best", "last"),
        help="which evaluated checkpoint to compare (default best)",
    )
    p.add_argument(
        "--raw",
        action="store_true",
        help="use the network's raw masks (metrics_raw.csv where present) instead of the post-processed "
        "ones; comparable with runs without post-processing",
    )
    p.add_argument(
        "--metrics",
        default="dice,assd,hd95",
        help="comma-separated metrics: dice, iou (%%), assd, hd95, hd (mm) (default dice,assd,hd95)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=10000,
        metavar="N",
        help="bootstrap resamples for the 95%% intervals (default 10000; 0: no intervals)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the bootstrap resampling and the plot jitter, for reproducible results (default 0)",
    )
    p.add_argument(
        "--formats",
        default="md,csv,tex,png",
        help="comma-separated outputs among md, csv, tex, png (default all); compare.json is always written",
    )
    p.set_defaults(func=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    """Compare, write the outputs, print the headline table and the notes; exit status 0."""
    from udavae.evaluation.compare import compare, default_out
    from udavae.reports.compare import parse_formats, terminal_table, write_outputs

    splits, metrics = _csv_list(args.splits), _csv_list(args.metrics)
    if not splits:
        raise UserError("--splits names no split")
    if not metrics:
        raise UserError("--metrics names no metric")
    if args.bootstrap < 0:
        raise UserError("--bootstrap must be >= 0")
    formats = parse_formats(args.formats)
    comp = compare(
        args.paths,
        reference=args.reference,
        splits=splits,
        checkpoint=args.checkpoint,
        raw=args.raw,
        metrics=metrics,
        n_resamples=args.bootstrap,
        seed=args.seed,
    )
    out = Path(args.out) if args.out else default_out(args.paths)
    written = write_outputs(comp, out, formats)
    groups = ", ".join(f"{g} ({len(comp.seeds(g))} seed{'s' if len(comp.seeds(g)) != 1 else ''})" for g in comp.groups)
    print(f"compared {len(comp.runs)} runs in {len(comp.groups)} groups: {groups}")
    print(terminal_table(comp))
    for note in comp.notes:
        print(f"note: {note}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0

"""The outputs of ``udavae compare``: Markdown, CSV, LaTeX and JSON tables, box plots, and the terminal table.

Every renderer takes a :class:`udavae.evaluation.compare.Comparison` and only formats it; the numbers are
computed in :mod:`udavae.evaluation.compare`. ``compare.csv`` keeps full float precision (``repr``) so
:func:`read_compare_csv` gives back the in-memory numbers exactly. All files are written atomically.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

import udavae  # noqa: E402
from udavae.errors import DataError, UserError  # noqa: E402
from udavae.evaluation.compare import METRICS, Comparison  # noqa: E402
from udavae.fileio import atomic_write, ensure_writable_dir, write_json, write_text  # noqa: E402

__all__ = [
    "COMPARE_COLUMNS",
    "FORMATS",
    "TESTS_COLUMNS",
    "box_figure",
    "comparison_json",
    "latex_escape",
    "read_compare_csv",
    "read_tests_csv",
    "render_markdown",
    "render_tex",
    "terminal_table",
    "write_outputs",
]

#: Output formats ``--formats`` chooses from (compare.json is always written).
FORMATS: tuple[str, ...] = ("md", "csv", "tex", "png")
COMPARE_COLUMNS: tuple[str, ...] = (
    "group",
    "split",
    "structure",
    "metric",
    "unit",
    "n_seeds",
    "seeds",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "n_patients",
    "patient_mean",
    "seed_means",
)
TESTS_COLUMNS: tuple[str, ...] = (
    "group",
    "reference",
    "split",
    "structure",
    "metric",
    "unit",
    "mean_diff",
    "p_value",
    "statistic",
    "n_patients",
    "seed_std",
    "within_seed_noise",
    "note",
)
_INT_COLUMNS = ("n_seeds", "n_patients")
_FLOAT_COLUMNS = ("mean", "std", "ci_low", "ci_high", "patient_mean", "mean_diff", "p_value", "statistic", "seed_std")
_GROUP_COLORS = list(plt.get_cmap("tab10").colors)


# ----------------------------------------------------------------------------------------------- CSV


def _cell(value: Any) -> str:
    """A CSV cell: floats in full precision (``repr``: round-trips exactly), lists joined with ';'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ";".join("?" if v is None else _cell(v) for v in value)
    if isinstance(value, float | np.floating):
        return repr(float(value))
    return str(value)


def _csv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row[k]) for k in columns})
    return buf.getvalue()


def _read_csv(path: str | Path, columns: Sequence[str]) -> list[dict[str, str]]:
    path = Path(path)
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            fields = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    missing = [c for c in columns if c not in fields]
    if missing:
        raise DataError(f"{path} lacks the column(s) {', '.join(missing)}")
    return rows


def _typed(row: dict[str, str], path: Path, line: int) -> dict[str, Any]:
    out: dict[str, Any] = dict(row)
    try:
        for k in _INT_COLUMNS:
            if k in row:
                out[k] = int(row[k])
        for k in _FLOAT_COLUMNS:
            if k in row:
                out[k] = float(row[k])
        if "seeds" in row:
            out["seeds"] = tuple(None if s == "?" else int(s) for s in row["seeds"].split(";") if s)
        if "seed_means" in row:
            out["seed_means"] = tuple(float(s) for s in row["seed_means"].split(";") if s)
        if "within_seed_noise" in row:
            out["within_seed_noise"] = row["within_seed_noise"] == "true"
    except ValueError as exc:
        raise DataError(f"{path} line {line}: {exc}") from None
    return out


def read_compare_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read ``compare.csv`` back into rows equal to :meth:`GroupSummary.row` (ints, floats, tuples)."""
    return [_typed(r, Path(path), i) for i, r in enumerate(_read_csv(path, COMPARE_COLUMNS), start=2)]


def read_tests_csv(path: str | Path) -> list[dict[str, Any]]:
    """Read ``tests.csv`` back into rows equal to :meth:`PairedTest.row`."""
    return [_typed(r, Path(path), i) for i, r in enumerate(_read_csv(path, TESTS_COLUMNS), start=2)]


# ------------------------------------------------------------------------------------------ formatting


def _num(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _p(value: float) -> str:
    """p-value text: three decimals, scientific below 0.001, n/a when not tested."""
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _cell_text(comp: Comparison, group: str, split: str, structure: str, metric: str, pm: str = "±") -> str:
    s = comp.summary(group, split, structure, metric)
    return f"{_num(s.mean)} {pm} {_num(s.std)} [{_num(s.ci_low)}, {_num(s.ci_high)}]"


def _masks(comp: Comparison) -> str:
    return "raw network masks" if comp.raw else "masks as 'predict' writes them (post-processed where decided)"


def _headline(comp: Comparison) -> tuple[str, str]:
    """The split and metric of the headline tables: test Dice when compared, else the first of each."""
    split = "test" if "test" in comp.splits else comp.splits[0]
    metric = "dice" if "dice" in comp.metrics else comp.metrics[0]
    return split, metric


def _metric_title(metric: str) -> str:
    label, unit, _, higher = METRICS[metric]
    return f"{label} ({unit}, {'higher' if higher else 'lower'} is better)"


# ------------------------------------------------------------------------------------------- Markdown


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def render_markdown(comp: Comparison) -> str:
    """compare.md: per split, a table per metric (groups x structures) and a tests table per metric."""
    lines = [
        f"# Comparison on {comp.domain} ({comp.checkpoint} checkpoint)",
        "",
        f"Reference group: **{comp.reference}**. Scores on the {_masks(comp)}.",
        "",
        "Cells: mean ± std over training seeds of the per-seed mean over patients "
        f"[95% bootstrap CI over patients of the seed-averaged scores, {comp.n_resamples} resamples, "
        f"seed {comp.seed}]. Tests: two-sided Wilcoxon signed-rank over patients, group - reference, on "
        "seed-averaged scores. Target images: what each method trained on from the target domain (none: a "
        "single-source method; unlabelled: images without their labels). mean: each patient's mean over the "
        "structures (undefined for a patient where one structure's value is, e.g. the distance to a missed one).",
        "",
        "| group | target images | seeds | runs |",
        "|---|---|---|---|",
    ]
    for g in comp.groups:
        runs = [r for r in comp.runs if r.group == g]
        seeds = ", ".join("?" if s is None else str(s) for s in comp.seeds(g))
        lines.append(
            f"| {g} | {comp.target_images(g) or '?'} | {seeds} | " + "<br>".join(f"`{r.path}`" for r in runs) + " |"
        )
    for split in comp.splits:
        lines += ["", f"## {comp.domain} {split} split"]
        for metric in comp.metrics:
            rows = [
                [
                    g + (" (ref)" if g == comp.reference else ""),
                    comp.target_images(g) or "?",
                    str(len(comp.seeds(g))),
                    *(_cell_text(comp, g, split, s, metric) for s in comp.structures),
                ]
                for g in comp.groups
            ]
            lines += ["", f"### {_metric_title(metric)}", ""]
            lines += _md_table(["group", "target images", "seeds", *comp.structures], rows)
        for metric in comp.metrics:
            label, unit = METRICS[metric][:2]
            rows = []
            for g in comp.groups[1:]:
                for s in comp.structures:
                    t = comp.test(g, split, s, metric)
                    if t is None:
                        continue
                    note = "; ".join(x for x in ("within seed noise" if t.within_seed_noise else "", t.note) if x)
                    rows.append(
                        [
                            g,
                            t.reference,
                            s,
                            _num(t.mean_diff) if not math.isfinite(t.mean_diff) else f"{t.mean_diff:+.2f}",
                            _p(t.p_value),
                            str(t.n_patients),
                            note,
                        ]
                    )
            if rows:
                lines += ["", f"### Tests, {label} ({split})", ""]
                lines += _md_table(["group", "vs", "structure", f"Δ {label} ({unit})", "p", "n", "note"], rows)
    if comp.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in comp.notes]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- LaTeX

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped (``_`` -> ``\\_``, ``%`` -> ``\\%``, ...)."""
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(text))


def render_tex(comp: Comparison) -> str:
    """compare.tex: a booktabs table of the headline split and metric (test Dice), for a paper."""
    split, metric = _headline(comp)
    label, unit = METRICS[metric][:2]
    lines = [
        "% generated by udavae compare; needs \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{latex_escape(label)} ({latex_escape(unit)}) on the {latex_escape(comp.domain)} "
        f"{latex_escape(split)} split ({latex_escape(comp.checkpoint)} checkpoint): mean $\\pm$ std over training "
        "seeds, [95\\% bootstrap CI over patients]. $^{*}$: $p < 0.05$, two-sided Wilcoxon signed-rank test over "
        f"patients against {latex_escape(comp.reference)}. Target: target-domain images used in training "
        "(none: single-source; unlabelled: images only).}",
        "\\label{tab:compare}",
        "\\begin{tabular}{llc" + "c" * len(comp.structures) + "}",
        "\\toprule",
        "Method & Target & Seeds & " + " & ".join(latex_escape(s) for s in comp.structures) + " \\\\",
        "\\midrule",
    ]
    for g in comp.groups:
        cells = []
        for s in comp.structures:
            sm = comp.summary(g, split, s, metric)
            t = comp.test(g, split, s, metric)
            star = "^{*}" if t is not None and math.isfinite(t.p_value) and t.p_value < 0.05 else ""
            std = f" \\pm {_num(sm.std)}" if math.isfinite(sm.std) else ""
            cells.append(f"${_num(sm.mean)}{std}{star}$ {{\\scriptsize [{_num(sm.ci_low)}, {_num(sm.ci_high)}]}}")
        target = latex_escape(comp.target_images(g) or "?")
        lines.append(f"{latex_escape(g)} & {target} & {len(comp.seeds(g))} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- JSON


def _plain(obj: Any) -> Any:
    """JSON-safe copy: NaN -> null, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def comparison_json(comp: Comparison) -> dict[str, Any]:
    """Everything in one machine-readable object (compare.json): settings, runs, summaries, tests, notes."""
    files: dict[Path, dict[str, str]] = {}
    for sc in comp.scores:
        files.setdefault(sc.run.path, {})[sc.split] = str(sc.file)
    return _plain(
        {
            "udavae_version": udavae.__version__,
            "settings": {
                "domain": comp.domain,
                "reference": comp.reference,
                "splits": comp.splits,
                "checkpoint": comp.checkpoint,
                "raw": comp.raw,
                "metrics": comp.metrics,
                "units": {m: METRICS[m][1] for m in comp.metrics},
                "bootstrap_resamples": comp.n_resamples,
                "bootstrap_seed": comp.seed,
                "confidence": 0.95,
            },
            "groups": [
                {
                    "name": g,
                    "target_images": comp.target_images(g),
                    "seeds": comp.seeds(g),
                    "runs": [
                        {
                            "path": r.path,
                            "seed": r.seed,
                            "group_from": r.group_from,
                            "preset": r.preset,
                            "method": r.method,
                            "files": files.get(r.path, {}),
                        }
                        for r in comp.runs
                        if r.group == g
                    ],
                }
                for g in comp.groups
            ],
            "summaries": [{**s.row(), "patients": s.scores_by_patient()} for s in comp.summaries],
            "tests": [t.row() for t in comp.tests],
            "notes": comp.notes,
        }
    )


# -------------------------------------------------------------------------------------------- figures


def box_figure(comp: Comparison, split: str, metric: str, jitter_seed: int = 0) -> plt.Figure:
    """Box plots with jittered patient points: one panel per structure, one box per group.

    Each point is one patient's score averaged over the group's seeds; the box shows their quartiles (whiskers
    1.5 IQR), the diamond their mean. Jitter is drawn from a fixed seed so the figure is reproducible.
    """
    label, unit, _, higher = METRICS[metric]
    n_struct, n_groups = len(comp.structures), len(comp.groups)
    width = max(3.2, 0.9 * n_groups + 1.2)
    fig, axes = plt.subplots(1, n_struct, figsize=(width * n_struct, 4.6), squeeze=False, layout="constrained")
    rng = np.random.default_rng(jitter_seed)
    long_names = any(len(g) > 9 for g in comp.groups) or n_groups > 4
    for ax, structure in zip(axes[0], comp.structures):
        data, ticks = [], []
        for g in comp.groups:
            s = comp.summary(g, split, structure, metric)
            vals = s.patient_scores[np.isfinite(s.patient_scores)]
            data.append(vals)
            ticks.append(f"{g}\n(n={vals.size})")
        positions = np.arange(1, n_groups + 1)
        box = ax.boxplot(
            [d if d.size else [np.nan] for d in data],
            positions=positions,
            widths=0.55,
            showfliers=False,
            patch_artist=True,
            showmeans=True,
            meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 5},
            medianprops={"color": "black", "linewidth": 1.4},
        )
        for i, (patch, vals) in enumerate(zip(box["boxes"], data)):
            color = _GROUP_COLORS[i % len(_GROUP_COLORS)]
            patch.set_facecolor((*color, 0.25))
            patch.set_edgecolor(color)
            x = positions[i] + rng.uniform(-0.16, 0.16, size=vals.size)
            ax.scatter(x, vals, s=16, color=color, alpha=0.8, edgecolors="white", linewidths=0.4, zorder=3)
        ax.set_xticks(
            positions, ticks, rotation=30 if long_names else 0, ha="right" if long_names else "center", fontsize=8
        )
        ax.set_title(structure, fontsize=11)
        ax.set_ylabel(f"{label} ({unit})")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    key = [
        Line2D([], [], ls="", marker="o", ms=5, color="grey", label="patient (mean over seeds)"),
        Line2D([], [], color="black", lw=1.4, label="median"),
        Line2D([], [], ls="", marker="D", ms=5, mfc="white", mec="black", label="mean"),
        Patch(facecolor="lightgrey", edgecolor="grey", label="quartiles (whiskers: 1.5 IQR)"),
    ]
    fig.legend(handles=key, loc="outside lower center", ncol=4, frameon=False, fontsize=8)
    fig.suptitle(
        f"{comp.domain} {split} split, {comp.checkpoint} checkpoint: {label} per patient "
        f"(mean over seeds; {'higher' if higher else 'lower'} is better)",
        fontsize=11,
    )
    return fig


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)


def _save(fig: plt.Figure, path: Path) -> Path:
    try:
        atomic_write(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------- the terminal


def terminal_table(comp: Comparison) -> str:
    """The headline table for the terminal: test-split Dice mean ± std [CI] and p against the reference."""
    split, metric = _headline(comp)
    label, unit = METRICS[metric][:2]
    cells = {
        g: [
            (
                _cell_text(comp, g, split, s, metric),
                "ref" if g == comp.reference else _p(getattr(comp.test(g, split, s, metric), "p_value", math.nan)),
            )
            for s in comp.structures
        ]
        for g in comp.groups
    }
    gw = max(5, *(len(g) for g in comp.groups))
    cw = max(len(s) for s in comp.structures) if comp.structures else 0
    cw = max(cw, *(len(c) for row in cells.values() for c, _ in row)) if comp.structures else 0
    pw = 7 if len(comp.groups) > 1 else 0  # a lone group is tested against nothing: no p column
    tw = max(len("target images"), *(len(comp.target_images(g) or "?") for g in comp.groups))
    head = f"{'group':<{gw}}  {'target images':<{tw}}  seeds  " + "  ".join(
        f"{s:<{cw}}  {'p' if pw else '':<{pw}}" for s in comp.structures
    )
    lines = [
        f"{comp.domain} {split} split, {label} {unit} ({comp.checkpoint} checkpoint): mean ± std over seeds "
        "[95% CI over patients]" + (f", p: Wilcoxon over patients vs {comp.reference}" if pw else ""),
        head,
        "-" * len(head),
    ]
    for g in comp.groups:
        lines.append(
            f"{g:<{gw}}  {comp.target_images(g) or '?':<{tw}}  {len(comp.seeds(g)):>5}  "
            + "  ".join(f"{c:<{cw}}  {p if pw else '':<{pw}}" for c, p in cells[g]).rstrip()
        )
    return "\n".join(line.rstrip() for line in lines)


# -------------------------------------------------------------------------------------------- writing


def parse_formats(text: str) -> list[str]:
    """``"md,csv,tex,png"`` -> the list, refusing unknown formats."""
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS and f != "json"]
    if unknown:
        raise UserError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    return formats


def write_outputs(comp: Comparison, out: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write the chosen formats (and always compare.json) into ``out``; return the files written.

    md: compare.md; csv: compare.csv and tests.csv; tex: compare.tex; png: ``box_<split>_<metric>.png`` for
    every split and metric.
    """
    out = ensure_writable_dir(out)
    written = []
    if "md" in formats:
        written.append(write_text(out / "compare.md", render_markdown(comp)))
    if "csv" in formats:
        written.append(write_text(out / "compare.csv", _csv_text(COMPARE_COLUMNS, [s.row() for s in comp.summaries])))
        written.append(write_text(out / "tests.csv", _csv_text(TESTS_COLUMNS, [t.row() for t in comp.tests])))
    if "tex" in formats:
        written.append(write_text(out / "compare.tex", render_tex(comp)))
    written.append(write_json(out / "compare.json", comparison_json(comp)))
    if "png" in formats and comp.structures:
        for split in comp.splits:
            for metric in comp.metrics:
                path = out / f"box_{_safe(split)}_{metric}.png"
                written.append(_save(box_figure(comp, split, metric, jitter_seed=comp.seed), path))
    return written

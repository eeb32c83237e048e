"""One self-contained HTML page per run or per prediction folder: what a person reviews masks with.

``udavae report RUN --html`` writes ``RUN/report/report.html``: the model, the metrics tables of every
``RUN/eval/*`` folder (``summary.json``; per case from ``metrics.csv``), their quality control (``qc.csv``), the
training curves, and per case of the target's ``--split`` an overlay viewer (slice slider, mask on/off,
reference outline on/off, opacity). ``udavae predict ... --html`` writes ``OUT/report.html`` for the masks it
wrote (with ``qc.csv`` and, for DICOM input, ``series.csv``).

Cases are shown in review order: as ``qc.csv`` orders them (doubtful first, each marked with its reason, then
by ``qc_score``, worst first); without ``qc.csv`` by mean Dice, lowest first; else in input order. At most
``max_cases`` cases (default :data:`MAX_CASES`) get a viewer, the first in that order; with the viewer's limits
(:mod:`udavae.reports.viewer`) a page of 40 cases stays under 20 MB. The page opens offline: style and script
are inline, every image is a ``data:`` URI, nothing is fetched.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from udavae.fileio import ensure_writable_dir, write_text
from udavae.reports.viewer import encode_case, legend, render_page

__all__ = ["MAX_CASES", "REPORT_FILE", "prediction_report", "run_report"]

#: Cases given a viewer by default (the first in review order).
MAX_CASES = 40
REPORT_FILE = "report.html"
_METRICS = (("dice", "Dice %", 100.0), ("iou", "IoU %", 100.0), ("assd", "ASSD mm", 1.0))
_METRICS += (("hd95", "HD95 mm", 1.0), ("hd", "HD mm", 1.0))
_NAV = '<p class="meta"><a href="#metrics">metrics</a> | <a href="#cases">cases</a> | <a href="#curves">curves</a></p>'


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _finite(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def _num(value: Any, digits: int = 2, scale: float = 1.0) -> str:
    """``value * scale`` with ``digits`` decimals, or ``-`` when it is not a finite number."""
    return f"{scale * float(value):.{digits}f}" if _finite(value) else "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1, marked: Sequence[bool] = ()) -> str:
    """An HTML table (escaped); the first ``left`` columns left-aligned, ``marked`` rows shown as doubtful."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>' for i, h in enumerate(header))
    body = []
    for j, row in enumerate(rows):
        cls = ' class="doubtful"' if j < len(marked) and marked[j] else ""
        cells = "".join(f'<td class="{"l" if i < left else ""}">{_esc(v)}</td>' for i, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def qc_table(rows: Sequence[Mapping[str, Any]], structures: Sequence[str]) -> str:
    """The quality-control table in ``qc.csv`` order (worst first), doubtful rows marked."""
    dice = any("dice_mean" in r for r in rows)
    header = ["case", "doubtful", "reason", "qc_score", "agreement", "plausibility", "entropy"]
    header += [f"{s} ml" for s in structures] + (["mean Dice %"] if dice else [])
    body = []
    for r in rows:
        cells = [r.get("case", ""), "yes" if r.get("doubtful") else "", r.get("reason") or ""]
        cells += [_num(r.get(k)) for k in ("qc_score", "agreement", "plausibility", "entropy")]
        cells += [_num(r.get(f"volume_{s}_ml"), 1) for s in structures]
        cells += [_num(r.get("dice_mean"), 1, 100)] if dice else []
        body.append(cells)
    return _table(header, body, left=3, marked=[bool(r.get("doubtful")) for r in rows])


def case_card(
    payload: Mapping[str, Any], qc: Mapping[str, Any] | None, dice: Mapping[str, float] | None, about: str = ""
) -> str:
    """A case's card: its name, the doubtful mark and reason, its scores (``about``: a line on the scan), and the
    viewer's placeholder."""
    doubtful = bool(qc and qc.get("doubtful"))
    badge = '<span class="badge">doubtful</span>' if doubtful else ""
    parts = [f'<div class="case{" doubtful" if doubtful else ""}"><h3>{_esc(payload["id"])}{badge}</h3>']
    if about:
        parts.append(f'<p class="scores">{_esc(about)}</p>')
    if qc and doubtful:
        parts.append(f'<p class="reason">{_esc(qc.get("reason") or "")}</p>')
    scores = [f"{k} {_num(qc.get(k))}" for k in ("qc_score", "agreement", "plausibility") if qc and k in qc]
    if dice:
        scores.append("Dice " + ", ".join(f"{s} {_num(d, 1, 100)}" for s, d in dice.items()))
    if scores:
        parts.append(f'<p class="scores">{_esc(" | ".join(scores))}</p>')
    parts.append(f'<div class="udv" id="udv-{_esc(payload["key"])}"></div></div>')
    return "".join(parts)


def order_cases(
    ids: Sequence[str], qc: Sequence[Mapping[str, Any]], dice: Mapping[str, Mapping[str, float]]
) -> list[str]:
    """``ids`` in review order: as ``qc.csv`` ranks them, else lowest mean Dice first, else as given (ids the
    ranking does not know last)."""
    from udavae.evaluation.qc import worst_first

    if qc:
        rank = {str(r.get("case")): i for i, r in enumerate(worst_first(qc))}
    else:
        means = {c: float(np.nanmean(list(d.values()))) for c, d in dice.items() if d}
        rank = {c: i for i, c in enumerate(sorted(means, key=lambda c: means[c]))}
    position = {c: i for i, c in enumerate(ids)}
    return sorted(ids, key=lambda c: (rank.get(c, len(rank)), position[c]))


def case_dice(path: Path) -> dict[str, dict[str, float]]:
    """Case -> structure -> Dice, from an evaluation's ``metrics.csv`` ({} when absent or unreadable)."""
    out: dict[str, dict[str, float]] = {}
    try:
        with open(path, encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                out.setdefault(row["case"], {})[row["structure"]] = float(row["dice"])
    except (OSError, KeyError, TypeError, ValueError, csv.Error):
        return {}
    return out


def _read_qc(path: Path) -> list[dict[str, Any]]:
    """The rows of ``qc.csv`` ([] when absent or unreadable: the report shows what it can)."""
    from udavae.errors import UserError
    from udavae.evaluation.qc import read_qc_csv

    try:
        return read_qc_csv(path) if path.is_file() else []
    except UserError:
        return []


def eval_section(folder: Path, structures: Sequence[str]) -> str:
    """One evaluation folder: the summary table, the raw masks' Dice, quality control and per-case Dice."""
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        per_structure = summary["structures"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f'<h3>{_esc(folder.name)}</h3><p class="note">summary.json unreadable ({_esc(exc)})</p>'
    title = (
        f"{summary.get('domain', '?')}/{summary.get('split', '?')}: {summary.get('n_cases', '?')} cases, "
        f"{summary.get('checkpoint', '?')} checkpoint (epoch {summary.get('epoch', '?')})"
    )
    rows = []
    for s in [s for s in structures if s in per_structure] or list(per_structure):
        m = per_structure[s]
        rows.append([s] + [f"{_num(m[k]['mean'], 2, f)} ± {_num(m[k]['std'], 2, f)}" for k, _, f in _METRICS])
    parts = [f"<h3>{_esc(folder.name)}: {_esc(title)}</h3>", _table(["structure"] + [h for _, h, _ in _METRICS], rows)]
    notes = [f"mean Dice {_num(summary.get('mean_dice'), 2, 100)} %"]
    raw = summary.get("raw") or {}
    if raw.get("structures"):
        notes.append(
            "raw network masks (before post-processing): Dice "
            + ", ".join(f"{s} {_num(v['dice']['mean'], 2, 100)}" for s, v in raw["structures"].items())
        )
    parts.append(f'<p class="note">{_esc("; ".join(notes))}</p>')
    qc = _read_qc(folder / "qc.csv")
    if qc:
        n = sum(bool(r.get("doubtful")) for r in qc)
        parts.append(f"<details><summary>quality control (qc.csv): {n} of {len(qc)} doubtful, worst first</summary>")
        if summary.get("qc_check"):
            from udavae.evaluation.qc import describe_qc_check

            parts.append(f'<p class="note">{_esc(describe_qc_check(summary["qc_check"]))}</p>')
        parts.append(qc_table(qc, structures) + "</details>")
    dice = case_dice(folder / "metrics.csv")
    if dice:
        order = order_cases(list(dice), qc, dice)
        body = [[c] + [_num(dice[c].get(s), 1, 100) for s in structures] for c in order]
        parts.append(f"<details><summary>Dice % per case ({len(dice)}), worst first</summary>")
        parts.append(_table(["case", *structures], body) + "</details>")
    return "".join(parts)


def _log_rows(run: Path) -> list[dict[str, Any]]:
    """The training log's rows, from ``log.jsonl`` or else ``log.csv`` ([] when neither is readable)."""
    from udavae.layout import LOG_CSV, LOG_JSONL

    try:
        if (run / LOG_JSONL).is_file():
            lines = (run / LOG_JSONL).read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines if line.strip()]
        if (run / LOG_CSV).is_file():
            with open(run / LOG_CSV, encoding="utf-8", newline="") as f:
                return [{k: float(v) if _finite(v) else None for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError, csv.Error):
        pass
    return []


def curves_section(run: Path, title: str) -> str:
    """The training curves (losses, validation Dice), the figure of ``udavae report`` as an embedded PNG."""
    from udavae.reports.figures import plt, training_curves  # figures selects the Agg backend first

    rows = [r for r in _log_rows(run) if r.get("epoch") is not None]
    if not rows:
        return '<h2 id="curves">Training curves</h2><p class="note">no training log (log.jsonl, log.csv)</p>'
    fig = training_curves(rows, title)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=90, format="png")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    image = f'<img class="curves" alt="training curves" src="data:image/png;base64,{data}">'
    return f'<h2 id="curves">Training curves</h2>{image}'


def _cases_section(cards: Sequence[str], structures: Sequence[str], reference: bool, note: str) -> str:
    head = f'<h2 id="cases">Cases</h2><p class="note">{_esc(note)}</p>'
    if not cards:
        return head
    return head + legend(structures, reference) + f'<div class="cases">{"".join(cards)}</div>'


def _write(path: Path, title: str, body: Sequence[str], cases: Sequence[Mapping[str, Any]]) -> Path:
    from udavae import __version__

    stamp = f'<p class="meta">written by udavae {__version__} on {time.strftime("%Y-%m-%d %H:%M")}</p>'
    ensure_writable_dir(path.parent)
    return write_text(path, render_page(title, "".join([*body, stamp]), cases))


def _structures(info: Any) -> list[str]:
    names = info.labels.class_names
    return [names[i] for i in sorted(names) if i > 0]


def run_report(
    run: str | Path,
    out: str | Path | None = None,
    split: str = "test",
    checkpoint: str = "selected",
    device: str = "auto",
    max_cases: int = MAX_CASES,
) -> Path:
    """Write the HTML report of a model folder (default ``RUN/report/report.html``); returns its path.

    The viewers need the weights and the dataset; without them the page still holds the tables and curves,
    with a note saying why there is no viewer.
    """
    from udavae.engine.model_folder import checkpoint_path, read_model_folder, read_selection, resolve_checkpoint
    from udavae.layout import EVAL_DIR, report_folder

    run = Path(run)
    cfg, info = read_model_folder(run)
    structures = _structures(info)
    name = resolve_checkpoint(run, checkpoint)
    selection = read_selection(run) or {}
    meta = [
        f"method {cfg.method.name}",
        f"{info.source} (labelled) -> {info.target}",
        f"dataset {info.dataset_path}",
        f"checkpoint {name}" + (f" (chosen by {selection['rule']})" if selection.get("rule") else ""),
    ]
    body = [f"<h1>udavae report: {_esc(run.name)}</h1>", f'<p class="meta">{_esc(run.resolve())}</p>']
    body.append(f'<p class="meta">{_esc(" | ".join(meta))}</p>{_NAV}<h2 id="metrics">Metrics</h2>')
    folders = sorted(p for p in (run / EVAL_DIR).glob("*") if (p / "summary.json").is_file())
    body += [eval_section(f, structures) for f in folders] or [
        '<p class="note">no evaluation yet (udavae evaluate)</p>'
    ]
    folder = run / EVAL_DIR / f"{info.target}_{split}_{name}"
    qc, dice = _read_qc(folder / "qc.csv"), case_dice(folder / "metrics.csv")
    cases: list[dict[str, Any]] = []
    cards: list[str] = []
    if not checkpoint_path(run, name).is_file():
        note = f"no case viewer: the weights {checkpoint_path(run, name)} are not in the run folder"
    else:
        note = _run_cases(run, info, split, checkpoint, device, max_cases, qc, dice, cases, cards)
    body.append(_cases_section(cards, structures, any(c["reference"] is not None for c in cases), note))
    body.append(curves_section(run, f"training curves: {run.name} ({cfg.method.name})"))
    return _write(Path(out) if out else report_folder(run) / REPORT_FILE, f"udavae report: {run.name}", body, cases)


def _run_cases(
    run: Path,
    info: Any,
    split: str,
    checkpoint: str,
    device: str,
    max_cases: int,
    qc: list[dict[str, Any]],
    dice: dict[str, dict[str, float]],
    cases: list[dict[str, Any]],
    cards: list[str],
) -> str:
    """Predict the target's ``split`` cases (review order, at most ``max_cases``) into viewers; return the note."""
    from udavae.api import load
    from udavae.data.nifti import load_volume
    from udavae.data.spec import DatasetSpec
    from udavae.errors import UserError

    try:
        spec = DatasetSpec.load(info.dataset_path)
        split_cases = {c.id: c for c in spec.split(info.target, split)}
    except (UserError, KeyError) as exc:
        return f"no case viewer: the {info.target}/{split} cases cannot be read ({exc})"
    model = load(run, checkpoint, device)
    order = order_cases(list(split_cases), qc, dice)
    qc_of = {str(r.get("case")): r for r in qc}
    for i, cid in enumerate(order[:max_cases]):
        case = split_cases[cid]
        vol = load_volume(spec.path(case.image))
        ref = None
        if case.label is not None:
            label = load_volume(spec.path(case.label), dtype=None)
            ref = info.labels.to_classes(label.data, source=label.path)
        pred = model.predict(vol.data, vol.spacing).classes
        payload = encode_case(f"c{i}", cid, vol.data, vol.spacing, pred, info.num_classes, ref)
        cases.append(payload)
        cards.append(case_card(payload, qc_of.get(cid), dice.get(cid)))
    how = "qc.csv: doubtful first, then by qc_score" if qc else "mean Dice" if dice else "dataset order"
    more = f"; {len(order) - max_cases} more without a viewer (--html-cases)" if len(order) > max_cases else ""
    return (
        f"{info.target}/{split}, {len(cards)} case(s) worst first ({how}), masks as 'udavae predict' writes them{more}"
    )


def prediction_report(result: Any, model: Any, out: str | Path | None = None, max_cases: int = MAX_CASES) -> Path:
    """Write the HTML report of what ``predict`` wrote (default ``OUT/report.html``); returns its path.

    Args:
        result: the :class:`udavae.engine.predict.PredictResult`.
        model: the loaded model (``TrainedModel``) that predicted.
    """
    from udavae.data.nifti import load_volume

    info = model.info
    structures = _structures(info)
    qc = list(result.qc)
    body = [f"<h1>udavae predictions: {_esc(Path(result.out).name)}</h1>"]
    where = getattr(model, "source", None) or model.run  # a model zip, or the model folder
    meta = [f"{len(result.masks)} mask(s) in {result.out}", f"model {where} ({model.checkpoint} checkpoint)"]
    if result.postprocessing is not None:
        meta.append(result.postprocessing.describe())
    body.append(f'<p class="meta">{_esc(" | ".join(meta))}</p>')
    if qc:
        n = sum(bool(r.get("doubtful")) for r in qc)
        body += [f"<h2>Quality control: {n} of {len(qc)} doubtful, worst first</h2>", qc_table(qc, structures)]
    series = Path(result.out) / "series.csv"
    if series.is_file() and any(hasattr(f, "uid") for f in result.inputs):
        with open(series, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        body += ["<h2>DICOM series</h2>", _table(rows[0], rows[1:], left=len(rows[0]))]
    mask_of = {Path(m).name.removesuffix(".nii.gz"): (Path(m), f) for m, f in zip(result.masks, result.inputs)}
    order = order_cases(list(mask_of), qc, {})
    qc_of = {str(r.get("case")): r for r in qc}
    cases, cards = [], []
    for i, cid in enumerate(order[:max_cases]):
        mask, source = mask_of[cid]
        vol = source.load() if hasattr(source, "load") else load_volume(source)
        codes = load_volume(mask, dtype=None)
        payload = encode_case(
            f"c{i}", cid, vol.data, vol.spacing, info.labels.to_classes(codes.data, source=mask), info.num_classes
        )
        cases.append(payload)
        # a DICOM series: its patient id and descriptions
        about = " | ".join(v for k, v in getattr(source, "info", ()) if v and k != "modality")
        cards.append(case_card(payload, qc_of.get(cid), None, about))
    how = "qc.csv: doubtful first, then by qc_score" if qc else "input order"
    more = f"; {len(order) - max_cases} more without a viewer (--html-cases)" if len(order) > max_cases else ""
    body.append(_cases_section(cards, structures, False, f"{len(cards)} case(s) in review order ({how}){more}"))
    path = Path(out) if out else Path(result.out) / REPORT_FILE
    return _write(path, f"udavae predictions: {Path(result.out).name}", body, cases)

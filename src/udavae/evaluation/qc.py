"""Per-case quality control without labels: which predicted masks a person should look at first.

Each case gets the label-free scores of :mod:`udavae.evaluation.labelfree` (computed by the engine), a single
``qc_score`` in [0, 1] (the test-time agreement; higher is better)
and a ``doubtful`` flag with the rule behind it. ``qc.csv`` lists the cases worst first. docs/selection.md
reports how well these scores track the true Dice on MS-CMRSeg.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from udavae.fileio import write_text

__all__ = [
    "DoubtfulRule",
    "describe_qc_check",
    "doubtful_lines",
    "qc_check",
    "qc_rows",
    "qc_score",
    "read_qc_csv",
    "worst_first",
    "write_qc_csv",
]


@dataclass(frozen=True)
class DoubtfulRule:
    """When a case is flagged ``doubtful`` (any condition suffices).

    Absolute levels of the scores depend on the domain and the model (on MS-CMRSeg LGE the mean entropy of good
    and bad masks alike lies in 0.15-0.31), so the main condition is relative: the worst ``worst_share`` of the
    cases scored together, by ``qc_score``. Absolute conditions catch what is wrong in any batch.

    Attributes:
        worst_share: share of the cases, lowest ``qc_score`` first, that are flagged (at least one when 4 or more
            cases are scored together; none for fewer).
        min_agreement: flag a mask that changes more than this under flips / intensity changes (mean Dice).
        min_plausibility: flag a mask with fewer plausible slices than this share (every MS-CMRSeg source label
            volume scores above it).
    """

    worst_share: float = 0.25
    min_agreement: float = 0.5
    min_plausibility: float = 0.1

    def reasons(self, row: Mapping[str, Any], structures: Sequence[str]) -> list[str]:
        """The absolute reasons why ``row`` is doubtful ([] when there is none)."""
        out = []
        p, a = row.get("plausibility"), row.get("agreement")
        if _finite(a) and a < self.min_agreement:
            out.append(f"agreement {a:.2f} < {self.min_agreement}")
        if _finite(p) and p < self.min_plausibility:
            out.append(f"plausibility {p:.2f} < {self.min_plausibility}")
        out += [f"no {s} predicted" for s in structures if row.get(f"volume_{s}_ml") == 0]
        return out

    def describe(self) -> str:
        """The rule in words."""
        return (
            f"doubtful: the worst {self.worst_share:.0%} of the cases by qc_score, or agreement < "
            f"{self.min_agreement}, plausibility < {self.min_plausibility} or a structure missing"
        )


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def qc_score(row: Mapping[str, Any]) -> float:
    """The case's test-time agreement; its plausibility when no agreement was computed (NaN when neither was).

    Agreement alone ranks cases better than its mean with plausibility: on MS-CMRSeg plausibility separates
    failed masks from good ones but not good ones from slightly worse ones, and in the mean it diluted the
    ranking on strong networks (docs/selection.md). Plausibility still flags gross failures on its own
    (:class:`DoubtfulRule`).
    """
    for key in ("agreement", "plausibility"):
        if _finite(row.get(key)):
            return float(row[key])
    return math.nan


def qc_rows(
    rows: Sequence[Mapping[str, Any]], structures: Sequence[str], rule: DoubtfulRule | None = None
) -> list[dict[str, Any]]:
    """Rows with ``qc_score``, ``doubtful`` and ``reason`` added, sorted worst first (doubtful, then score)."""
    rule = rule or DoubtfulRule()
    scored = [{**row, "qc_score": qc_score(row)} for row in rows]
    order = sorted(range(len(scored)), key=lambda i: scored[i]["qc_score"] if _finite(scored[i]["qc_score"]) else -1)
    n_worst = max(1, round(rule.worst_share * len(scored))) if len(scored) >= 4 else 0
    worst = set(order[:n_worst])
    out = []
    for i, row in enumerate(scored):
        reasons = rule.reasons(row, structures)
        if i in worst:
            reasons.insert(0, f"qc_score {row['qc_score']:.2f} among the worst {rule.worst_share:.0%} of {len(scored)}")
        out.append({**row, "doubtful": bool(reasons), "reason": "; ".join(reasons)})
    return worst_first(out)


def worst_first(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows in ``qc.csv`` order: the doubtful ones first, then by ``qc_score``, lowest (worst) first."""
    return sorted(
        (dict(r) for r in rows),
        key=lambda r: (not r.get("doubtful"), r["qc_score"] if _finite(r.get("qc_score")) else -1.0),
    )


def read_qc_csv(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``qc.csv``, numbers as floats and ``doubtful`` as a bool, worst first.

    Raises:
        UserError: the file cannot be read or is not a ``qc.csv`` (no ``case``/``doubtful`` column).
    """
    from udavae.errors import UserError

    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if rows and not {"case", "doubtful"} <= set(rows[0]):
        raise UserError(f"{path} is not a qc.csv written by udavae (no 'case' or 'doubtful' column)")
    out = []
    for row in rows:
        parsed: dict[str, Any] = {}
        for k, v in row.items():
            if k == "doubtful":
                parsed[k] = str(v).strip().lower() == "true"
            elif k in ("case", "reason", "input", "mask"):
                parsed[k] = v or ""
            else:
                try:
                    parsed[k] = float(v)
                except (TypeError, ValueError):
                    parsed[k] = v
        out.append(parsed)
    return worst_first(out)


def qc_check(rows: Sequence[Mapping[str, Any]], worst_share: float = DoubtfulRule.worst_share) -> dict[str, Any]:
    """How well the label-free QC tracked the true Dice, on cases that have labels (``qc.csv`` rows with
    ``dice_mean``): what a user measures on a few labelled cases before trusting the flag on unlabelled ones.

    Returns:
        ``n`` (cases with a finite score and Dice), ``spearman`` (rank correlation of ``qc_score`` with the case
        Dice; NaN under 3 cases or a constant column), ``worst_k`` (the ``worst_share`` of the cases with the lowest
        Dice, at least 1: 10 of 40) and ``worst_caught`` (how many of them are flagged ``doubtful``).
    """
    from scipy.stats import spearmanr

    ok = [r for r in rows if _finite(r.get("qc_score")) and _finite(r.get("dice_mean"))]
    n = len(ok)
    rho = math.nan
    if n >= 3 and len({r["qc_score"] for r in ok}) > 1 and len({r["dice_mean"] for r in ok}) > 1:
        rho = float(spearmanr([r["qc_score"] for r in ok], [r["dice_mean"] for r in ok]).statistic)
    k = max(1, round(worst_share * n)) if n else 0
    worst = sorted(ok, key=lambda r: r["dice_mean"])[:k]
    return {"n": n, "spearman": rho, "worst_k": k, "worst_caught": sum(bool(r.get("doubtful")) for r in worst)}


def describe_qc_check(check: dict[str, Any]) -> str:
    """One line: how well the label-free QC tracked these labelled cases' Dice (``qc_check`` of summary.json)."""
    rho = check.get("spearman")
    rho_text = f"Spearman {rho:.2f}" if _finite(rho) else "Spearman n/a"
    return (
        f"quality control against the labels: {rho_text} between qc_score and case Dice over {check['n']} cases; "
        f"doubtful flags {check['worst_caught']} of the {check['worst_k']} lowest-Dice cases"
    )


def doubtful_lines(rows: Sequence[Mapping[str, Any]], limit: int = 10) -> list[str]:
    """One line per doubtful case, worst first: ``case  qc_score 0.41; reason`` (at most ``limit``, then a count)."""
    doubtful = [r for r in worst_first(rows) if r.get("doubtful")]
    lines = []
    for r in doubtful[:limit]:
        score, reason = r.get("qc_score"), str(r.get("reason") or "")
        if not reason.startswith("qc_score"):  # the reason of the worst share already states the score
            reason = "; ".join(x for x in (f"qc_score {score:.2f}" if _finite(score) else "", reason) if x)
        lines.append(f"  {r.get('case', '?')}  {reason}".rstrip())
    if len(doubtful) > limit:
        lines.append(f"  ... and {len(doubtful) - limit} more (see qc.csv)")
    return lines


def write_qc_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``qc.csv``: one row per case, worst first (atomic)."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    write_text(path, buf.getvalue())

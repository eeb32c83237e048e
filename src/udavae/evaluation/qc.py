"""Per-case quality control without labels: which predicted masks a person should look at first.

Each case gets the label-free scores of :mod:`udavae.evaluation.labelfree` (computed by the engine), a single
``qc_score`` in [0, 1] (the mean of the test-time agreement and the anatomical plausibility; higher is better)
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

__all__ = ["DoubtfulRule", "qc_rows", "qc_score", "write_qc_csv"]


@dataclass(frozen=True)
class DoubtfulRule:
    """When a case is flagged ``doubtful`` (any condition suffices).

    Attributes:
        min_plausibility: fewer than this share of slices pass the cardiac rules.
        min_agreement: the mask changes more than this under flips / intensity changes (mean Dice).
        max_entropy: the mean normalised entropy exceeds this.
    """

    min_plausibility: float = 0.6
    min_agreement: float = 0.85
    max_entropy: float = 0.15

    def reasons(self, row: Mapping[str, Any], structures: Sequence[str]) -> list[str]:
        """Why ``row`` is doubtful ([] when it is not)."""
        out = []
        p, a, e = row.get("plausibility"), row.get("agreement"), row.get("entropy")
        if _finite(p) and p < self.min_plausibility:
            out.append(f"plausibility {p:.2f} < {self.min_plausibility}")
        if _finite(a) and a < self.min_agreement:
            out.append(f"agreement {a:.2f} < {self.min_agreement}")
        if _finite(e) and e > self.max_entropy:
            out.append(f"entropy {e:.3f} > {self.max_entropy}")
        out += [f"no {s} predicted" for s in structures if row.get(f"volume_{s}_ml") == 0]
        return out

    def describe(self) -> str:
        """The rule in words (written beside the flag)."""
        return (
            f"doubtful when plausibility < {self.min_plausibility}, agreement < {self.min_agreement}, "
            f"entropy > {self.max_entropy} or a structure is missing"
        )


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def qc_score(row: Mapping[str, Any]) -> float:
    """Mean of the finite ones of agreement and plausibility (NaN when neither is)."""
    values = [row[k] for k in ("agreement", "plausibility") if _finite(row.get(k))]
    return sum(values) / len(values) if values else math.nan


def qc_rows(
    rows: Sequence[Mapping[str, Any]], structures: Sequence[str], rule: DoubtfulRule | None = None
) -> list[dict[str, Any]]:
    """Rows with ``qc_score``, ``doubtful`` and ``reason`` added, sorted worst first (doubtful, then score)."""
    rule = rule or DoubtfulRule()
    out = []
    for row in rows:
        reasons = rule.reasons(row, structures)
        out.append({**row, "qc_score": qc_score(row), "doubtful": bool(reasons), "reason": "; ".join(reasons)})
    return sorted(out, key=lambda r: (not r["doubtful"], r["qc_score"] if _finite(r["qc_score"]) else -1.0))


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

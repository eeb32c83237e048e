"""Checkpoint selection as a named, recorded choice (``train.selection``).

A rule either follows a per-epoch score (the checkpoint of the epoch with the best score is kept as
``checkpoints/best.pt``) or names a checkpoint outright (``last``: the last epoch; ``ema``: the moving average
of the weights at the last epoch). Scores, all in the training log (``log.csv``):

=============  ================================================  =========  ====================
rule           score                                             better     needs
=============  ================================================  =========  ====================
val-dice       mean Dice on the target's labelled validation      higher     target labels
source-dice    mean Dice on held-out source cases                 higher     held-out source cases
entropy        mean prediction entropy, label-free set            lower      nothing
agreement      agreement under test-time transforms, same set     higher     nothing
plausibility   share of anatomically plausible slices, same set   higher     cardiac label map
snd            soft neighbourhood density (Saito et al. 2021)      higher     nothing
label-free     (agreement + plausibility) / 2                     higher     cardiac label map
last / ema     -                                                  -          nothing (ema: train.ema)
=============  ================================================  =========  ====================

The label-free score rules (entropy ... label-free) choose among the epochs after ``train.selection_after`` of
the schedule (half, by default): early in training a network's masks can already look plausible and agree with
themselves under test-time transforms before they are right, and the measurement picked such epochs.

``auto`` (the default) is ``val-dice`` when the target has labelled validation cases and
:data:`LABEL_FREE_DEFAULT` otherwise (``ema``, or ``last``, where the label map is not cardiac or no label-free
cases are scored); docs/selection.md gives the measurement behind that choice. The model folder's
``selection.json`` records the rule, the checkpoint and epoch it chose, the first epoch it could choose, and every
epoch's score.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LABEL_FREE_DEFAULT", "LABEL_FREE_RULES", "RULES", "Selector", "first_eligible_epoch", "resolve_rule"]

#: rule -> (log column, +1 when higher is better / -1 when lower is); None for rules naming a checkpoint.
RULES: dict[str, tuple[str, int] | None] = {
    "val-dice": ("val/dice_mean", 1),
    "source-dice": ("src/dice_mean", 1),
    "entropy": ("lf/entropy", -1),
    "agreement": ("lf/agreement", 1),
    "plausibility": ("lf/plausibility", 1),
    "snd": ("lf/snd", 1),
    "label-free": ("lf/combined", 1),
    "last": None,
    "ema": None,
}
#: Rules that follow a score of the label-free set (they wait for ``train.selection_after`` of the schedule).
LABEL_FREE_RULES = ("entropy", "agreement", "plausibility", "snd", "label-free")
#: The rule ``auto`` means when the target has no labelled validation cases (docs/selection.md).
LABEL_FREE_DEFAULT = "label-free"


def resolve_rule(rule: str, has_val: bool, has_ema: bool, cardiac: bool = True, has_labelfree: bool = True) -> str:
    """The concrete rule of ``train.selection`` (``auto`` resolved); ``ValueError`` if it cannot apply.

    Args:
        rule: ``train.selection``.
        has_val: the target has labelled validation cases.
        has_ema: the run keeps a weight average (``train.ema`` > 0).
        cardiac: the label map has LV and MYO, so plausibility (part of the ``label-free`` score) is defined.
        has_labelfree: label-free scores are computed every epoch (``train.labelfree_cases`` > 0).
    """
    if rule == "auto":
        if has_val:
            rule = "val-dice"
        elif cardiac and has_labelfree:
            rule = LABEL_FREE_DEFAULT
        else:
            rule = "ema" if has_ema else "last"
    if rule == "val-dice" and not has_val:
        raise ValueError(
            "train.selection=val-dice needs labelled validation cases of the target; this target has "
            "none (use a label-free rule: train.selection=auto, ema, last, agreement...)"
        )
    if rule == "ema" and not has_ema:
        raise ValueError("train.selection=ema needs train.ema > 0")
    if rule not in RULES:
        raise ValueError(f"train.selection={rule!r} is not one of auto, {', '.join(RULES)}")
    return rule


def first_eligible_epoch(rule: str, epochs: int, after: float) -> int:
    """The first epoch (1-based) that ``rule`` may choose: after ``after`` of ``epochs`` for label-free scores."""
    return int(epochs * after) + 1 if rule in LABEL_FREE_RULES else 1


@dataclass
class Selector:
    """Follows a rule's score over the epochs.

    Attributes:
        rule: a concrete rule (see :data:`RULES`).
        best_epoch / best_score: the chosen epoch so far and its score (score rules only).
        scores: every epoch's score, eligible or not.
        first_epoch: epochs before it are scored but not chosen (see :func:`first_eligible_epoch`).
    """

    rule: str
    best_epoch: int = -1
    best_score: float = -math.inf
    scores: list[dict[str, Any]] = field(default_factory=list)
    first_epoch: int = 1

    @property
    def column(self) -> str | None:
        """The log column the rule follows (None for ``last`` / ``ema``)."""
        entry = RULES[self.rule]
        return entry[0] if entry else None

    def update(self, epoch: int, row: dict[str, Any]) -> bool:
        """Record epoch ``epoch``'s row; True when this epoch becomes the chosen one (save it as ``best``)."""
        entry = RULES[self.rule]
        if entry is None:
            self.best_epoch = epoch
            return False
        value = row.get(entry[0])
        self.scores.append({"epoch": epoch, "score": value})
        if value is None or not math.isfinite(value) or epoch < self.first_epoch:
            return False
        signed = entry[1] * value
        if signed > self.best_score:
            self.best_score, self.best_epoch = signed, epoch
            return True
        return False

    @property
    def checkpoint(self) -> str:
        """The checkpoint the rule chose: ``best`` for score rules, else ``last`` or ``ema``.

        A score rule whose score was never finite on an eligible epoch (e.g. no slice of the label-free set
        held a heart, so plausibility is undefined) falls back to ``last``.
        """
        if RULES[self.rule] is None:
            return self.rule
        return "best" if self.best_epoch >= 0 else "last"

    def record(self) -> dict[str, Any]:
        """What ``selection.json`` holds."""
        out = asdict(self)
        entry = RULES[self.rule]
        out["best_score"] = entry[1] * self.best_score if entry and math.isfinite(self.best_score) else None
        out.update({"checkpoint": self.checkpoint, "column": self.column})
        return out

    @classmethod
    def from_record(cls, d: dict[str, Any]) -> Selector:
        """Rebuild from :meth:`record` (resume)."""
        entry = RULES.get(d["rule"])
        best = d.get("best_score")
        signed = entry[1] * best if entry and best is not None else -math.inf
        return cls(d["rule"], d.get("best_epoch", -1), signed, list(d.get("scores", [])), d.get("first_epoch", 1))

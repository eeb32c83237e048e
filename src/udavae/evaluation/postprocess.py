"""Post-processing of predicted masks: keep only the largest connected component of chosen structures.

Segmentation networks leave small blobs far from the heart; each costs little Dice but sets the Hausdorff
distance. As nnU-Net does, whether removing them helps is decided per structure on the *validation* cases
only (never the test cases): a structure gets the largest-component filter when its mean validation Dice
with the filter is at least its mean Dice without it. The decision is stored with the model (see
:mod:`udavae.engine.model_folder`) and applied by ``udavae predict`` and ``udavae evaluate``.

Components are 3-D with full (26-) connectivity, so a structure that continues diagonally from one slice to
the next stays one component.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from udavae.evaluation.metrics import dice_per_class

__all__ = ["PostProcessing", "decide_postprocessing", "keep_largest_component"]

_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def keep_largest_component(classes: np.ndarray, class_index: int) -> np.ndarray:
    """A copy of the class map where voxels of ``class_index`` outside its largest component are background.

    Args:
        classes: class indices, 2-D or 3-D (0 = background).
        class_index: the class to filter.
    """
    mask = classes == class_index
    structure = _CONNECTIVITY if classes.ndim == 3 else np.ones((3,) * classes.ndim, dtype=bool)
    components, n = ndimage.label(mask, structure=structure)
    out = classes.copy()
    if n > 1:
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        sizes[0] = 0
        out[mask & (components != int(sizes.argmax()))] = 0
    return out


@dataclass
class PostProcessing:
    """Which structures keep only their largest component, and the validation evidence for it.

    Attributes:
        largest_component: structure names filtered (empty: predictions are used as they are).
        decided_on: where the decision was taken, e.g. ``"LGE/val (5 cases), best checkpoint"``.
        val_dice: structure -> ``{"raw": mean Dice, "largest_component": mean Dice}`` on those cases.
    """

    largest_component: tuple[str, ...] = ()
    decided_on: str = ""
    val_dice: dict[str, dict[str, float]] = field(default_factory=dict)

    def apply(self, classes: np.ndarray, class_names: Mapping[int, str]) -> np.ndarray:
        """The post-processed class map (``classes`` itself when nothing is filtered)."""
        for index, name in class_names.items():
            if name in self.largest_component:
                classes = keep_largest_component(classes, index)
        return classes

    def describe(self) -> str:
        """One line for the terminal."""
        if not self.largest_component:
            return f"post-processing: none (no structure's validation Dice improved; decided on {self.decided_on})"
        return (
            f"post-processing: largest connected component kept for {', '.join(self.largest_component)} "
            f"(decided on {self.decided_on})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "largest_component": list(self.largest_component),
            "decided_on": self.decided_on,
            "val_dice": self.val_dice,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PostProcessing:
        return cls(tuple(d.get("largest_component", ())), str(d.get("decided_on", "")), dict(d.get("val_dice", {})))


def decide_postprocessing(
    predictions: Sequence[np.ndarray], labels: Sequence[np.ndarray], class_names: Mapping[int, str], decided_on: str
) -> PostProcessing:
    """Choose, per structure, whether keeping its largest component does not lower the mean Dice.

    Args:
        predictions: predicted class maps of the validation cases.
        labels: their reference class maps (same shapes).
        class_names: class index -> structure name (background excluded).
        decided_on: a description of the cases, stored with the decision.

    Raises:
        ValueError: no cases, or a prediction and its label differ in shape.
    """
    if not predictions or len(predictions) != len(labels):
        raise ValueError("deciding post-processing needs validation predictions and labels, one per case")
    for p, g in zip(predictions, labels):
        if p.shape != g.shape:
            raise ValueError(f"prediction {p.shape} and label {g.shape} differ in shape")
    chosen: list[str] = []
    evidence: dict[str, dict[str, float]] = {}
    k = max(class_names) + 1
    for index, name in class_names.items():
        raw = [dice_per_class(p, g, k)[index - 1] for p, g in zip(predictions, labels)]
        post = [dice_per_class(keep_largest_component(p, index), g, k)[index - 1] for p, g in zip(predictions, labels)]
        raw_mean, post_mean = float(np.nanmean(raw)), float(np.nanmean(post))
        evidence[name] = {"raw": raw_mean, "largest_component": post_mean}
        if post_mean >= raw_mean:
            chosen.append(name)
    return PostProcessing(tuple(chosen), decided_on, evidence)

"""Label-free scores of a network on target cases: the per-case quality control and the per-epoch selection
scores. The network runs here; the scores themselves are array functions of :mod:`udavae.evaluation.labelfree`.

Per case: the class probabilities on the network grid, and the predictions under ``TTA`` (a horizontal flip and
two gamma changes of the intensities) mapped back; the case's mean entropy, its mean agreement
with the transformed predictions, the plausibility of its mask on the native grid, SND on a fixed sample of its
voxels, and each structure's volume in ml.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from udavae.data.volumes import LoadedCase
from udavae.evaluation.labelfree import (
    CardiacRoles,
    agreement,
    mean_entropy,
    plausibility,
    soft_neighbourhood_density,
)

__all__ = ["TTA", "CaseScores", "case_scores", "image_scores", "summarize_scores"]

#: Test-time transforms: (name, transform of the slices z x H x W, inverse of the probabilities z x K x H x W).
#: No vertical flip: on MS-CMRSeg the agreement under it did not track the case Dice (Spearman 0.08 over three
#: networks, against 0.63 for the horizontal flip; docs/selection.md), so it only diluted the mean.
TTA: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]], ...] = (
    ("flip-x", lambda s: s.flip(-1), lambda p: p.flip(-1)),
    ("gamma-0.7", lambda s: s.clamp(0, 1) ** 0.7, lambda p: p),
    ("gamma-1.5", lambda s: s.clamp(0, 1) ** 1.5, lambda p: p),
)
#: Voxels per case sampled for SND (with a fixed seed, among voxels that some structure claims >= 5%).
SND_SAMPLES = 256


@dataclass
class CaseScores:
    """Label-free scores of one case (see the module docstring).

    Attributes:
        case: case id.
        entropy: mean normalised entropy (lower is better).
        agreement: mean Dice between the prediction and the TTA predictions (higher is better).
        plausibility: share of slices with a heart whose mask passes the cardiac rules (NaN without LV/MYO).
        implausible_slices: slices that fail them.
        snd: soft neighbourhood density of sampled voxels (higher is better).
        volumes_ml: predicted volume of each structure, in ml.
        classes: the predicted class map on the native grid (not serialised).
    """

    case: str
    entropy: float
    agreement: float
    plausibility: float
    implausible_slices: int
    snd: float
    volumes_ml: dict[str, float] = field(default_factory=dict)
    classes: np.ndarray | None = field(default=None, repr=False)

    def to_row(self) -> dict[str, float | str | int]:
        """A flat row (volumes as ``volume_<structure>_ml``), without the class map."""
        row = {k: v for k, v in asdict(self).items() if k not in ("volumes_ml", "classes")}
        row.update({f"volume_{name}_ml": v for name, v in self.volumes_ml.items()})
        return row


def case_scores(
    predictor,
    case: LoadedCase,
    class_names: Mapping[int, str],  # noqa: ANN001 (engine Predictor)
    tta: bool = True,
    seed: int = 0,
) -> CaseScores:
    """The label-free scores of ``predictor`` on one loaded case (its label, if any, is not read)."""
    return image_scores(predictor, case.id, case.image, case.geometry, case.spacing, class_names, tta, seed)


def image_scores(
    predictor,
    case_id: str,
    image: torch.Tensor,
    geometry,
    spacing,  # noqa: ANN001
    class_names: Mapping[int, str],
    tta: bool = True,
    seed: int = 0,
) -> CaseScores:
    """The label-free scores of ``predictor`` on preprocessed slices ``image`` (z, H, W) of one scan.

    Args:
        predictor: the engine's :class:`~udavae.engine.inference.Predictor`.
        case_id: the name the scores are recorded under.
        image / geometry / spacing: the preprocessed slices, the record mapping them back to the native grid,
            and the native voxel spacing (mm).
        class_names: class index -> structure name (cardiac rules apply when LV and MYO are among them).
        tta: compute the agreement under :data:`TTA` (three more passes).
        seed: seed of the voxels sampled for SND.
    """
    probs = predictor.probabilities(image)  # z, K, H, W
    pred = probs.argmax(1)
    k = probs.shape[1]
    agreements = []
    if tta:
        for _, forward, back in TTA:
            other = back(predictor.probabilities(forward(image))).argmax(1)
            agreements.append(agreement(pred.numpy(), other.numpy(), k))
    native = predictor.prep.invert_probabilities(probs, geometry).argmax(0).numpy().astype(np.uint8)
    roles = CardiacRoles.from_names(class_names)
    share, bad = (plausibility(native, roles)[:2]) if roles is not None else (float("nan"), 0)
    flat = probs.permute(0, 2, 3, 1).reshape(-1, k)
    candidates = torch.nonzero(flat[:, 1:].max(1).values >= 0.05).flatten().numpy()
    rng = np.random.default_rng(seed)
    snd = float("nan")
    if candidates.size >= 2:
        pick = rng.choice(candidates, size=min(SND_SAMPLES, candidates.size), replace=False)
        snd = soft_neighbourhood_density(flat[pick].numpy())
    voxel_ml = float(np.prod(spacing)) / 1000.0
    volumes = {name: float((native == i).sum()) * voxel_ml for i, name in class_names.items() if i > 0}
    return CaseScores(
        case_id,
        mean_entropy(probs.numpy(), axis=1),
        float(np.mean(agreements)) if agreements else float("nan"),
        share,
        int(bad),
        snd,
        volumes,
        native,
    )


def summarize_scores(scores: Iterable[CaseScores]) -> dict[str, float]:
    """Mean of each score over cases (NaNs ignored): the per-epoch selection scores of a set of cases."""
    rows = list(scores)
    out = {}
    for key in ("entropy", "agreement", "plausibility", "snd"):
        values = np.array([getattr(r, key) for r in rows], dtype=float)
        out[key] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
    return out

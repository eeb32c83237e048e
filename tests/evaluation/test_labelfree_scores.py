"""Label-free scores on hand-made inputs: entropy, agreement, cardiac plausibility, SND, and the QC ranking."""

from __future__ import annotations

import math

import numpy as np
import pytest

from udavae.evaluation.labelfree import (
    CardiacRoles,
    agreement,
    mean_entropy,
    plausibility,
    slice_plausibility,
    soft_neighbourhood_density,
)
from udavae.evaluation.qc import DoubtfulRule, qc_check, qc_rows, qc_score

ROLES = CardiacRoles(lv=2, myo=1, rv=3)


def _heart(size: int = 64, gap: bool = False, rv: bool = True) -> np.ndarray:
    """A drawn short-axis slice: LV disc (r < 9) in a myocardial ring (9 <= r < 14), RV beside the ring."""
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - 32, xx - 36)
    m = np.zeros((size, size), np.uint8)
    m[d < 14] = 1
    m[d < 9] = 2
    if rv:
        m[(np.abs(yy - 32) < 8) & (xx >= 12) & (xx < 23)] = 3  # touches the ring's left edge at x = 22
    if gap:  # the right half of the ring removed: the LV touches background
        m[(d >= 9) & (d < 14) & (xx > 36)] = 0
    return m


def test_entropy_of_known_softmax() -> None:
    uniform = np.full((4, 10), 0.25)
    assert mean_entropy(uniform, axis=0) == pytest.approx(1.0)
    certain = np.zeros((4, 10))
    certain[1] = 1.0
    assert mean_entropy(certain, axis=0) == pytest.approx(0.0, abs=1e-9)
    p = np.array([[0.5], [0.25], [0.25]])  # H = 1.5 ln 2, divided by ln 3
    assert mean_entropy(p, axis=0) == pytest.approx(1.5 * math.log(2) / math.log(3))


def test_agreement_of_identical_and_disjoint_predictions() -> None:
    m = _heart()
    assert agreement(m, m, 4) == 1.0
    assert agreement(m, np.zeros_like(m), 4) == 0.0
    shifted = np.roll(m, 3, axis=1)
    assert 0.0 < agreement(m, shifted, 4) < 1.0


def test_plausibility_of_a_drawn_ring_and_a_broken_one() -> None:
    ok = slice_plausibility(_heart(), ROLES)
    assert ok is not None and ok.ok and ok.broken == []
    broken = slice_plausibility(_heart(gap=True), ROLES)
    assert broken is not None and not broken.ok and "myocardium does not enclose the LV" in broken.broken
    vol_ok = np.stack([_heart()] * 3 + [np.zeros((64, 64), np.uint8)], axis=-1)
    assert plausibility(vol_ok, ROLES) == (1.0, 0, 3)  # the empty slice is not counted
    vol_bad = np.stack([_heart(gap=True)] * 3, axis=-1)
    assert plausibility(vol_bad, ROLES) == (0.0, 3, 3)


@pytest.mark.parametrize(
    "defect, rule",
    [
        ("two_lv", "LV in several pieces"),
        ("lv_hole", "hole in the LV"),
        ("rv_away", "RV does not touch the myocardium"),
        ("no_myo", "LV without myocardium"),
    ],
)
def test_each_rule_catches_its_defect(defect: str, rule: str) -> None:
    m = _heart()
    if defect == "two_lv":
        m[2:14, 2:14] = 2  # a second LV as large as half the first
    elif defect == "lv_hole":
        m[31:34, 35:38] = 0
    elif defect == "rv_away":
        m[m == 3] = 0
        m[2:8, 2:8] = 3
    elif defect == "no_myo":
        m[m == 1] = 0
    verdict = slice_plausibility(m, ROLES)
    assert verdict is not None and not verdict.ok and rule in verdict.broken


def test_roles_from_names() -> None:
    assert CardiacRoles.from_names({1: "MYO", 2: "LV", 3: "RV"}) == ROLES
    assert CardiacRoles.from_names({1: "liver", 2: "spleen"}) is None


def test_snd_is_higher_for_denser_neighbourhoods() -> None:
    rng = np.random.default_rng(0)
    tight = np.tile([0.9, 0.05, 0.05], (40, 1)) + rng.normal(0, 1e-3, (40, 3))
    spread = rng.dirichlet([1, 1, 1], 40)
    # identical vectors: the similarity softmax is uniform over the other 39, entropy ln 39
    assert soft_neighbourhood_density(np.tile([0.2, 0.8], (40, 1))) == pytest.approx(math.log(39))
    assert soft_neighbourhood_density(tight) > soft_neighbourhood_density(spread)
    with pytest.raises(ValueError):
        soft_neighbourhood_density(np.ones((1, 3)))


def test_qc_rows_flag_and_sort_worst_first() -> None:
    rows = [
        {"case": "good", "agreement": 0.95, "plausibility": 1.0, "entropy": 0.02, "volume_LV_ml": 120.0},
        {"case": "unstable", "agreement": 0.6, "plausibility": 0.9, "entropy": 0.05, "volume_LV_ml": 100.0},
        {"case": "missing", "agreement": 0.99, "plausibility": 1.0, "entropy": 0.01, "volume_LV_ml": 0.0},
        {"case": "fine", "agreement": 0.9, "plausibility": 0.8, "entropy": 0.03, "volume_LV_ml": 90.0},
    ]
    out = qc_rows(rows, ["LV"], DoubtfulRule())
    assert [r["case"] for r in out] == ["unstable", "missing", "fine", "good"]
    assert [r["doubtful"] for r in out] == [True, True, False, False]
    assert out[0]["reason"] == "qc_score 0.60 among the worst 25% of 4" and out[1]["reason"] == "no LV predicted"
    # absolute reasons flag a case whatever the batch; fewer than 4 cases get no relative flag
    lone = qc_rows([{"case": "x", "agreement": 0.3, "plausibility": 1.0}], ["LV"])
    assert lone[0]["doubtful"] and lone[0]["reason"] == "agreement 0.30 < 0.5"
    assert not qc_rows([rows[0]], ["LV"])[0]["doubtful"]
    # qc_score is the agreement; plausibility only stands in when no agreement was computed
    assert qc_score(rows[1]) == pytest.approx(0.6)
    assert qc_score({"agreement": 0.8, "plausibility": 0.1}) == pytest.approx(0.8)
    assert qc_score({"agreement": float("nan"), "plausibility": 0.4}) == pytest.approx(0.4)
    assert math.isnan(qc_score({"entropy": 0.2}))


def test_qc_check_against_hand_computed_rank_and_catch() -> None:
    # 8 cases: qc_score ranks them exactly as their Dice except cases c and d swapped -> Spearman = 1 - 6*2/(8*63)
    dice = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    score = [0.1, 0.2, 0.4, 0.3, 0.5, 0.6, 0.7, 0.8]
    rows = [{"case": c, "agreement": s, "dice_mean": d} for c, s, d in zip("abcdefgh", score, dice, strict=True)]
    check = qc_check(qc_rows(rows, []))
    assert check["n"] == 8 and check["spearman"] == pytest.approx(1 - 6 * 2 / (8 * 63))
    # the 2 lowest-Dice cases (25% of 8) are a and b; the relative rule flags a and b (the 2 lowest scores)
    assert check["worst_k"] == 2 and check["worst_caught"] == 2
    # reversed scores: the flag sits on the best cases and catches none of the worst
    flipped = [{**r, "agreement": 1 - r["agreement"]} for r in rows]
    check = qc_check(qc_rows(flipped, []))
    assert check["spearman"] == pytest.approx(-(1 - 6 * 2 / (8 * 63))) and check["worst_caught"] == 0
    # cases without a Dice (unlabelled) do not count; a constant score has no rank correlation
    assert qc_check([{"qc_score": 0.5, "dice_mean": float("nan"), "doubtful": True}])["n"] == 0
    assert math.isnan(qc_check([{"qc_score": 0.5, "dice_mean": d, "doubtful": False} for d in dice])["spearman"])

"""Weight averaging against a hand computation, selection rules and their record."""

from __future__ import annotations

import math

import pytest
import torch

from udavae.engine.ema import WeightAverage
from udavae.engine.selection import LABEL_FREE_DEFAULT, Selector, first_eligible_epoch, resolve_rule


def test_ema_matches_hand_computation() -> None:
    m = torch.nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[1.0, 2.0]]))
        m.bias.fill_(0.0)
    avg = WeightAverage(m, decay=0.9)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[3.0, 0.0]]))
        m.bias.fill_(10.0)
    avg.update(m)  # 0.9 * old + 0.1 * new
    assert torch.allclose(avg.state_dict()["weight"], torch.tensor([[1.2, 1.8]]))
    assert torch.allclose(avg.state_dict()["bias"], torch.tensor([1.0]))
    avg.update(m)
    assert torch.allclose(avg.state_dict()["weight"], torch.tensor([[0.9 * 1.2 + 0.3, 0.9 * 1.8]]))
    assert torch.allclose(avg.state_dict()["bias"], torch.tensor([0.9 * 1.0 + 1.0]))
    with pytest.raises(ValueError):
        WeightAverage(m, 1.0)


def test_ema_copies_integer_buffers_and_reshaped_buffers() -> None:
    m = torch.nn.BatchNorm1d(2)
    avg = WeightAverage(m, 0.5)
    m.num_batches_tracked.fill_(7)
    m.register_buffer("pool", torch.zeros(3))
    avg.update(m)
    assert int(avg.state_dict()["num_batches_tracked"]) == 7
    assert avg.state_dict()["pool"].shape == (3,)


def test_selector_follows_its_score_in_the_right_direction() -> None:
    sel = Selector("entropy")  # lower is better
    chosen = [sel.update(e, {"lf/entropy": v}) for e, v in enumerate([0.3, 0.2, 0.25, 0.1], start=1)]
    assert chosen == [True, True, False, True] and sel.best_epoch == 4
    rec = sel.record()
    assert rec["rule"] == "entropy" and rec["best_epoch"] == 4 and rec["best_score"] == pytest.approx(0.1)
    assert rec["checkpoint"] == "best" and rec["column"] == "lf/entropy"
    assert Selector.from_record(rec) == sel
    val = Selector("val-dice")
    assert not val.update(1, {"val/dice_mean": math.nan}) and val.best_epoch == -1


def test_checkpoint_rules_name_their_checkpoint() -> None:
    sel = Selector("ema")
    assert not sel.update(3, {})
    assert sel.checkpoint == "ema" and sel.best_epoch == 3


def test_label_free_rules_wait_for_the_second_half_of_the_schedule() -> None:
    assert first_eligible_epoch("label-free", 12, 0.5) == 7
    assert first_eligible_epoch("agreement", 2, 0.5) == 2
    assert first_eligible_epoch("plausibility", 12, 0.0) == 1
    assert first_eligible_epoch("val-dice", 12, 0.5) == first_eligible_epoch("ema", 12, 0.5) == 1
    sel = Selector("label-free", first_epoch=3)
    chosen = [sel.update(e, {"lf/combined": v}) for e, v in enumerate([0.9, 0.8, 0.5, 0.7, 0.6], start=1)]
    assert chosen == [False, False, True, True, False] and sel.best_epoch == 4
    assert [s["score"] for s in sel.scores] == [0.9, 0.8, 0.5, 0.7, 0.6]  # every epoch recorded
    rec = sel.record()
    assert rec["first_epoch"] == 3 and rec["best_score"] == pytest.approx(0.7)
    assert Selector.from_record(rec) == sel


def test_a_score_that_is_never_finite_falls_back_to_the_last_checkpoint() -> None:
    sel = Selector("label-free", first_epoch=2)
    assert not sel.update(1, {"lf/combined": 0.9})  # finite, but before the first eligible epoch
    assert not sel.update(2, {"lf/combined": math.nan})
    assert sel.best_epoch == -1 and sel.checkpoint == "last"
    sel.update(3, {"lf/combined": 0.1})
    assert sel.checkpoint == "best" and sel.best_epoch == 3


def test_auto_rule_resolution() -> None:
    assert resolve_rule("auto", has_val=True, has_ema=True) == "val-dice"
    assert LABEL_FREE_DEFAULT == "label-free"
    assert resolve_rule("auto", has_val=False, has_ema=True) == "label-free"
    assert resolve_rule("auto", has_val=False, has_ema=False) == "label-free"
    assert resolve_rule("auto", has_val=False, has_ema=True, cardiac=False) == "ema"  # no plausibility
    assert resolve_rule("auto", has_val=False, has_ema=False, cardiac=False) == "last"
    assert resolve_rule("auto", has_val=False, has_ema=True, has_labelfree=False) == "ema"
    assert resolve_rule("auto", has_val=True, has_ema=True, cardiac=False) == "val-dice"
    with pytest.raises(ValueError, match="labelled validation"):
        resolve_rule("val-dice", has_val=False, has_ema=True)
    with pytest.raises(ValueError, match="train.ema"):
        resolve_rule("ema", has_val=True, has_ema=False)

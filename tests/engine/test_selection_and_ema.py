"""Weight averaging against a hand computation, selection rules and their record."""

from __future__ import annotations

import math

import pytest
import torch

from udavae.engine.ema import WeightAverage
from udavae.engine.selection import LABEL_FREE_DEFAULT, Selector, resolve_rule


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


def test_auto_rule_resolution() -> None:
    assert resolve_rule("auto", has_val=True, has_ema=True) == "val-dice"
    assert resolve_rule("auto", has_val=False, has_ema=True) == LABEL_FREE_DEFAULT
    assert resolve_rule("auto", has_val=False, has_ema=False) in ("last", LABEL_FREE_DEFAULT)
    with pytest.raises(ValueError, match="labelled validation"):
        resolve_rule("val-dice", has_val=False, has_ema=True)
    with pytest.raises(ValueError, match="train.ema"):
        resolve_rule("ema", has_val=True, has_ema=False)

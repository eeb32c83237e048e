"""Post-processing: largest-component filter, its decision on validation cases, storage, use by evaluate/predict."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from udavae.cli import main
from udavae.data.synthetic import generate_dataset
from udavae.engine.model_folder import load_postprocessing, save_postprocessing
from udavae.evaluation.postprocess import PostProcessing, decide_postprocessing, keep_largest_component

NAMES = {1: "MYO", 2: "LV"}
TRAIN_ARGS = [
    "--preset",
    "uda-vae",
    "--profile",
    "tiny",
    "--device",
    "cpu",
    "--seed",
    "1",
    "--epochs",
    "1",
    "--iters-per-epoch",
    "2",
    "--batch-size",
    "2",
    "model.base_width=4",
    "model.recon_width=8",
    "data.crop=48",
    "data.jitter=8",
]


def _volume() -> tuple[np.ndarray, np.ndarray]:
    """A reference with one LV block and one MYO block, and a prediction with a stray LV blob far away."""
    gt = np.zeros((20, 20, 4), np.uint8)
    gt[4:10, 4:10, :] = 2
    gt[12:16, 4:10, :] = 1
    pred = gt.copy()
    pred[17:19, 17:19, 1] = 2  # 4 stray voxels
    return pred, gt


def test_keep_largest_component_removes_only_the_smaller_parts_of_that_class() -> None:
    pred, gt = _volume()
    out = keep_largest_component(pred, 2)
    assert np.array_equal(out, gt) and pred[17, 17, 1] == 2  # input untouched
    assert np.array_equal(keep_largest_component(pred, 1), pred)  # MYO is one component already
    # diagonal contact across slices stays one component (26-connectivity)
    diag = np.zeros((4, 4, 2), np.uint8)
    diag[0, 0, 0] = diag[1, 1, 1] = 1
    assert np.array_equal(keep_largest_component(diag, 1), diag)


def test_decision_takes_the_filter_where_validation_dice_does_not_drop() -> None:
    pred, gt = _volume()
    pp = decide_postprocessing([pred], [gt], NAMES, "val")
    assert pp.largest_component == ("MYO", "LV")
    inter = 2 * 36 * 4  # Dice of LV with the stray blob: 2*|A&B| / (|A| + |B|)
    assert pp.val_dice["LV"]["raw"] == pytest.approx(inter / (36 * 4 + 36 * 4 + 4))
    assert pp.val_dice["LV"]["largest_component"] == pytest.approx(1.0)
    # a structure that really has two parts: keeping one of them loses Dice, so it is not filtered
    gt2 = gt.copy()
    gt2[17:19, 17:19, :] = 2
    pred2 = gt2.copy()
    pp2 = decide_postprocessing([pred2], [gt2], NAMES, "val")
    assert "LV" not in pp2.largest_component and pp2.val_dice["LV"]["largest_component"] < 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        decide_postprocessing([pred], [gt[:, :, :2]], NAMES, "val")


def test_apply_and_model_folder_round_trip(tmp_path: Path) -> None:
    pred, gt = _volume()
    pp = PostProcessing(("LV",), "LGE/val (1 cases), best checkpoint", {"LV": {"raw": 0.9, "largest_component": 1.0}})
    assert np.array_equal(pp.apply(pred, NAMES), gt)
    assert np.array_equal(PostProcessing().apply(pred, NAMES), pred)
    save_postprocessing(tmp_path, "best", pp)
    save_postprocessing(tmp_path, "last", PostProcessing((), "x"))
    assert load_postprocessing(tmp_path, "best") == pp
    assert load_postprocessing(tmp_path, "last").largest_component == ()
    assert load_postprocessing(tmp_path / "missing", "best") is None


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("postprocess")
    data = base / "data"
    generate_dataset(data, n_source=2, n_target=4, size=48, slices=3, seed=2, n_val=2)
    run = base / "run"
    assert main(["train", "--dataset", str(data), "--out", str(run), *TRAIN_ARGS]) == 0
    return run


def test_training_stores_a_decision_for_both_checkpoints(run: Path) -> None:
    stored = json.loads((run / "postprocessing.json").read_text())
    assert set(stored) == {"best", "last", "ema"}
    for entry in stored.values():
        assert entry["decided_on"].startswith("LGE/val (2 cases)")
        assert set(entry["val_dice"]) == {"MYO", "LV", "RV"}
        chosen = {s for s, d in entry["val_dice"].items() if d["largest_component"] >= d["raw"]}
        assert set(entry["largest_component"]) == chosen


def test_evaluate_and_predict_apply_the_stored_decision(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_postprocessing(run, "best", PostProcessing(("MYO", "LV", "RV"), "forced for the test"))
    assert (
        main(
            ["evaluate", str(run), "--split", "test", "--out", str(tmp_path / "ev"), "--device", "cpu", "--save-masks"]
        )
        == 0
    )
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["postprocessing"]["largest_component"] == ["MYO", "LV", "RV"]
    assert "uda-vae raw" in out and "uda-vae post" in out and "HD95 (mm)" in out
    masks = sorted((tmp_path / "ev" / "masks").iterdir())
    images = run.parent / "data" / "LGE" / "images"
    assert main(["predict", str(run), str(images), str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert main(["predict", str(run), str(images), str(tmp_path / "raw"), "--device", "cpu", "--no-postprocess"]) == 0
    assert "largest connected component kept for MYO, LV, RV" in capsys.readouterr().out
    for f in sorted((tmp_path / "pred").glob("*.nii.gz")):
        codes = np.asarray(nib.load(f).dataobj)
        for code in np.unique(codes)[1:]:  # every structure one 26-connected component
            assert ndimage.label(codes == code, structure=np.ones((3, 3, 3)))[1] == 1, f.name
        raw = np.asarray(nib.load(tmp_path / "raw" / f.name).dataobj)
        assert np.all((codes == raw) | (codes == 0))  # the filter only removes voxels
    # raw metrics are written beside the post-processed ones exactly when the filter changed a test mask
    changed = any(
        not np.array_equal(np.asarray(nib.load(m).dataobj), np.asarray(nib.load(tmp_path / "raw" / m.name).dataobj))
        for m in masks
    )
    assert ("raw" in summary) == changed == (tmp_path / "ev" / "metrics_raw.csv").is_file()


def test_postprocess_command_redecides(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (run / "postprocessing.json").unlink()
    assert main(["postprocess", str(run), "--checkpoint", "best", "--device", "cpu"]) == 0
    assert "validation Dice raw -> largest component" in capsys.readouterr().out
    assert load_postprocessing(run, "best") is not None and load_postprocessing(run, "last") is None

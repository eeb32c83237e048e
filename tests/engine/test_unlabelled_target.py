"""A target domain with no labels at all: every preset trains, selects without labels, evaluates on the held-out
source cases and predicts with qc.csv; the target's label files are never read (they do not exist)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from udavae.cli import main
from udavae.data.synthetic import generate_dataset
from udavae.engine import model_folder as mf
from udavae.engine.trainer import train
from udavae.methods.presets import PRESETS, build_config


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ul") / "data"
    generate_dataset(root, n_source=5, n_target=3, size=64, slices=3, seed=2, n_val=1)
    spec = json.loads((root / "dataset.json").read_text())
    for case in spec["domains"]["LGE"]:
        case.pop("label", None)
    spec["splits"].pop("LGE", None)
    (root / "dataset.json").write_text(json.dumps(spec))
    shutil.rmtree(root / "LGE" / "labels")  # any read of a target label would fail
    return root


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_trains_and_selects_without_target_labels(
    preset: str, unlabelled: Path, tmp_path: Path, tiny_overrides: dict
) -> None:
    cfg = build_config(preset, "tiny", {**tiny_overrides, "data.dataset": str(unlabelled)})
    fit = train(cfg, tmp_path / "run")
    record = mf.read_selection(tmp_path / "run")
    assert fit["selection"] == record["rule"] == "label-free" and len(record["labelfree_cases"]) == 1
    # the label-free rule chooses in the second half of the 2-epoch schedule: epoch 2, or the last epoch
    # where its score is undefined (no slice of the one label-free case held a heart)
    assert record["first_epoch"] == 2 and [s["epoch"] for s in record["scores"]] == [1, 2]
    finite = record["scores"][1]["score"] is not None and record["scores"][1]["score"] == record["scores"][1]["score"]
    assert (fit["checkpoint"], fit["best_epoch"]) == (("best", 2) if finite else ("last", -1))
    assert record["checkpoint"] == fit["checkpoint"]
    assert mf.checkpoint_path(tmp_path / "run", record["checkpoint"]).is_file()
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"lf/entropy", "lf/agreement", "lf/plausibility", "lf/snd", "src/dice_mean"} <= set(rows[-1])
    assert "val/dice_mean" not in rows[-1]


@pytest.fixture(scope="module")
def run(unlabelled: Path, tmp_path_factory: pytest.TempPathFactory, tiny_overrides: dict) -> Path:
    out = tmp_path_factory.mktemp("runs") / "slaug"
    train(build_config("slaug", "tiny", {**tiny_overrides, "data.dataset": str(unlabelled)}), out)
    return out


def test_evaluate_on_held_out_source_and_predict_with_qc(
    run: Path, unlabelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", str(run), "--split", "source-holdout", "--device", "cpu"]) == 0
    chosen = mf.read_selection(run)["checkpoint"]
    folder = run / "eval" / f"C0_source-holdout_{chosen}"
    summary = json.loads((folder / "summary.json").read_text())
    held = mf.read_selection(run)["source_holdout"]
    assert summary["n_cases"] == len(held) == 1 and summary["checkpoint"] == chosen
    qc = (folder / "qc.csv").read_text().splitlines()
    assert qc[0].startswith("case,") and "doubtful" in qc[0] and "dice_mean" in qc[0] and len(qc) == 2
    # one labelled case: its own worst case, flagged or not as qc.csv says; no rank correlation from one case
    flagged = qc[1].split(",")[qc[0].split(",").index("doubtful")] == "True"
    assert summary["qc_check"] == {
        "n": 1,
        "spearman": None,
        "worst_k": 1,
        "worst_caught": int(flagged),
        "transforms": ["flip-x", "gamma-0.7", "gamma-1.5"],
    }
    assert (
        main(["predict", str(run), str(unlabelled / "LGE" / "images"), str(tmp_path / "masks"), "--device", "cpu"]) == 0
    )
    lines = (tmp_path / "masks" / "qc.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 and "volume_LV_ml" in lines[0] and "reason" in lines[0]
    assert "quality control:" in capsys.readouterr().out


def test_augmentation_is_off_at_prediction(run: Path, unlabelled: Path) -> None:
    """The SLAug model's predictor sees the raw slices: two predictions agree and equal a plain forward pass."""
    model = mf.open_model(run, "selected", "cpu")
    assert model.config.augment.slaug and model.config.augment.spatial
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert all(r["loss/seg_global_view"] > 0 for r in rows)  # SLAug's global-view pass trains, and is logged
    from udavae.data.volumes import load_image

    _, slices, geom = load_image(unlabelled / "LGE" / "images" / "case001.nii.gz", model.info.preprocessing)
    a, b = model.predictor.probabilities(slices), model.predictor.probabilities(slices)
    assert torch.equal(a, b)
    with torch.no_grad():
        model.method.net.eval()
        direct = torch.softmax(model.method.net(slices[:, None]).logits, 1)
    assert torch.allclose(a, direct, atol=1e-6)


def test_readme_import_of_an_unlabelled_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's first workflow: a labelled domain, then an unlabelled one added without --labels."""
    generate_dataset(tmp_path / "synth", n_source=2, n_target=2, size=64, slices=2, seed=6, n_val=1)
    lge = tmp_path / "my_lge"
    lge.mkdir()
    for f in (tmp_path / "synth" / "LGE" / "images").iterdir():
        shutil.copy(f, lge / f.name)
    out = tmp_path / "datasets" / "mine"
    assert (
        main(
            [
                "data",
                "import",
                "folder",
                str(tmp_path / "synth" / "C0"),
                str(out),
                "--domain",
                "C0",
                "--labels",
                "MYO=200,LV=500,RV=600",
            ]
        )
        == 0
    )
    assert main(["data", "import", "folder", str(lge), str(out), "--domain", "LGE", "--unlabelled"]) == 0
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["labels"]["codes"] == {"MYO": 200, "LV": 500, "RV": 600}
    assert all("label" not in c for c in spec["domains"]["LGE"])
    assert main(["data", "import", "folder", str(lge), str(tmp_path / "new"), "--domain", "LGE", "--unlabelled"]) == 2
    assert "--labels is needed" in capsys.readouterr().err

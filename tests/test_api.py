"""The public Python API: ``udavae.Config.from_preset``, ``udavae.train``, ``udavae.load``, ``Model.predict`` /
``predict_folder`` and ``udavae.evaluate``, and the configuration's independence of import order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import udavae
from udavae.cli import main
from udavae.data.synthetic import generate_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: dict) -> tuple[udavae.Model, Path]:
    root = tmp_path_factory.mktemp("api")
    generate_dataset(root / "data", n_source=3, n_target=3, size=64, slices=3, seed=4, n_val=1)
    cfg = udavae.Config.from_preset(
        "udavae++", "tiny", overrides={**tiny_overrides, "optim.epochs": 1}, data__dataset=str(root / "data")
    )
    return udavae.train(cfg, root / "run"), root


def test_train_returns_a_model_with_its_fit_summary(trained: tuple[udavae.Model, Path]) -> None:
    model, root = trained
    assert isinstance(model, udavae.Model) and model.run == root / "run"
    assert model.training["selection"] == "val-dice" and model.checkpoint == "best"
    assert model.structures == ["MYO", "LV", "RV"] and model.label_codes == {"MYO": 200, "LV": 500, "RV": 600}


def test_predict_array_and_file_agree_with_predict_folder(trained: tuple[udavae.Model, Path], tmp_path: Path) -> None:
    _, root = trained
    model = udavae.load(root / "run", device="cpu")
    path = root / "data" / "LGE" / "images" / "case001.nii.gz"
    img = nib.load(path)
    vol = np.asarray(img.dataobj, dtype=np.float32)
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    pred = model.predict(vol, spacing=spacing, probabilities=True, scores=True)
    assert pred.shape == vol.shape and pred.classes.dtype == np.uint8
    assert set(np.unique(pred.codes)) <= {0, 200, 500, 600}
    assert pred.probabilities.shape == (4, *vol.shape)
    assert np.allclose(pred.probabilities.sum(0), 1.0, atol=1e-4)
    assert {"agreement", "plausibility", "entropy"} <= set(pred.scores)
    assert np.array_equal(model.predict(path).classes, pred.classes)
    result = model.predict_folder(path, tmp_path / "out")
    written = np.asarray(nib.load(result.masks[0]).dataobj)
    assert np.array_equal(written, pred.codes) and (tmp_path / "out" / "qc.csv").is_file()


def test_predict_refuses_bad_arrays(trained: tuple[udavae.Model, Path]) -> None:
    model, _ = trained
    with pytest.raises(udavae.api.UserError, match="spacing"):
        model.predict(np.zeros((8, 8, 2), np.float32))
    with pytest.raises(udavae.api.UserError, match="3-D"):
        model.predict(np.zeros((8, 8), np.float32), spacing=(1, 1, 1))
    with pytest.raises(udavae.api.UserError, match="NaN"):
        model.predict(np.full((8, 8, 2), np.nan, np.float32), spacing=(1, 1, 1))


def test_evaluate_returns_the_summary(trained: tuple[udavae.Model, Path]) -> None:
    model, root = trained
    summary = udavae.evaluate(model, "test")
    assert summary["n_cases"] == 2 and set(summary["structures"]) == {"MYO", "LV", "RV"}
    folder = root / "run" / "eval" / "LGE_test_best"
    assert json.loads((folder / "summary.json").read_text())["mean_dice"] == summary["mean_dice"]
    assert (folder / "qc.csv").is_file()


def test_the_documented_one_liner(trained: tuple[udavae.Model, Path]) -> None:
    _, root = trained
    run = str(root / "run")
    code = (
        f"import numpy as np, udavae; m = udavae.load({run!r}); "
        "print(m.predict(np.random.rand(64, 64, 3).astype('float32'), spacing=(1, 1, 5)).shape)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "(64, 64, 3)"


def test_config_does_not_depend_on_import_order() -> None:
    first = "from udavae.config import Config; import json; print(json.dumps(Config().to_dict()))"
    after = "import udavae.methods; " + first
    outs = [
        subprocess.run([sys.executable, "-c", c], capture_output=True, text=True, timeout=120) for c in (first, after)
    ]
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    assert outs[0].stdout == outs[1].stdout and '"mi_prior": true' in outs[0].stdout


def test_a_key_the_method_does_not_use_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "train",
                "--dataset",
                str(tmp_path),
                "--out",
                str(tmp_path / "r"),
                "--preset",
                "noadapt",
                "method.mi_prior=false",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "method.mi_prior is not an option of method 'noadapt'" in err and "method.weights.seg" in err
    assert not (tmp_path / "r").exists()

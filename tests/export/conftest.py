"""A tiny trained model folder shared by the export tests (zip and MONAI bundle).

Its preprocessing resamples in-plane (``data.resample_mm``) and its post-processing keeps the largest component of
every structure, so the exported forms must reproduce both exactly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import udavae
from udavae.data.synthetic import generate_dataset
from udavae.engine import model_folder as mf
from udavae.evaluation.postprocess import PostProcessing


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: dict) -> dict[str, Path]:
    """``run`` (a trained model folder), ``data`` (its dataset) and ``scans`` (three LGE scans, copied)."""
    root = tmp_path_factory.mktemp("export")
    generate_dataset(root / "data", n_source=3, n_target=3, size=48, slices=3, seed=5, n_val=1)
    overrides = {**tiny_overrides, "optim.epochs": 1, "data.resample_mm": 1.6}
    cfg = udavae.Config.from_preset("noadapt", "tiny", overrides=overrides, data__dataset=str(root / "data"))
    udavae.train(cfg, root / "run")
    mf.save_postprocessing(root / "run", "best", PostProcessing(("MYO", "LV", "RV"), "every structure (test)"))
    shutil.copytree(root / "data" / "LGE" / "images", root / "scans")
    return {"run": root / "run", "data": root / "data", "scans": root / "scans"}

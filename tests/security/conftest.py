"""Shared fixtures of the trust-boundary tests (issue 21): one tiny trained model folder and its dataset.

The tests that alter a model folder or a dataset work on copies (``run_copy``, ``data_copy``), so the session's
model is trained once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from udavae.cli import main
from udavae.data.synthetic import generate_dataset

#: A tiny, fast training (a few seconds on one CPU core).
TINY_TRAIN = [
    "--preset",
    "udavae++",
    "--profile",
    "tiny",
    "--device",
    "cpu",
    "--seed",
    "3",
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


@pytest.fixture(scope="session")
def tiny_train_args() -> list[str]:
    """``udavae train`` arguments of a tiny run (without --dataset / --out)."""
    return list(TINY_TRAIN)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic two-domain dataset (48 x 48 x 3 volumes) and a model folder trained on it."""
    base = tmp_path_factory.mktemp("security")
    data = base / "data"
    generate_dataset(data, n_source=2, n_target=3, size=48, slices=3, seed=1, n_val=1)
    run = base / "run"
    assert main(["train", "--dataset", str(data), "--out", str(run), *TINY_TRAIN]) == 0
    return {"data": data, "run": run, "images": data / "LGE" / "images"}


@pytest.fixture
def run_copy(trained: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the trained model folder, free to alter."""
    return Path(shutil.copytree(trained["run"], tmp_path / "run"))


@pytest.fixture
def data_copy(trained: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of the dataset, free to alter."""
    return Path(shutil.copytree(trained["data"], tmp_path / "data"))

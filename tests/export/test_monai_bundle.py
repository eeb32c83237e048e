"""``udavae export RUN DIR --format monai-bundle``: ``python -m monai.bundle run`` writes the masks ``udavae predict``
writes, voxel for voxel (synthetic data here; the MS-CMRSeg LGE test cases with ``realdata``), and MONAI's own
checks pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from udavae.cli import main
from udavae.engine import model_folder as mf
from udavae.export.bundle import BUNDLE_FILES, SCHEMA_URL

pytest.importorskip("monai")
MSCMRSEG = Path(os.environ.get("UDAVAE_MSCMRSEG", Path(__file__).resolve().parents[3] / "shared/data/mscmrseg"))
#: Fields MONAI's metadata schema requires (meta_schema_20240725.json).
MONAI_REQUIRED = (
    "schema",
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)


def run_bundle(bundle: Path, scans: Path, out: Path) -> None:
    """``python -m monai.bundle run`` on the bundle's inference config, from another working folder."""
    pytest.importorskip("fire", reason="the bundle command line needs fire: pip install 'udavae[monai]'")
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(bundle / "configs" / "inference.json"),
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(scans),
        "--output_dir",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=out.parent, env=env, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]


def assert_same_masks(a: Path, b: Path) -> int:
    """Every mask of folder ``a`` equals the one of the same name in ``b`` (voxels, dtype, affine); returns how many
    masks hold foreground."""
    names = sorted(p.name for p in a.glob("*.nii.gz"))
    assert names and names == sorted(p.name for p in b.glob("*.nii.gz"))
    with_foreground = 0
    for name in names:
        x, y = nib.load(a / name), nib.load(b / name)
        vx, vy = np.asarray(x.dataobj), np.asarray(y.dataobj)
        assert vx.dtype == vy.dtype == np.int16, name
        assert np.array_equal(vx, vy), f"{name}: {int((vx != vy).sum())} voxels differ"
        assert np.allclose(x.affine, y.affine, atol=1e-5), name
        with_foreground += bool((vx != 0).any())
    return with_foreground


@pytest.fixture(scope="module")
def bundle(tiny_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    assert main(["export", str(tiny_run["run"]), str(out), "--format", "monai-bundle"]) == 0
    return out


def test_the_bundle_writes_the_masks_of_udavae_predict(tiny_run: dict[str, Path], bundle: Path, tmp_path: Path) -> None:
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()) == sorted(BUNDLE_FILES)
    run_bundle(bundle, tiny_run["scans"], tmp_path / "monai")
    args = [str(tiny_run["run"]), str(tiny_run["scans"]), str(tmp_path / "udavae"), "--device", "cpu", "--no-qc"]
    assert main(["predict", *args]) == 0
    assert assert_same_masks(tmp_path / "udavae", tmp_path / "monai") == 3


def test_metadata_and_network_pass_monai_verification(tiny_run: dict[str, Path], bundle: Path, tmp_path: Path) -> None:
    from monai.bundle import verify_metadata, verify_net_in_out

    meta_file, config_file = bundle / "configs" / "metadata.json", bundle / "configs" / "inference.json"
    meta = json.loads(meta_file.read_text())
    assert [k for k in MONAI_REQUIRED if k not in meta] == [] and meta["schema"] == SCHEMA_URL
    assert meta["required_packages_version"]["udavae"] and meta["label_codes"] == {
        "background": 0,
        "MYO": 200,
        "LV": 500,
        "RV": 600,
    }
    out = meta["network_data_format"]["outputs"]["pred"]
    assert out["num_channels"] == 4 and out["channel_def"] == {"0": "background", "1": "MYO", "2": "LV", "3": "RV"}
    _, info = mf.read_model_folder(tiny_run["run"])
    assert {k: meta["preprocessing"][k] for k in info.preprocessing.to_dict()} == info.preprocessing.to_dict()
    assert meta["preprocessing"]["target_spacing"] == [1.6, 1.6]
    verify_net_in_out(net_id="network_def", meta_file=str(meta_file), config_file=str(config_file), device="cpu", n=3)
    # The schema is downloaded unless a copy is given (offline: UDAVAE_MONAI_SCHEMA=path/to/meta_schema_20240725.json).
    schema = os.environ.get("UDAVAE_MONAI_SCHEMA") or str(tmp_path / "schema.json")
    try:
        verify_metadata(meta_file=str(meta_file), filepath=schema)
    except (OSError, RuntimeError) as exc:  # no network: MONAI's download fails
        if os.environ.get("UDAVAE_MONAI_SCHEMA"):
            raise
        pytest.skip(f"MONAI's metadata schema could not be downloaded ({type(exc).__name__}); set UDAVAE_MONAI_SCHEMA")


def test_a_bundle_from_the_zip_holds_the_same_weights(tiny_run: dict[str, Path], bundle: Path, tmp_path: Path) -> None:
    assert main(["export", str(tiny_run["run"]), str(tmp_path / "m.zip")]) == 0
    assert main(["export", str(tmp_path / "m.zip"), str(tmp_path / "b"), "--format", "monai-bundle"]) == 0
    a = torch.load(bundle / "models" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = Path("configs") / "inference.json"
    assert (bundle / config).read_text() == (tmp_path / "b" / config).read_text()
    best = torch.load(tiny_run["run"] / "checkpoints" / "best.pt", weights_only=True)["method"]
    assert all(torch.equal(v, best[k]) for k, v in a.items())  # the method's network, under the same names


def test_export_refuses_a_non_empty_folder(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["export", str(tiny_run["run"]), str(tmp_path), "--format", "monai-bundle"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


# --------------------------------------------------------------------------------------------- real data
def untrained_run(run: Path, dataset: Path) -> None:
    """A model folder with an untrained network (seed 0) on the ``cpu`` profile's preprocessing (a 2/3 pixel zoom),
    whose post-processing keeps the largest component of every structure."""
    from udavae.data.spec import DatasetSpec
    from udavae.engine.trainer import run_preprocessing
    from udavae.evaluation.postprocess import PostProcessing
    from udavae.methods import build_method
    from udavae.methods.presets import build_config

    spec = DatasetSpec.load(dataset)
    cfg = build_config("noadapt", "cpu", {"data.dataset": str(dataset), "model.base_width": 8})
    info = mf.ModelInfo(spec.labels, run_preprocessing(cfg, spec), spec.name, str(dataset), "C0", "LGE")
    run.mkdir()
    mf.write_model_folder(run, cfg, info)
    torch.manual_seed(0)
    mf.save_checkpoint(mf.checkpoint_path(run, "best"), {"method": build_method(cfg, 4).state_dict(), "epoch": 0})
    mf.write_selection(run, {"rule": "val-dice", "checkpoint": "best", "best_epoch": 0})
    mf.save_postprocessing(run, "best", PostProcessing(("MYO", "LV", "RV"), "every structure (test)"))


@pytest.mark.realdata
@pytest.mark.skipif(not (MSCMRSEG / "Patch192").is_dir(), reason="../shared/data/mscmrseg not available")
def test_bundle_masks_equal_udavae_masks_on_the_mscmrseg_lge_test_cases(tmp_path: Path) -> None:
    from udavae.data.spec import DatasetSpec

    assert main(["data", "import", "mscmrseg", str(MSCMRSEG / "Patch192"), str(tmp_path / "ds")]) == 0
    spec = DatasetSpec.load(tmp_path / "ds")
    scans = tmp_path / "lge_test"
    scans.mkdir()
    for case in spec.split("LGE", "test"):  # patients 6-45
        (scans / f"{case.id}.nii.gz").symlink_to(spec.path(case.image).resolve())
    untrained_run(tmp_path / "run", tmp_path / "ds")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "bundle"), "--format", "monai-bundle"]) == 0
    run_bundle(tmp_path / "bundle", scans, tmp_path / "monai")
    args = [str(tmp_path / "run"), str(scans), str(tmp_path / "udavae"), "--device", "cpu", "--no-qc"]
    assert main(["predict", *args]) == 0
    assert assert_same_masks(tmp_path / "udavae", tmp_path / "monai") == 40
    masks = (tmp_path / "udavae").glob("*.nii.gz")
    codes = set().union(*(np.unique(np.asarray(nib.load(p).dataobj)).tolist() for p in masks))
    assert len(codes - {0}) >= 2  # several structures: a comparison of non-trivial masks

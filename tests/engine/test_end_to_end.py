"""The whole job through the CLI on synthetic data: train -> kill -> resume -> evaluate -> predict -> report."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from udavae.cli import main
from udavae.data.synthetic import generate_dataset
from udavae.engine.model_folder import load_checkpoint

TRAIN_ARGS = [
    "--preset",
    "udavae++",
    "--profile",
    "tiny",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--epochs",
    "2",
    "--iters-per-epoch",
    "3",
    "--batch-size",
    "2",
    "model.base_width=4",
    "model.recon_width=8",
    "data.crop=48",
    "data.jitter=8",
]


def _udavae(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "udavae", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "UDAVAE_NO_MALLOC_TUNING": "1", **(env or {})},
        timeout=600,
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    generate_dataset(root, n_source=4, n_target=5, size=64, slices=4, seed=1, n_val=2)
    return root


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory, udavae_killed_after) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    straight, killed = base / "straight", base / "killed"
    r = _udavae("train", "--dataset", str(dataset), "--out", str(straight), *TRAIN_ARGS)
    assert r.returncode == 0, r.stderr
    # Simulated hard kill in the middle of epoch 2 (after 4 of 6 steps), then --resume.
    r = udavae_killed_after(4, "train", "--dataset", str(dataset), "--out", str(killed), *TRAIN_ARGS)
    assert r.returncode == 137
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["epoch"] == 1
    r = _udavae("train", "--dataset", str(dataset), "--out", str(killed), "--resume", *TRAIN_ARGS)
    assert r.returncode == 0, r.stderr
    assert f"resuming {killed} after epoch 1 of 2; best validation Dice" in r.stdout + r.stderr
    return {"straight": straight, "killed": killed, "dataset": dataset}


def test_resume_gives_identical_weights(trained: dict[str, Path]) -> None:
    a = load_checkpoint(trained["straight"] / "checkpoints" / "last.pt")
    b = load_checkpoint(trained["killed"] / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), k
    assert a["selection"] == b["selection"]
    for k, v in a["ema"].items():  # the weight average resumes exactly too
        assert torch.equal(v, b["ema"][k]), k
    rows = [json.loads(x) for x in (trained["killed"] / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert "val/dice_mean" in rows[-1] and "loss/total" in rows[-1]


def test_model_folder_is_self_contained(trained: dict[str, Path]) -> None:
    run = trained["straight"]
    for f in ("config.yaml", "model.json", "checkpoints/best.pt", "checkpoints/last.pt", "log.csv"):
        assert (run / f).is_file(), f
    info = json.loads((run / "model.json").read_text())
    assert info["labels"]["codes"] == {"MYO": 200, "LV": 500, "RV": 600}
    assert info["preprocessing"]["size"] == [64, 64]


def test_evaluate_matches_independent_dice(trained: dict[str, Path], tmp_path: Path) -> None:
    run, data = trained["straight"], trained["dataset"]
    out = tmp_path / "ev"
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu", "--out", str(out), "--save-masks"]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert {r["structure"] for r in rows} == {"MYO", "LV", "RV"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "test" and summary["n_cases"] == 3
    codes = {"MYO": 200, "LV": 500, "RV": 600}
    for r in rows:
        pred = np.asarray(nib.load(out / "masks" / f"{r['case']}.nii.gz").dataobj)
        gt = np.asarray(nib.load(data / "LGE" / "labels" / f"{r['case']}.nii.gz").dataobj)
        p, g = pred == codes[r["structure"]], gt == codes[r["structure"]]
        denom = p.sum() + g.sum()
        expected = 2 * (p & g).sum() / denom if denom else float("nan")
        got = float(r["dice"])
        assert (np.isnan(expected) and np.isnan(got)) or got == pytest.approx(expected, abs=1e-9)
    per = [float(r["dice"]) for r in rows if r["structure"] == "LV"]
    assert summary["structures"]["LV"]["dice"]["mean"] == pytest.approx(np.nanmean(per), abs=1e-9)


def test_predict_keeps_geometry_and_codes(trained: dict[str, Path], tmp_path: Path) -> None:
    src = trained["dataset"] / "LGE" / "images"
    # An input with another grid: different in-plane size, spacing and an oblique affine.
    img = nib.load(src / "case001.nii.gz")
    data = np.asarray(img.dataobj)[:50, 7:, :]
    aff = img.affine.copy()
    aff[:3, 3] += [3.5, -2.0, 11.0]
    odd = nib.Nifti1Image(data, aff)
    odd.header.set_zooms((0.9, 1.1, 6.0))
    inp = tmp_path / "in"
    inp.mkdir()
    nib.save(odd, inp / "odd.nii.gz")
    nib.save(img, inp / "case001.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", str(trained["straight"]), str(inp), str(out), "--samples", "3", "--device", "cpu"]) == 0
    for name in ("odd", "case001"):
        ref = nib.load(inp / f"{name}.nii.gz")
        m = nib.load(out / f"{name}.nii.gz")
        assert m.shape == ref.shape
        assert np.allclose(m.affine, ref.affine)
        assert np.allclose(m.header.get_zooms(), ref.header.get_zooms())
        assert set(np.unique(np.asarray(m.dataobj)).tolist()) <= {0, 200, 500, 600}
        u = np.asarray(nib.load(out / f"{name}_uncertainty.nii.gz").dataobj)
        assert u.shape == ref.shape and u.min() >= 0 and u.max() <= 1


def test_predict_bf16_agrees_with_fp32(trained: dict[str, Path], tmp_path: Path) -> None:
    """--amp bf16 at prediction time: same geometry, and nearly every voxel gets the fp32 label."""
    inp = trained["dataset"] / "LGE" / "images" / "case001.nii.gz"
    masks = {}
    for amp in ("none", "bf16"):
        out = tmp_path / amp
        assert main(["predict", str(trained["straight"]), str(inp), str(out), "--device", "cpu", "--amp", amp]) == 0
        masks[amp] = nib.load(out / "case001.nii.gz")
    assert np.allclose(masks["bf16"].affine, masks["none"].affine)
    a, b = (np.asarray(m.dataobj) for m in masks.values())
    assert a.shape == b.shape
    # The demo-sized model is barely trained (near-tied classes flip), so compare the probabilities.
    from udavae.engine.inference import Predictor
    from udavae.engine.model_folder import load_trained

    _, info, method, _ = load_trained(trained["straight"], "best", torch.device("cpu"))
    slices = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    p32, p16 = (
        Predictor(method.net, info.preprocessing, torch.device("cpu"), amp=amp).probabilities(slices)
        for amp in ("none", "bf16")
    )
    assert p16.dtype == torch.float32 and p16.shape == p32.shape
    assert (p16 - p32).abs().mean().item() < 0.04  # measured 0.016: bf16 rounding through a tiny net
    assert (p16 - p32).abs().mean().item() > 0  # bf16 did run


def test_report_writes_figures(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "rep"
    assert main(["report", str(trained["straight"]), "--out", str(out), "--cases", "2", "--device", "cpu"]) == 0
    for f in ("overlays.png", "reconstructions.png", "training_curves.png"):
        assert (out / f).stat().st_size > 5000
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------- bad inputs


def test_missing_or_corrupt_model_folder(tmp_path: Path, trained: dict[str, Path], capsys) -> None:
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("config.yaml", "model.json"):
        (broken / f).write_bytes((trained["straight"] / f).read_bytes())
    (broken / "checkpoints").mkdir()
    (broken / "checkpoints" / "best.pt").write_bytes(b"garbage")
    assert main(["predict", str(broken), str(trained["dataset"] / "LGE" / "images"), str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and "corrupt" in err


def test_wrong_dimension_input_writes_nothing(tmp_path: Path, trained: dict[str, Path], capsys) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), inp / "a4d.nii.gz")
    nib.save(nib.load(trained["dataset"] / "LGE" / "images" / "case001.nii.gz"), inp / "b_ok.nii.gz")
    out = tmp_path / "out"
    assert main(["predict", str(trained["straight"]), str(inp), str(out)]) == 2
    err = capsys.readouterr().err
    assert "a4d.nii.gz" in err and "3-D" in err
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_output_folder(tmp_path: Path, trained: dict[str, Path], capsys) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/udavae-out")  # not creatable even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "sub"
    inp = trained["dataset"] / "LGE" / "images" / "case001.nii.gz"
    assert main(["predict", str(trained["straight"]), str(inp), str(target)]) == 2
    assert str(target) in capsys.readouterr().err


def test_dataset_without_validation_split(tmp_path: Path, dataset: Path, capsys) -> None:
    spec = json.loads((dataset / "dataset.json").read_text())
    spec["splits"]["LGE"].pop("val")
    copy = tmp_path / "noval"
    copy.mkdir()
    for d in ("C0", "LGE"):
        (copy / d).symlink_to(dataset / d)
    (copy / "dataset.json").write_text(json.dumps(spec))
    out = tmp_path / "run"
    assert main(["train", "--dataset", str(copy), "--out", str(out), *TRAIN_ARGS]) == 0
    record = json.loads((out / "selection.json").read_text())
    assert record["rule"] == "label-free" and record["first_epoch"] == 2  # the second half of 2 epochs
    score = record["scores"][-1]["score"]
    chosen = "best" if score is not None and math.isfinite(score) else "last"  # "last" where no heart was predicted
    assert (record["checkpoint"], record["best_epoch"]) == ((chosen, 2) if chosen == "best" else (chosen, -1))
    printed = capsys.readouterr().out
    assert f"selection: label-free -> checkpoint '{chosen}' (epoch 2, the only epoch eligible)" in printed
    assert len(record["source_holdout"]) == 1  # 10% of the source cases, at least one, scored every epoch
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert "src/dice_mean" in rows[-1] and "val/dice_mean" not in rows[-1]
    assert (
        main(["train", "--dataset", str(copy), "--out", str(tmp_path / "r2"), *TRAIN_ARGS, "train.selection=val-dice"])
        == 2
    )
    assert "needs labelled validation cases" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(dataset: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """A loss that turns NaN in epoch 2 stops training with a clear message; epoch 1's checkpoint survives."""
    from udavae.methods.vae import VAEMethod

    real_forward = VAEMethod.forward
    calls = {"n": 0}

    def poisoned(self, source, target=None):  # noqa: ANN001
        out = real_forward(self, source, target)
        calls["n"] += 1
        if calls["n"] > 4:  # epoch 1 = 3 steps; NaN from the 2nd step of epoch 2
            out["total"] = out["total"] * float("nan")
        return out

    monkeypatch.setattr(VAEMethod, "forward", poisoned)
    out = tmp_path / "run"
    args = [a for a in TRAIN_ARGS]
    assert main(["train", "--dataset", str(dataset), "--out", str(out), *args, "runtime.log_every=1"]) == 2
    err = capsys.readouterr().err
    assert "NaN/Inf" in err and "epoch 2" in err and "last.pt" in err
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())

"""``udavae predict`` never destroys or half-writes data; written files follow the umask; ``report --help``.

Each test reproduces a reported defect: predicting into the input folder, a bad input leaving partial output,
stale uncertainty maps, files always written with mode 0600, undocumented report options.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from udavae.cli import main
from udavae.data.synthetic import generate_dataset
from udavae.fileio import atomic_write, write_text

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


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny trained model folder and the folder of its target-domain images."""
    base = tmp_path_factory.mktemp("predict_safety")
    data = base / "data"
    generate_dataset(data, n_source=2, n_target=3, size=48, slices=3, seed=1, n_val=1)
    run = base / "run"
    assert main(["train", "--dataset", str(data), "--out", str(run), *TRAIN_ARGS]) == 0
    return {"run": run, "images": data / "LGE" / "images"}


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _inputs(model: dict[str, Path], folder: Path, *names: str) -> Path:
    """Copy good target images into ``folder`` under ``names`` (``.nii.gz``)."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(model["images"].iterdir())
    for i, name in enumerate(names):
        (folder / f"{name}.nii.gz").write_bytes(sources[i % len(sources)].read_bytes())
    return folder


def _nan_image(path: Path, model: dict[str, Path]) -> None:
    img = nib.load(min(model["images"].iterdir()))
    data = np.asarray(img.dataobj, dtype=np.float32).copy()
    data[1, 2, 0] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), path)


def _truncated_image(path: Path, model: dict[str, Path]) -> None:
    good = min(model["images"].iterdir()).read_bytes()
    path.write_bytes(good[: len(good) // 2])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _predict(model: dict[str, Path], inp: Path | str, out: Path | str, *extra: str) -> int:
    return main(["predict", str(model["run"]), str(inp), str(out), "--device", "cpu", *extra])


# ------------------------------------------------------------ 1. never overwrite the inputs


@pytest.mark.parametrize("spelling", ["same", "dot-dot", "symlink"])
def test_predict_refuses_output_folder_equal_to_input_folder(
    model: dict[str, Path], tmp_path: Path, spelling: str, capsys
) -> None:
    inp = _inputs(model, tmp_path / "in", "a", "b")
    before = _snapshot(inp)
    out = {"same": inp, "dot-dot": inp / ".." / "in" / ".", "symlink": tmp_path / "link"}[spelling]
    if spelling == "symlink":
        out.symlink_to(inp, target_is_directory=True)
    assert _predict(model, inp, out) == 2
    err = capsys.readouterr().err
    assert "is the input folder" in err and err.count("\n") == 1
    assert _snapshot(inp) == before  # same names, same bytes: no mask, no uncertainty map, no temp file


def test_predict_refuses_output_file_equal_to_input_file(model: dict[str, Path], tmp_path: Path, capsys) -> None:
    inp = _inputs(model, tmp_path / "x", "a")
    before = _snapshot(inp)
    assert _predict(model, inp / "a.nii.gz", tmp_path / "x" / ".", "--samples", "2") == 2
    err = capsys.readouterr().err
    assert "would overwrite the input" in err and "a.nii.gz" in err
    assert _snapshot(inp) == before


def test_predict_single_file_beside_itself_with_other_name_is_allowed(model: dict[str, Path], tmp_path: Path) -> None:
    """``x/a.nii`` -> ``x/a.nii.gz`` overwrites nothing, so it is not refused."""
    x = tmp_path / "x"
    x.mkdir()
    src = nib.load(min(model["images"].iterdir()))
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), src.affine), x / "a.nii")
    before = (x / "a.nii").read_bytes()
    assert _predict(model, x / "a.nii", x) == 0
    assert (x / "a.nii").read_bytes() == before
    assert nib.load(x / "a.nii.gz").shape == src.shape


def test_predict_refuses_two_inputs_with_the_same_output(model: dict[str, Path], tmp_path: Path, capsys) -> None:
    inp = _inputs(model, tmp_path / "in", "a")
    src = nib.load(inp / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(src.dataobj), src.affine), inp / "a.nii")
    out = tmp_path / "out"
    assert _predict(model, inp, out) == 2
    err = capsys.readouterr().err
    assert "a.nii " in err and "a.nii.gz" in err and "both" in err
    assert not out.exists()


# ------------------------------------------------------------ 2. all or nothing, --skip-bad, stale maps


def test_predict_bad_inputs_write_nothing_and_are_all_named(model: dict[str, Path], tmp_path: Path, capsys) -> None:
    inp = _inputs(model, tmp_path / "in", "a_good", "d_good")
    _nan_image(inp / "b_nan.nii.gz", model)
    _truncated_image(inp / "c_cut.nii.gz", model)
    out = tmp_path / "new" / "out"
    assert _predict(model, inp, out) == 2
    assert not out.exists() and not out.parent.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    assert "b_nan.nii.gz: image contains NaN" in err
    assert "c_cut.nii.gz: corrupt or truncated" in err
    assert "a_good" not in err and "d_good" not in err
    assert "--skip-bad" in err


@pytest.mark.parametrize("bad", [_nan_image, _truncated_image])
def test_predict_single_bad_input_creates_no_folder(
    model: dict[str, Path],
    tmp_path: Path,
    bad,  # noqa: ANN001
    capsys,
) -> None:
    inp = tmp_path / "scan.nii.gz"
    bad(inp, model)
    out = tmp_path / "out"
    assert _predict(model, inp, out) == 2
    assert "scan.nii.gz" in capsys.readouterr().err
    assert not out.exists()


def test_predict_skip_bad_writes_good_masks_and_exits_1(model: dict[str, Path], tmp_path: Path, capsys) -> None:
    inp = _inputs(model, tmp_path / "in", "a_good", "c_good")
    _nan_image(inp / "b_nan.nii.gz", model)
    out = tmp_path / "out"
    assert _predict(model, inp, out, "--skip-bad") == 1
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a_good.nii.gz", "c_good.nii.gz", "qc.csv"]
    assert "skipped" in captured.err and "b_nan.nii.gz: image contains NaN" in captured.err
    assert "wrote 2 mask(s)" in captured.out


def test_predict_skip_bad_with_only_bad_inputs_fails(model: dict[str, Path], tmp_path: Path, capsys) -> None:
    inp = tmp_path / "in"
    inp.mkdir()
    _nan_image(inp / "b_nan.nii.gz", model)
    out = tmp_path / "out"
    assert _predict(model, inp, out, "--skip-bad") == 2
    assert "b_nan.nii.gz" in capsys.readouterr().err
    assert not out.exists()


def test_predict_without_samples_removes_stale_uncertainty(model: dict[str, Path], tmp_path: Path, capsys) -> None:
    inp = _inputs(model, tmp_path / "in", "a", "b")
    out = tmp_path / "out"
    assert _predict(model, inp, out, "--samples", "2") == 0
    assert (out / "a_uncertainty.nii.gz").is_file() and (out / "b_uncertainty.nii.gz").is_file()
    capsys.readouterr()
    (inp / "b.nii.gz").unlink()  # b is not predicted again: its mask and map stay a consistent pair
    assert _predict(model, inp, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", "b_uncertainty.nii.gz", "qc.csv"]
    assert "a_uncertainty.nii.gz" in capsys.readouterr().out


# ------------------------------------------------------------ 3. permissions follow the umask


@pytest.mark.parametrize(
    ("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["umask022", "umask077", "umask002"]
)
def test_atomic_writes_follow_umask(tmp_path: Path, mask: int, mode: int) -> None:
    with umask(mask):
        a = write_text(tmp_path / "a.txt", "x")
        b = atomic_write(tmp_path / "b.bin", lambda p: p.write_bytes(b"y"))
    assert stat.S_IMODE(a.stat().st_mode) == mode
    assert stat.S_IMODE(b.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin"]  # no temporary file left


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)], ids=["umask022", "umask077"])
def test_predicted_mask_mode_follows_umask(model: dict[str, Path], tmp_path: Path, mask: int, mode: int) -> None:
    inp = _inputs(model, tmp_path / "in", "a")
    out = tmp_path / "out"
    with umask(mask):
        assert _predict(model, inp, out, "--samples", "2") == 0
    for name in ("a.nii.gz", "a_uncertainty.nii.gz"):
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name


# ------------------------------------------------------------ 4. report --help


def test_report_help_documents_split_checkpoint_and_outputs(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "best validation Dice" in text and "final epoch" in text
    assert "split of the target domain" in text and "overlay" in text
    for f in ("overlays.png", "reconstructions.png", "training_curves.png"):
        assert f in text

"""``udavae export RUN model.zip``: the zip alone predicts what the run folder predicts; a damaged, altered,
foreign or newer zip is one clear error and nothing is written."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import udavae
from udavae.cli import main
from udavae.export.archive import FORMAT_VERSION, MANIFEST, export_zip


@pytest.fixture(scope="module")
def exported(tiny_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported, then copied into another folder (as to another machine)."""
    out = tmp_path_factory.mktemp("zip")
    assert main(["export", str(tiny_run["run"]), str(out / "made.zip")]) == 0
    elsewhere = out / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(out / "made.zip", elsewhere / "model.zip")
    return elsewhere / "model.zip"


def masks(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mask name -> (voxels, affine) of every NIfTI file in ``folder``."""
    out = {}
    for f in sorted(folder.glob("*.nii.gz")):
        img = nib.load(f)
        out[f.name] = (np.asarray(img.dataobj), img.affine)
    return out


def test_predict_from_the_zip_equals_predict_from_the_run(
    tiny_run: dict[str, Path], exported: Path, tmp_path: Path
) -> None:
    run, scans = tiny_run["run"], tiny_run["scans"]
    assert main(["predict", str(run), str(scans), str(tmp_path / "from_run"), "--device", "cpu"]) == 0
    hidden = run.with_name("run_moved")
    run.rename(hidden)  # the zip needs nothing of the run folder
    try:
        assert main(["predict", str(exported), str(scans), str(tmp_path / "from_zip"), "--device", "cpu"]) == 0
    finally:
        hidden.rename(run)
    a, b = masks(tmp_path / "from_run"), masks(tmp_path / "from_zip")
    assert list(a) == list(b) == ["case001.nii.gz", "case002.nii.gz", "case003.nii.gz"]
    for name in a:
        assert a[name][0].dtype == b[name][0].dtype == np.int16
        assert np.array_equal(a[name][0], b[name][0]) and np.array_equal(a[name][1], b[name][1])
    assert any(np.isin(v, [200, 500, 600]).any() for v, _ in a.values())  # not a trivial comparison
    assert (tmp_path / "from_zip" / "qc.csv").read_text() == (tmp_path / "from_run" / "qc.csv").read_text().replace(
        str(tmp_path / "from_run"), str(tmp_path / "from_zip")
    )


def test_the_zip_holds_the_weights_only_and_no_case_ids(tiny_run: dict[str, Path], exported: Path) -> None:
    with zipfile.ZipFile(exported) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read(MANIFEST))
        blobs = {n: zf.read(n) for n in names}
    assert names == {
        MANIFEST,
        "config.yaml",
        "model.json",
        "selection.json",
        "postprocessing.json",
        "training_data.json",
        "checkpoints/best.pt",
    }
    assert manifest["format_version"] == FORMAT_VERSION and manifest["udavae_version"] == udavae.__version__
    assert manifest["checkpoint"] == "best" and manifest["epoch"] == 1
    for name, entry in manifest["files"].items():
        assert entry == {"size": len(blobs[name]), "sha256": hashlib.sha256(blobs[name]).hexdigest()}
    state = torch.load(io.BytesIO(blobs["checkpoints/best.pt"]), weights_only=True)
    assert set(state) == {"method", "epoch"}  # no optimiser, no random state, no history
    full = torch.load(tiny_run["run"] / "checkpoints" / "best.pt", weights_only=True)
    assert all(torch.equal(state["method"][k], v) for k, v in full["method"].items())
    assert json.loads(blobs["postprocessing.json"])["best"]["largest_component"] == ["MYO", "LV", "RV"]
    data = json.loads(blobs["training_data.json"])
    assert data["source"] == {"domain": "C0", "cases": 3, "labelled": 3, "splits": {"train": 3}}
    assert data["target"] == {"domain": "LGE", "cases": 3, "labelled": 3, "splits": {"val": 1, "test": 2}}
    assert data["target_cases_scored_label_free"] == 1
    text = b"".join(v for n, v in blobs.items() if not n.endswith(".pt"))
    assert b"case00" not in text  # no case id anywhere


def test_load_and_model_info_take_the_zip(
    tiny_run: dict[str, Path], exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = udavae.load(exported, device="cpu")
    assert model.run == exported and model.checkpoint == "best" and model.epoch == 1
    scan = tiny_run["scans"] / "case002.nii.gz"
    reference = udavae.load(tiny_run["run"], device="cpu").predict(scan)
    assert np.array_equal(model.predict(scan).codes, reference.codes)
    folder = model._trained.run
    del model
    import gc

    gc.collect()
    assert not folder.exists()  # the extracted folder goes with the model
    with pytest.raises(udavae.api.UserError, match="holds the 'best' weights only"):
        udavae.load(exported, checkpoint="last", device="cpu")
    capsys.readouterr()
    assert main(["model", "info", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "every sha256 verified" in out and "MYO=200, LV=500, RV=600" in out
    assert "C0: 3 cases (3 labelled; train 3) -> LGE: 3 cases (3 labelled; val 1, test 2)" in out


def test_evaluate_and_export_take_the_zip(tiny_run: dict[str, Path], exported: Path, tmp_path: Path) -> None:
    run, data = str(tiny_run["run"]), str(tiny_run["data"])
    common = ["--dataset", data, "--device", "cpu", "--no-qc"]
    assert main(["evaluate", run, "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["evaluate", str(exported), "--out", str(tmp_path / "b"), *common]) == 0
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()
    assert main(["evaluate", str(exported), *common]) == 2  # a zip is never written to: --out is needed
    assert main(["export", str(exported), str(tmp_path / "again.zip")]) == 0
    with zipfile.ZipFile(exported) as a, zipfile.ZipFile(tmp_path / "again.zip") as b:
        first, second = json.loads(a.read(MANIFEST))["files"], json.loads(b.read(MANIFEST))["files"]
    assert {k: v for k, v in first.items() if k != "checkpoints/best.pt"} == {
        k: v for k, v in second.items() if k != "checkpoints/best.pt"
    }


def test_export_refuses_a_folder_and_a_missing_checkpoint(tiny_run: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(udavae.api.UserError, match="is a folder"):
        export_zip(tiny_run["run"], tmp_path)
    with pytest.raises(udavae.api.UserError, match="epoch_007.pt not found"):
        export_zip(tiny_run["run"], tmp_path / "m.zip", checkpoint="epoch_007")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ bad zips
def rewrite(src: Path, dst: Path, change) -> Path:  # noqa: ANN001
    """Copy the zip ``src`` to ``dst`` with ``change(members, manifest)`` applied (both dicts, edited in place)."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop(MANIFEST))
    change(members, manifest)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest))
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def _altered_config(members: dict, manifest: dict) -> None:
    members["config.yaml"] = members["config.yaml"].replace(b"base_width: 4", b"base_width: 5")


def _newer(members: dict, manifest: dict) -> None:
    manifest.update(format_version=FORMAT_VERSION + 1, udavae_version="9.1.0", requires_udavae="9.0.0")


def _traversal(members: dict, manifest: dict) -> None:
    members["../evil.txt"] = b"x"
    manifest["files"]["../evil.txt"] = {"size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}


def _unexpected(members: dict, manifest: dict) -> None:
    members["payload.py"] = b"import os"
    manifest["files"]["payload.py"] = {"size": 9, "sha256": hashlib.sha256(b"import os").hexdigest()}


def _bomb(members: dict, manifest: dict) -> None:
    zeros = bytes(64 << 20)
    members["checkpoints/best.pt"] = zeros
    manifest["files"]["checkpoints/best.pt"] = {"size": len(zeros), "sha256": hashlib.sha256(zeros).hexdigest()}


def _member_removed(members: dict, manifest: dict) -> None:
    del members["model.json"]


BAD = {
    "checksum mismatch": (_altered_config, "checksum mismatch for 'config.yaml'"),
    "newer format": (_newer, r"needs udavae >= 9\.0\.0"),
    "path traversal": (_traversal, "absolute or '..' path"),
    "unexpected member": (_unexpected, "unexpected member 'payload.py'"),
    "zip bomb": (_bomb, "expands"),
    "member removed": (_member_removed, "model.json missing"),
}


def check_refused(zip_path: Path, scans: Path, out: Path, match: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``predict`` from ``zip_path``: exit 2, one error line matching ``match``, no output, no extracted folder."""
    capsys.readouterr()
    assert main(["predict", str(zip_path), str(scans), str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("udavae predict: error: ")
    assert re.search(match, err), err
    assert not out.exists()


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_zip_is_one_error_and_writes_nothing(
    case: str,
    tiny_run: dict[str, Path],
    exported: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    change, match = BAD[case]
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    bad = rewrite(exported, tmp_path / "bad.zip", change)
    check_refused(bad, tiny_run["scans"], tmp_path / "out", match, capsys)
    assert not list(temp.iterdir())  # nothing extracted is left behind


def test_manifest_missing_truncated_corrupted_and_foreign_files(
    tiny_run: dict[str, Path], exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scans, out = tiny_run["scans"], tmp_path / "out"
    with zipfile.ZipFile(exported) as zf, zipfile.ZipFile(tmp_path / "plain.zip", "w") as other:
        for name in zf.namelist():
            if name != MANIFEST:
                other.writestr(name, zf.read(name))
    check_refused(tmp_path / "plain.zip", scans, out, "no manifest.json in it: not a udavae model zip", capsys)
    data = exported.read_bytes()
    (tmp_path / "truncated.zip").write_bytes(data[: len(data) // 2])
    check_refused(tmp_path / "truncated.zip", scans, out, "corrupted or truncated", capsys)
    with zipfile.ZipFile(exported) as zf:
        info = zf.getinfo("checkpoints/best.pt")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    damaged = bytearray(data)
    damaged[start : start + 64] = bytes(b ^ 0xFF for b in damaged[start : start + 64])
    (tmp_path / "damaged.zip").write_bytes(bytes(damaged))
    check_refused(tmp_path / "damaged.zip", scans, out, "corrupted|checksum mismatch", capsys)
    (tmp_path / "notes.zip").write_text("not a zip")
    check_refused(tmp_path / "notes.zip", scans, out, "not a zip file", capsys)


def test_a_symlink_member_is_refused(
    tiny_run: dict[str, Path], exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with zipfile.ZipFile(exported) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)
            if name == "model.json":
                info.external_attr = 0o120777 << 16  # a symbolic link to /etc/passwd
                data = b"/etc/passwd"
            zf.writestr(info, data)
    check_refused(tmp_path / "link.zip", tiny_run["scans"], tmp_path / "out", "is a symbolic link", capsys)

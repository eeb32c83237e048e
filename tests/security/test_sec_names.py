"""Issue 21, item 2: names read from files never lead a write out of its folder.

Case ids, domain and split names of ``dataset.json`` and the domains of ``model.json`` become file and folder
names; one safe pattern (``udavae.fileio.SAFE_NAME_RULE``) is enforced where they are read, ``data check``
reports the offending entry, and every output path is checked to stay inside its folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from udavae.cli import main
from udavae.data.check import check_dataset
from udavae.data.importers import import_folder
from udavae.data.spec import DatasetSpec
from udavae.errors import DataError, UserError
from udavae.fileio import inside, is_safe_name
from udavae.layout import eval_folder


def _edit_json(path: Path, edit) -> None:  # noqa: ANN001
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


def _rename_case(d: dict, domain: str, old: str, new: str) -> None:
    for case in d["domains"][domain]:
        if case["id"] == old:
            case["id"] = new
    for split in d["splits"].get(domain, {}).values():
        split[:] = [new if i == old else i for i in split]


@pytest.mark.parametrize("name", ["case001", "LGE", "patient_1.v2", "a-b", "A9"])
def test_safe_names_accepted(name: str) -> None:
    assert is_safe_name(name)


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", "/abs", ".hidden", "a..b", "a b", "x" * 129, "é", 5])
def test_unsafe_names_refused(name: object) -> None:
    assert not is_safe_name(name)


def test_escaping_case_id_is_refused_where_read_and_nothing_escapes(
    trained: dict[str, Path], data_copy: Path, tmp_path: Path, capsys
) -> None:
    bad = "../../ESCAPED"  # from OUT/masks/ this lands in tmp_path
    _edit_json(data_copy / "dataset.json", lambda d: _rename_case(d, "LGE", "case003", bad))
    with pytest.raises(DataError, match=r"case id '\.\./\.\./ESCAPED' of domain 'LGE'"):
        DatasetSpec.load(data_copy)
    # data check names the entry (exit 2)
    assert main(["data", "check", str(data_copy)]) == 2
    err = capsys.readouterr().err
    assert "'../../ESCAPED'" in err and "dataset.json" in err
    # evaluate --save-masks writes nothing, inside or outside OUT
    out = tmp_path / "o"
    assert (
        main(
            [
                "evaluate",
                str(trained["run"]),
                "--dataset",
                str(data_copy),
                "--save-masks",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--no-qc",
            ]
        )
        == 2
    )
    assert "'../../ESCAPED'" in capsys.readouterr().err
    assert not list(tmp_path.rglob("ESCAPED*")) and not out.exists()


def test_escaping_domain_name_is_refused(trained: dict[str, Path], data_copy: Path, tmp_path: Path, capsys) -> None:
    bad = "../../ESCDOM"

    def rename(d: dict) -> None:
        d["domains"][bad] = d["domains"].pop("LGE")
        d["splits"][bad] = d["splits"].pop("LGE")

    _edit_json(data_copy / "dataset.json", rename)
    assert main(["data", "check", str(data_copy)]) == 2
    assert "domain '../../ESCDOM'" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                str(trained["run"]),
                "--dataset",
                str(data_copy),
                "--domain",
                bad,
                "--device",
                "cpu",
                "--no-qc",
            ]
        )
        == 2
    )
    assert "domain '../../ESCDOM'" in capsys.readouterr().err
    assert not list(tmp_path.rglob("ESCDOM*")) and not list(trained["run"].parent.rglob("ESCDOM*"))


def test_escaping_split_name_is_reported_by_data_check(data_copy: Path, capsys) -> None:
    _edit_json(data_copy / "dataset.json", lambda d: d["splits"]["LGE"].update({"../up": ["case001"]}))
    problems = check_dataset(data_copy)
    assert any("split '../up' of domain 'LGE'" in p.message for p in problems)
    assert main(["data", "check", str(data_copy)]) == 2
    assert "split '../up'" in capsys.readouterr().err


def test_model_json_with_escaping_target_is_refused(run_copy: Path, tmp_path: Path, capsys) -> None:
    _edit_json(run_copy / "model.json", lambda d: d.update(target="../../ESCDOM"))
    assert main(["evaluate", str(run_copy), "--device", "cpu", "--no-qc"]) == 2
    err = capsys.readouterr().err
    assert str(run_copy / "model.json") in err and "'../../ESCDOM'" in err
    assert not list(tmp_path.rglob("ESCDOM*"))


def test_import_refuses_unsafe_case_ids_before_writing(trained: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "src"
    for sub in ("images", "labels"):
        (src / sub).mkdir(parents=True)
        shutil.copy(trained["data"] / "C0" / sub / "case001.nii.gz", src / sub / "case 1.nii.gz")
    with pytest.raises(UserError, match=r"case id 'case 1' of domain 'C0'"):
        import_folder(src, tmp_path / "out", "C0", {"MYO": 200, "LV": 500, "RV": 600})
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="not a safe name"):
        import_folder(src, tmp_path / "out", "../C0", {"MYO": 200, "LV": 500, "RV": 600})


def test_output_paths_stay_inside_their_folder(tmp_path: Path) -> None:
    assert inside(tmp_path, "masks", "case1.nii.gz") == tmp_path / "masks" / "case1.nii.gz"
    for parts in (("..", "x"), ("../x.nii.gz",), ("/etc/x",), ("a", "..", "..", "b")):
        with pytest.raises(UserError, match="leaves the folder"):
            inside(tmp_path, *parts)
    with pytest.raises(UserError, match="leaves the folder"):
        eval_folder(tmp_path / "run", "../../ESCDOM", "test", "best")

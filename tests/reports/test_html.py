"""The HTML reports (udavae.reports.html): self-contained, cases in review order with the doubtful ones first and
marked, metrics read back from the run's files, the viewer's size limits, and the page rendered in headless
Chromium where it is installed."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import udavae
from udavae.cli import main
from udavae.evaluation.qc import describe_qc_check, qc_check, read_qc_csv, write_qc_csv
from udavae.reports.viewer import MAX_SIDE, MAX_SLICES, encode_case


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: dict) -> Path:
    """A tiny trained model folder with ``eval/LGE_test_best`` (metrics.csv, summary.json, qc.csv of 5 cases)."""
    from udavae.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("html")
    generate_dataset(root / "data", n_source=3, n_target=6, size=64, slices=4, seed=4, n_val=1)
    overrides = {**tiny_overrides, "optim.epochs": 1}
    cfg = udavae.Config.from_preset("noadapt", "tiny", overrides=overrides, data__dataset=str(root / "data"))
    udavae.train(cfg, root / "run")
    udavae.evaluate(root / "run", "test", device="cpu")
    return root / "run"


def cases_json(page: str) -> list[dict]:
    found = re.search(r'<script type="application/json" id="udavae-cases">(.*?)</script>', page, re.S)
    assert found is not None
    return json.loads(found.group(1))


def assert_self_contained(page: str) -> None:
    """Every src/href is a data: URI (or an anchor), and nothing outside the embedded data names a network place."""
    links = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]*)""", page, re.I)
    assert all(v.startswith(("data:", "#")) for v in links), [v[:40] for v in links if not v.startswith("data:")]
    text = re.sub(r"data:[^\"']*", "", page)
    text = re.sub(r'<script type="application/json".*?</script>', "", text, flags=re.S)
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\(", text, re.I)


def card_order(page: str) -> list[tuple[str, bool]]:
    """(case id, marked doubtful) of every case card, in page order."""
    return [
        (m.group(2), "doubtful" in m.group(1))
        for m in re.finditer(r'<div class="(case[^"]*)"><h3>([^<]*)(?:<span class="badge">)?', page)
    ]


def test_run_report_html(evaluated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["report", str(evaluated), "--html", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    page = (evaluated / "report" / "report.html").read_text(encoding="utf-8")
    assert (evaluated / "report" / "overlays.png").is_file()  # the PNG figures are still written
    assert (evaluated / "report" / "training_curves.png").is_file()
    assert_self_contained(page)
    # metrics read back from summary.json and metrics.csv
    summary = json.loads((evaluated / "eval" / "LGE_test_best" / "summary.json").read_text())
    myo = summary["structures"]["MYO"]["dice"]
    assert f"{100 * myo['mean']:.2f} ± {100 * myo['std']:.2f}" in page
    assert f"mean Dice {100 * summary['mean_dice']:.2f} %" in page
    assert '<img class="curves" alt="training curves" src="data:image/png;base64,' in page
    # cases in qc.csv order, doubtful first and marked with their reason
    qc = read_qc_csv(evaluated / "eval" / "LGE_test_best" / "qc.csv")
    assert len(qc) == 5 and qc[0]["doubtful"]  # 5 cases scored together: at least the worst is doubtful
    # the check of the flag against these labelled cases, as evaluate computed it from qc.csv
    check = summary["qc_check"]
    assert {k: check[k] for k in ("n", "worst_k", "worst_caught")} == {
        k: v for k, v in qc_check(qc).items() if k in ("n", "worst_k", "worst_caught")
    }
    assert describe_qc_check(check).replace("<", "&lt;") in page
    assert card_order(page) == [(r["case"], r["doubtful"]) for r in qc]
    for r in qc:
        if r["doubtful"]:
            assert f'<p class="reason">{r["reason"].replace("<", "&lt;")}</p>' in page
    cases = cases_json(page)
    assert [c["id"] for c in cases] == [r["case"] for r in qc]
    first = cases[0]
    assert len(first["image"]) == len(first["mask"]) == len(first["reference"]) == 4
    assert Image.open(io.BytesIO(base64.b64decode(first["image"][0]))).size == (64, 64)
    assert Image.open(io.BytesIO(base64.b64decode(first["mask"][0]))).mode == "RGBA"
    # the terminal lists the doubtful cases first, with their reason
    listed = out[out.index("doubtful cases in") :].splitlines()[1:]
    assert listed[0].split()[0] == qc[0]["case"] and qc[0]["reason"] in listed[0]


def test_report_marks_a_doubtful_case_and_escapes_its_reason(evaluated: Path, tmp_path: Path) -> None:
    run = shutil.copytree(evaluated, tmp_path / "run")
    path = run / "eval" / "LGE_test_best" / "qc.csv"
    rows = read_qc_csv(path)
    for r in rows:
        r["doubtful"], r["reason"] = False, ""
    rows[-1].update(doubtful=True, reason="<b>checked</b> by hand")  # the best case, flagged by a reviewer
    write_qc_csv(path, rows)
    assert main(["report", str(run), "--html", "--device", "cpu", "--html-cases", "3"]) == 0
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    order = card_order(page)
    assert order[0] == (rows[-1]["case"], True) and not any(d for _, d in order[1:])
    assert len(order) == 3 and len(cases_json(page)) == 3  # --html-cases
    assert "&lt;b&gt;checked&lt;/b&gt; by hand" in page and "<b>checked</b>" not in page
    assert "2 more without a viewer" in page


def test_report_of_a_run_without_weights_has_tables_only(
    evaluated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = shutil.copytree(evaluated, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "report"))
    assert main(["report", str(run), "--html"]) == 0
    assert "no weights" in capsys.readouterr().out
    page = (run / "report" / "report.html").read_text(encoding="utf-8")
    assert "LGE_test_best" in page and "no case viewer" in page and cases_json(page) == []
    assert not (run / "report" / "overlays.png").exists()


def test_predict_html(evaluated: Path, tmp_path: Path) -> None:
    images = evaluated.parent / "data" / "LGE" / "images"
    out = tmp_path / "masks"
    args = ["predict", str(evaluated), str(images), str(out), "--device", "cpu", "--html", "--html-cases", "4"]
    assert main(args) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    assert_self_contained(page)
    with open(out / "qc.csv", newline="") as f:
        qc = [r["case"] for r in csv.DictReader(f)]
    assert len(qc) == 6 and [c for c, _ in card_order(page)] == qc[:4]
    cases = cases_json(page)
    assert len(cases) == 4 and all(c["reference"] is None for c in cases)
    # the viewer shows the mask that was written
    first = cases[0]
    import nibabel as nib

    written = np.asarray(nib.load(out / f"{first['id']}.nii.gz").dataobj)
    k = first["slices"][first["start"]]
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(first["mask"][first["start"]]))))
    assert np.array_equal(shown[..., 3] > 0, (written[:, :, k].T[::-1] > 0))


def test_evaluate_prints_the_doubtful_cases_first(
    evaluated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["evaluate", str(evaluated), "--device", "cpu", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    qc = read_qc_csv(tmp_path / "ev" / "qc.csv")
    doubtful = [r for r in qc if r["doubtful"]]
    listed = out[out.index(f"doubtful cases in {tmp_path / 'ev' / 'qc.csv'}") :].splitlines()[1:]
    assert [line.split()[0] for line in listed[: len(doubtful)]] == [r["case"] for r in doubtful]
    assert all(r["reason"] in line for r, line in zip(doubtful, listed))
    # ... then how well the flag tracked the labels: the worst of 5 cases by Dice, caught or not
    assert describe_qc_check(json.loads((tmp_path / "ev" / "summary.json").read_text())["qc_check"]) in out
    lowest = min(qc, key=lambda r: r["dice_mean"])
    assert f"doubtful flags {int(lowest['doubtful'])} of the 1 lowest-Dice cases" in out


def test_doubtful_lines_limit_and_order() -> None:
    from udavae.evaluation.qc import doubtful_lines

    rows = [{"case": f"c{i}", "qc_score": i / 10, "doubtful": i % 2 == 1, "reason": f"r{i}"} for i in range(9, -1, -1)]
    lines = doubtful_lines(rows, limit=3)
    assert lines == ["  c1  qc_score 0.10; r1", "  c3  qc_score 0.30; r3", "  c5  qc_score 0.50; r5"] + [
        "  ... and 2 more (see qc.csv)"
    ]
    rows[-2]["reason"] = "qc_score 0.10 among the worst 25% of 10"
    assert doubtful_lines(rows, limit=1) == [
        "  c1  qc_score 0.10 among the worst 25% of 10",
        "  ... and 4 more (see qc.csv)",
    ]
    assert doubtful_lines([{**r, "doubtful": False} for r in rows]) == []


def test_viewer_size_limits() -> None:
    """A large scan is embedded with at most MAX_SLICES slices of at most MAX_SIDE pixels: < 0.5 MB per case."""
    x = np.linspace(0, 1, 600, dtype=np.float32)[:, None, None]
    y = np.linspace(0, 1, 480, dtype=np.float32)[None, :, None]
    z = np.arange(40, dtype=np.float32)[None, None, :]
    image = np.sin(12 * x) * np.cos(9 * y) + 0.01 * z
    mask = ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.05) * (1 + z % 3).astype(np.uint8)
    case = encode_case("c0", "big", image, (0.5, 0.5, 2.0), mask.astype(np.uint8), 4, reference=mask.astype(np.uint8))
    assert len(case["slices"]) == MAX_SLICES and case["slices"][0] == 0 and case["slices"][-1] == 39
    sizes = {Image.open(io.BytesIO(base64.b64decode(s))).size for s in case["image"] + case["mask"]}
    assert sizes == {(MAX_SIDE, round(480 * MAX_SIDE / 600))}
    assert len(json.dumps(case)) < 500_000
    assert (case["width"], case["height"]) == (400, 320)  # the scan's physical aspect (300 x 240 mm)
    outline = np.asarray(Image.open(io.BytesIO(base64.b64decode(case["reference"][0]))))[..., 3] > 0
    filled = np.asarray(Image.open(io.BytesIO(base64.b64decode(case["mask"][0]))))[..., 3] > 0
    assert outline.sum() < filled.sum() / 5 and not (outline & ~filled).any()


def _chromium() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian package 'chromium')")
def test_report_renders_in_headless_chromium(evaluated: Path, tmp_path: Path) -> None:
    page = evaluated / "report" / "report.html"
    if not page.is_file():
        assert main(["report", str(evaluated), "--html", "--device", "cpu"]) == 0
    n = len(cases_json(page.read_text(encoding="utf-8")))
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += ["--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "page.png"
    run = subprocess.run(
        [*flags, f"--screenshot={shot}", "--dump-dom", page.as_uri()], capture_output=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout.decode("utf-8", "replace")  # Chromium's logs on stderr are not always UTF-8
    assert f'data-viewers="{n}"' in dom  # the script ran to its end
    assert dom.count('class="udv-slice"') == n and dom.count('class="udv-opacity"') == n
    assert dom.count('class="udv-image" alt=') == n
    assert len(re.findall(r'<img class="udv-image"[^>]*src="data:image/jpeg;base64,', dom)) == n
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert pixels.shape == (1000, 1400, 3) and pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # text, tables and images, not a blank page
    # the controls act: another slice, the mask off, the opacity (a copy of the page with a script that uses them)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    run = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, timeout=120)
    dom = run.stdout.decode("utf-8", "replace")
    assert 'data-slice-changed="true"' in dom and 'data-mask-hidden="true"' in dom
    assert 'data-opacity="0.8"' in dom and 'data-label="z ' in dom


_PROBE = """<script>
const v = document.querySelector(".udv"), slider = v.querySelector(".udv-slice");
const img = v.querySelector(".udv-image"), mask = v.querySelector(".udv-mask"), before = img.src;
slider.value = (Number(slider.value) + 1) % (Number(slider.max) + 1);
slider.dispatchEvent(new Event("input"));
const box = v.querySelector(".udv-toggle-mask");
box.checked = false;
box.dispatchEvent(new Event("change"));
const opacity = v.querySelector(".udv-opacity");
opacity.value = 80;
opacity.dispatchEvent(new Event("input"));
document.body.setAttribute("data-slice-changed", String(img.src !== before));
document.body.setAttribute("data-mask-hidden", String(mask.style.display === "none"));
document.body.setAttribute("data-opacity", mask.style.opacity);
document.body.setAttribute("data-label", v.querySelector(".udv-where").textContent);
</script>
"""

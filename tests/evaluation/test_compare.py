"""``udavae compare``: statistics against scipy/numpy on known answers, and the command end to end on fake
model folders (no training: model.json, config.yaml and eval/<domain>_<split>_<checkpoint>/metrics.csv only)."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from udavae.cli import main
from udavae.evaluation import statistics as st
from udavae.evaluation.compare import compare, evaluate_command, find_runs
from udavae.reports.compare import read_compare_csv, read_tests_csv

STRUCTURES = ("MYO", "LV", "RV")
PATIENTS = tuple(f"patient{i}" for i in range(6, 14))  # 8 patients; patient10 sorts after patient9


# ------------------------------------------------------------------------------------------ fake runs


def write_metrics(
    path: Path, dice: np.ndarray, assd: np.ndarray, hd95: np.ndarray, patients: tuple[str, ...] = PATIENTS
) -> None:
    """A metrics.csv as ``evaluate`` writes it: one row per case and structure, Dice as a fraction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "structure", "dice", "iou", "assd", "hd95", "hd", "gt_voxels", "pred_voxels"])
        for i, case in enumerate(patients):
            for j, s in enumerate(STRUCTURES):
                d, a, h = float(dice[i, j]), float(assd[i, j]), float(hd95[i, j])
                w.writerow(
                    [case, s, repr(d), repr(d / (2 - d)), repr(a), repr(h), "nan", 1000.0, 0.0 if d == 0 else 900.0]
                )


def make_run(
    folder: Path,
    preset: str,
    seed: int,
    dice: np.ndarray,
    splits: tuple[str, ...] = ("test",),
    sweep_group: str | None = None,
    nan_case: int | None = None,
    raw_dice: np.ndarray | None = None,
    patients: tuple[str, ...] = PATIENTS,
) -> Path:
    """A model folder with ``dice`` (patients x structures, fractions) on each split; distances derived from it.

    ``nan_case``: that patient's RV is missed (Dice 0, distances NaN), as ``evaluate`` writes a missed structure.
    """
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(
        json.dumps(
            {"source": "C0", "target": "LGE", "class_names": {"1": "MYO", "2": "LV", "3": "RV"}, "num_classes": 4}
        )
    )
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "preset": preset,
                "profile": "cpu",
                "method": {"name": preset, "kind": {"noadapt": "noadapt", "udavae++": "vae"}.get(preset, preset)},
                "runtime": {"seed": seed},
                "data": {"source": "C0", "target": "LGE"},
            }
        )
    )
    if sweep_group is not None:
        (folder / "sweep_run.json").write_text(
            json.dumps({"group": sweep_group, "preset": preset, "variant": sweep_group, "seed": seed})
        )
    dice = dice.copy()
    assd, hd95 = 20.0 * (1 - dice), 60.0 * (1 - dice)
    if nan_case is not None:
        dice[nan_case, 2], assd[nan_case, 2], hd95[nan_case, 2] = 0.0, np.nan, np.nan
    for split in splits:
        write_metrics(folder / "eval" / f"LGE_{split}_best" / "metrics.csv", dice, assd, hd95, patients)
        if raw_dice is not None:
            write_metrics(
                folder / "eval" / f"LGE_{split}_best" / "metrics_raw.csv",
                raw_dice,
                20.0 * (1 - raw_dice),
                60.0 * (1 - raw_dice),
            )
    return folder


def fake_dice(gain: float, seed: int, seed_shift: float = 0.01) -> np.ndarray:
    """Patients x structures Dice: a patient effect shared by all methods, a method gain, a seed shift, noise."""
    patient = np.random.default_rng(100).uniform(0.5, 0.8, size=(len(PATIENTS), 1))
    rng = np.random.default_rng(seed + int(1000 * gain))
    noise = rng.normal(0, 0.02, size=(len(PATIENTS), len(STRUCTURES)))
    return np.clip(patient + gain + seed_shift * (seed - 1) + noise, 0.01, 0.99)


@pytest.fixture
def two_groups(tmp_path: Path) -> tuple[Path, dict[str, list[np.ndarray]]]:
    """noadapt and udavae++ x seeds 0, 1, 2 x 8 patients; noadapt seed 1 misses RV in patient index 2."""
    root = tmp_path / "runs"
    dice: dict[str, list[np.ndarray]] = {"udavae++": [], "noadapt": []}
    for seed in range(3):
        for name, preset, gain in (("a_ours", "udavae++", 0.06), ("b_base", "noadapt", 0.0)):
            d = fake_dice(gain, seed)
            nan_case = 2 if (preset == "noadapt" and seed == 1) else None
            make_run(root / f"{name}_s{seed}", preset, seed, d, splits=("test", "val"), nan_case=nan_case)
            if nan_case is not None:
                d = d.copy()
                d[nan_case, 2] = 0.0
            dice[preset].append(d)
    return root, dice


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# ------------------------------------------------------------------------------------------ statistics


def test_seed_summary_equals_numpy_on_hand_made_numbers() -> None:
    s = st.seed_summary([80.0, 82.0, 87.0])
    assert s.mean == pytest.approx(83.0)
    assert s.std == pytest.approx(np.std([80.0, 82.0, 87.0], ddof=1)) == pytest.approx(math.sqrt(13.0))
    assert s.n_seeds == 3
    one = st.seed_summary([81.5])
    assert (one.mean, one.n_seeds) == (81.5, 1) and math.isnan(one.std)  # no spread from one seed
    with_nan = st.seed_summary([80.0, float("nan"), 84.0])  # a seed with every patient missing
    assert (with_nan.mean, with_nan.n_seeds) == (82.0, 2)
    assert with_nan.std == pytest.approx(np.std([80.0, 84.0], ddof=1))


def test_nan_distances_are_excluded() -> None:
    assert st.nanmean([2.0, float("nan"), 4.0]) == 3.0
    assert math.isnan(st.nanmean([float("nan")]))
    avg = st.seed_average([[1.0, np.nan, np.nan], [3.0, 4.0, np.nan]])
    np.testing.assert_array_equal(avg[:2], [2.0, 4.0])
    assert math.isnan(avg[2])
    low, high = st.bootstrap_ci([5.0, np.nan, 5.0], 500, 0)
    assert (low, high) == (5.0, 5.0)


def test_identical_groups_give_p_one_and_overlapping_intervals() -> None:
    a = np.random.default_rng(1).uniform(50, 90, 20)
    res = st.paired_test(a, a.copy())
    assert res.p_value == 1.0 and res.mean_diff == 0.0 and res.n_pairs == 20
    ci_a, ci_b = st.bootstrap_ci(a, 2000, 0), st.bootstrap_ci(a.copy(), 2000, 0)
    assert ci_a == ci_b and ci_a[0] < a.mean() < ci_a[1]
    assert max(ci_a[0], ci_b[0]) <= min(ci_a[1], ci_b[1])


def test_constant_shift_gives_small_p_equal_to_scipy() -> None:
    ref = np.random.default_rng(2).uniform(50, 90, 20)
    res = st.paired_test(ref + 5.0, ref)
    direct = stats.wilcoxon((ref + 5.0) - ref)
    assert res.p_value == pytest.approx(direct.pvalue, rel=1e-12) and res.p_value < 1e-4
    assert res.statistic == direct.statistic
    assert res.mean_diff == pytest.approx(5.0)
    noisy = ref + 5.0 + np.random.default_rng(3).normal(0, 4, 20)  # ties-free, mixed signs
    assert st.paired_test(noisy, ref).p_value == pytest.approx(stats.wilcoxon(noisy - ref).pvalue, rel=1e-12)


def test_paired_test_uses_only_pairs_finite_in_both_and_needs_six() -> None:
    a = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0])
    b = np.array([0.0, 0.5, 1.0, np.nan, 2.0, 2.5, 3.0, 3.5])
    res = st.paired_test(a, b)
    keep = np.isfinite(a) & np.isfinite(b)
    assert res.n_pairs == 6
    assert res.mean_diff == pytest.approx(np.mean(a[keep] - b[keep]))
    assert res.p_value == pytest.approx(stats.wilcoxon(a[keep] - b[keep]).pvalue)
    few = st.paired_test(a[:5], b[:5])
    assert few.n_pairs == 3 and math.isnan(few.p_value) and "too few" in few.note


def test_bootstrap_ci_of_a_constant_is_the_constant_and_reproducible() -> None:
    assert st.bootstrap_ci(np.full(15, 73.5), 1000, 0) == (73.5, 73.5)
    assert st.bootstrap_ci([42.0], 1000, 0) == (42.0, 42.0)
    assert all(math.isnan(v) for v in st.bootstrap_ci([], 1000, 0))
    x = np.random.default_rng(4).normal(70, 10, 30)
    assert st.bootstrap_ci(x, 3000, 7) == st.bootstrap_ci(x, 3000, 7)
    low, high = st.bootstrap_ci(x, 3000, 7)
    assert low < x.mean() < high
    # the percentile interval of the mean is about mean +- 1.96 standard errors
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.2)


# ------------------------------------------------------------------------------------------ end to end


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        fa, fb = float(a), float(b)  # type: ignore[arg-type]
        return (math.isnan(fa) and math.isnan(fb)) or abs(fa - fb) <= 1e-9
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_compare_end_to_end(two_groups, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, dice = two_groups
    out = tmp_path / "cmp"
    rc, stdout, err = run_cli(["compare", str(root), "--out", str(out), "--bootstrap", "2000"], capsys)
    assert rc == 0, err
    expected = [
        "compare.md",
        "compare.csv",
        "tests.csv",
        "compare.tex",
        "compare.json",
        *(f"box_{s}_{m}.png" for s in ("test", "val") for m in ("dice", "assd", "hd95")),
    ]
    for name in expected:
        assert (out / name).is_file(), name
        assert str(out / name) in stdout  # the user is told what was written
    assert "udavae++" in stdout and "noadapt" in stdout and "±" in stdout
    # single-source rows are marked: noadapt trained on no target image, udavae++ on unlabelled ones
    assert re.search(r"^noadapt\s+none\s+3\s", stdout, re.M)
    assert re.search(r"^udavae\+\+\s+unlabelled\s+3\s", stdout, re.M)
    md = (out / "compare.md").read_text()
    assert "| noadapt (ref) | none | 3 |" in md and "| udavae++ | unlabelled | 3 |" in md
    assert "noadapt & none & 3 &" in (out / "compare.tex").read_text()

    comp = compare([str(root)], splits=("test", "val"), n_resamples=2000, seed=0)
    assert comp.reference == "noadapt" and comp.groups == ["noadapt", "udavae++"]  # default reference first
    rows = read_compare_csv(out / "compare.csv")
    assert comp.structures == [*STRUCTURES, "mean"]  # the per-patient mean over the structures last
    assert len(rows) == len(comp.summaries) == 2 * 2 * 4 * 3
    for row, summary in zip(rows, comp.summaries):
        want = summary.row()
        assert set(row) == set(want)
        assert all(_same(row[k], want[k]) for k in want), (row, want)

    # independent numbers: per-seed mean over patients, mean +- std over seeds, Wilcoxon on seed averages
    ours, base = np.stack(dice["udavae++"]) * 100, np.stack(dice["noadapt"]) * 100  # seeds x patients x structures
    s = comp.summary("udavae++", "test", "MYO", "dice")
    np.testing.assert_allclose(s.seed_means, ours[:, :, 0].mean(axis=1), rtol=1e-12)
    assert s.mean == pytest.approx(ours[:, :, 0].mean(axis=1).mean(), rel=1e-12)
    assert s.std == pytest.approx(np.std(ours[:, :, 0].mean(axis=1), ddof=1), rel=1e-12)
    assert (s.n_seeds, s.n_patients, s.seeds) == (3, 8, (0, 1, 2))
    assert s.ci_low < s.patient_mean < s.ci_high
    t = comp.test("udavae++", "test", "MYO", "dice")
    diff = ours[:, :, 0].mean(axis=0) - base[:, :, 0].mean(axis=0)
    assert t.mean_diff == pytest.approx(diff.mean(), rel=1e-12)
    assert t.p_value == pytest.approx(stats.wilcoxon(diff).pvalue, rel=1e-12) and t.p_value < 0.01

    # the missed RV (noadapt seed 1, patient index 2): Dice 0 counts, its NaN distances are excluded
    rv = comp.summary("noadapt", "test", "RV", "assd")
    seed1 = 20.0 * (1 - base[1, :, 2] / 100)
    seed1[2] = np.nan
    assert rv.seed_means[1] == pytest.approx(np.nanmean(seed1), rel=1e-12)
    assert rv.scores_by_patient()["patient8"] == pytest.approx(np.mean(20.0 * (1 - base[[0, 2], 2, 2] / 100)))
    assert comp.summary("noadapt", "test", "RV", "dice").seed_means[1] == pytest.approx(base[1, :, 2].mean())

    # "mean": each patient's mean over MYO/LV/RV, then as any structure; undefined where a structure's value is
    m = comp.summary("udavae++", "test", "mean", "dice")
    np.testing.assert_allclose(m.seed_means, ours.mean(axis=2).mean(axis=1), rtol=1e-12)
    tm = comp.test("udavae++", "test", "mean", "dice")
    assert tm.mean_diff == pytest.approx((ours.mean(axis=2).mean(axis=0) - base.mean(axis=2).mean(axis=0)).mean())
    assd = 20.0 * (1 - base[1] / 100)  # noadapt seed 1, patients x structures; its patient index 2 missed the RV
    assd[2, 2] = np.nan
    mean_assd = comp.summary("noadapt", "test", "mean", "assd").seed_means[1]
    assert mean_assd == pytest.approx(np.mean(np.delete(assd.mean(axis=1), 2)), rel=1e-12)

    tests = read_tests_csv(out / "tests.csv")
    assert len(tests) == len(comp.tests) == 2 * 4 * 3
    for row, test in zip(tests, comp.tests):
        assert (row["group"], row["reference"], row["split"], row["structure"], row["metric"]) == (
            test.group,
            test.reference,
            test.split,
            test.structure,
            test.metric,
        )
        assert _same(row["p_value"], test.p_value) and _same(row["mean_diff"], test.mean_diff)
        assert row["n_patients"] == test.n_patients

    data = json.loads((out / "compare.json").read_text())
    assert data["settings"]["reference"] == "noadapt" and len(data["summaries"]) == len(rows)
    md = (out / "compare.md").read_text()
    assert "| udavae++ | unlabelled | 3 |" in md and "Δ Dice (%)" in md and "±" in md
    tex = (out / "compare.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "95\\%" in tex and " 95%" not in tex

    # reproducible: a second run writes the same numbers
    rc, _, _ = run_cli(
        ["compare", str(root), "--out", str(tmp_path / "again"), "--bootstrap", "2000", "--formats", "csv"], capsys
    )
    assert rc == 0
    assert (tmp_path / "again" / "compare.csv").read_text() == (out / "compare.csv").read_text()
    assert not (tmp_path / "again" / "compare.md").exists()


def test_raw_uses_metrics_raw_where_present(tmp_path: Path) -> None:
    d = fake_dice(0.0, 0)
    make_run(tmp_path / "post", "noadapt", 0, d, raw_dice=d - 0.05)
    make_run(tmp_path / "plain", "noadapt", 1, d)
    post = compare([str(tmp_path)], splits=("test",), n_resamples=0)
    raw = compare([str(tmp_path)], splits=("test",), n_resamples=0, raw=True)
    p, r = post.summary("noadapt", "test", "LV", "dice"), raw.summary("noadapt", "test", "LV", "dice")
    assert p.seed_means[1] == pytest.approx(d[:, 1].mean() * 100)  # seed 0 = "post": post-processed masks
    assert r.seed_means[0] == pytest.approx((d[:, 1] - 0.05).mean() * 100)  # --raw: its raw masks
    assert r.seed_means[1] == p.seed_means[1]  # no metrics_raw.csv: raw == metrics.csv
    assert any("post-processed" in n for n in post.notes) and not any("post-processed" in n for n in raw.notes)


# --------------------------------------------------------------------------------------------- errors


def test_duplicate_seed_in_a_group_names_both_folders(tmp_path: Path, capsys) -> None:
    a = make_run(tmp_path / "runs" / "first", "noadapt", 0, fake_dice(0, 0))
    b = make_run(tmp_path / "runs" / "second", "noadapt", 0, fake_dice(0, 1))
    rc, _, err = run_cli(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "o"), "--splits", "test"], capsys)
    assert rc == 2
    assert str(a) in err and str(b) in err and "seed 0" in err
    assert not (tmp_path / "o").exists()


def test_missing_evaluation_names_the_command(two_groups, tmp_path: Path, capsys) -> None:
    root, _ = two_groups
    rc, _, err = run_cli(
        ["compare", str(root), "--out", str(tmp_path / "o"), "--checkpoint", "last", "--splits", "test"], capsys
    )
    assert rc == 2
    run = root / "a_ours_s0"
    assert f"udavae evaluate {run} --split test --checkpoint last" in err
    assert evaluate_command(run, "test", "last") in err
    assert not (tmp_path / "o").exists()


def test_unknown_reference_lists_the_groups(two_groups, tmp_path: Path, capsys) -> None:
    root, _ = two_groups
    rc, _, err = run_cli(["compare", str(root), "--reference", "cfdnet", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert "'cfdnet'" in err and "udavae++" in err and "noadapt" in err


# ------------------------------------------------------------------------------------------- grouping


def test_label_grouping_reference_and_latex_escaping(tmp_path: Path, capsys, monkeypatch) -> None:
    for seed in range(2):
        make_run(tmp_path / "x" / f"s{seed}", "udavae++", seed, fake_dice(0.0, seed, seed_shift=0.05))
        make_run(tmp_path / "y" / f"s{seed}", "udavae++", seed, fake_dice(0.0, seed, seed_shift=0.05) + 0.001)
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = run_cli(
        [
            "compare",
            f"base_line={tmp_path / 'x'}",
            f"ours_%={tmp_path / 'y'}",
            "--reference",
            "base_line",
            "--splits",
            "test",
            "--formats",
            "tex,md",
        ],
        capsys,
    )
    assert rc == 0, err
    out = tmp_path / "compare"  # not a sweep: ./compare
    tex = (out / "compare.tex").read_text()
    assert "base\\_line" in tex and "ours\\_\\%" in tex
    comp = compare(
        [f"base_line={tmp_path / 'x'}", f"ours_%={tmp_path / 'y'}"],
        reference="base_line",
        splits=("test",),
        n_resamples=0,
    )
    assert comp.groups == ["base_line", "ours_%"] and comp.seeds("ours_%") == [0, 1]
    # 2 seeds: rough spread; a +0.1 Dice gain is far below the 5-point seed shift
    assert any("2 seeds" in n and "rough" in n for n in comp.notes)
    assert any("not whether training with another seed would reproduce it" in n for n in comp.notes)
    assert any("within seed noise" in n for n in comp.notes)
    assert all(t.within_seed_noise for t in comp.tests if t.metric == "dice")
    assert "within seed noise" in stdout


def test_sweep_grouping_and_default_output(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"name": "s"}))
    for seed in (1, 2, 3):
        make_run(sweep / "runs" / f"full_s{seed}", "udavae++", seed, fake_dice(0.04, seed), sweep_group="udavae++")
        make_run(
            sweep / "runs" / f"noprior_s{seed}", "udavae++", seed, fake_dice(0.0, seed), sweep_group="udavae++/no-prior"
        )
    runs = find_runs([str(sweep)])
    assert {r.group for r in runs} == {"udavae++", "udavae++/no-prior"}
    assert all(r.group_from == "sweep_run.json" for r in runs)
    rc, stdout, err = run_cli(["compare", str(sweep), "--splits", "test", "--bootstrap", "500"], capsys)
    assert rc == 0, err
    assert (sweep / "compare" / "compare.csv").is_file() and (sweep / "compare" / "box_test_dice.png").is_file()
    rows = read_compare_csv(sweep / "compare" / "compare.csv")
    assert {r["group"] for r in rows} == {"udavae++", "udavae++/no-prior"}
    assert rows[0]["group"] == "udavae++"  # no noadapt: the first group is the reference
    assert "seed-to-seed spread is not estimated" not in stdout


def test_single_seed_note_and_patient_order(tmp_path: Path) -> None:
    make_run(tmp_path / "a", "noadapt", 0, fake_dice(0.0, 0))
    make_run(tmp_path / "b", "udavae++", 0, fake_dice(0.05, 0))
    comp = compare([str(tmp_path)], splits=("test",), n_resamples=0)
    assert any("1 seed" in n and "not estimated" in n for n in comp.notes)
    s = comp.summary("noadapt", "test", "MYO", "dice")
    assert math.isnan(s.std) and s.n_seeds == 1 and math.isnan(s.ci_low)  # --bootstrap 0: no interval
    assert s.patients == PATIENTS  # natural order: patient9 before patient10


def test_evaluation_modules_do_not_import_engine_or_cli() -> None:
    code = (
        "import sys, udavae.evaluation.compare, udavae.evaluation.statistics; "
        "bad = [m for m in sys.modules if m.startswith(('udavae.engine', 'udavae.cli', 'torch'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_too_few_patients_give_one_note_per_split(tmp_path: Path) -> None:
    """Five validation patients: no p-value in any cell, said once for the split, naming each group and metric."""
    few = PATIENTS[:5]
    for group, gain in (("noadapt", 0.0), ("slaug", 0.1), ("gin-ipa", 0.05)):
        make_run(tmp_path / group, group, 0, fake_dice(gain, 0)[:5], patients=few)
    comp = compare([str(tmp_path)], splits=("test",), n_resamples=0, reference="noadapt")
    lines = [n for n in comp.notes if "too few for a Wilcoxon test" in n]
    assert len(lines) == 1
    assert "slaug (Dice MYO/LV/RV/mean, ASSD MYO/LV/RV/mean, HD95 MYO/LV/RV/mean)" in lines[0]
    assert "gin-ipa (" in lines[0]
    assert lines[0].startswith("test, vs noadapt: 5 paired patient(s)")

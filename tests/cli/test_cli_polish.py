"""CLI gaps reported by users: --version, ``config show``, preset help, override messages, the CPU-time
claim, where ``--resume`` goes on, and a readable training-curves figure."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

import udavae
from udavae.cli import main
from udavae.config import Config, apply_overrides, flatten
from udavae.methods.presets import PRESET_HELP, PRESETS, build_config


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    return capsys.readouterr().out


# ----------------------------------------------------------------- 1. --version


def test_version_names_udavae_and_torch(capsys: pytest.CaptureFixture[str]) -> None:
    out = _help(["--version"], capsys).strip()
    assert out.startswith(f"udavae {udavae.__version__} ")
    assert f"torch {torch.__version__.split('+')[0]}" in out


# ----------------------------------------------------------------- 2. config show / model info --help


def _table(out: str) -> dict[str, list[str]]:
    """``config show`` rows by key: [type, value, source, description]."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("KEY "))
    rows = [re.split(r"\s{2,}", line.strip(), maxsplit=4) for line in lines[header + 1 :]]
    return {r[0]: [*r[1:], ""][:4] for r in rows}


def test_config_show_lists_every_key_with_value_source_and_description(capsys) -> None:
    assert main(["config", "show", "--preset", "noadapt", "--profile", "cpu", "optim.lr=2e-4"]) == 0
    table = _table(capsys.readouterr().out)
    cfg = build_config("noadapt", "cpu", {"optim.lr": "2e-4"})
    assert set(table) == set(flatten(cfg.to_dict()))  # every settable key, nothing else
    assert table["model.base_width"][:3] == ["int", "16", "profile"]
    assert table["method.kind"][:3] == ["str", "noadapt", "preset"]
    assert "method.mi_prior" not in table  # an option of kind vae only (udavae.methods.vae.VAEOptions)
    assert table["method.weights.seg"][3].startswith("weight of each balanced cross-entropy term")
    assert table["optim.lr"][:3] == ["float", "0.0002", "override"]
    assert table["model.depth"][:3] == ["int", "5", "default"]
    assert table["profile"][1:3] == ["cpu", "profile"]
    # one-line descriptions parsed from the dataclass docstrings, incl. "a / b: ..." entries
    assert table["model.base_width"][3].startswith("channels of the first encoder level (64 in the paper)")
    assert table["data.target"][3] == "domain names in that dataset."
    assert table["runtime.val_every"][3].startswith("validate every N epochs")
    # a vae preset lists its kind's options, described by its options dataclass
    assert main(["config", "show", "--preset", "uda-vae", "--profile", "cpu"]) == 0
    table = _table(capsys.readouterr().out)
    assert table["method.mi_prior"][:3] == ["bool", "false", "preset"]
    assert table["method.weights.dist"][:3] == ["tuple[float, float, float]", "0.001,0.001,0.0001", "default"]
    assert table["method.dist_pool"][3].startswith("average-pooling window applied to mu / var")
    assert table["method.name"][3].startswith("preset name recorded for reports")  # from the base class
    assert "method.cf_band" not in table


def test_config_show_yaml_is_what_train_writes(tmp_path: Path, capsys) -> None:
    from udavae.data.preprocessing import Preprocessing
    from udavae.data.spec import LabelMap
    from udavae.engine.model_folder import ModelInfo, write_model_folder

    argv = ["--preset", "abl-cn-att", "--profile", "tiny", "data.dataset=/data/x", "method.weights.dist=1,2,3"]
    assert main(["config", "show", "--yaml", *argv]) == 0
    out = capsys.readouterr().out
    cfg = build_config("abl-cn-att", "tiny", {"data.dataset": "/data/x", "method.weights.dist": "1,2,3"})
    info = ModelInfo(LabelMap({"MYO": 200}), Preprocessing(), "n", "/data/x", "C0", "LGE")
    write_model_folder(tmp_path, cfg, info)
    assert out == (tmp_path / "config.yaml").read_text()
    assert Config.from_dict(yaml.safe_load(out)).method.weights.dist == (1.0, 2.0, 3.0)


def test_config_show_bad_key_suggests_the_right_one(capsys) -> None:
    assert main(["config", "show", "model.base_wdith=8"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'model.base_wdith'" in err and "'model.base_width'" in err


def test_model_info_help_describes_every_preset(capsys) -> None:
    out = " ".join(_help(["model", "info", "--help"], capsys).split())
    for name, text in PRESET_HELP.items():
        assert f"{name} {text}" in out, name


def test_ablation_help_matches_the_preset_definitions() -> None:
    """Each abl-* help names the wiring, the mean head and the SMIE terms the preset really sets."""
    for name, over in PRESETS.items():
        if not name.startswith("abl-"):
            continue
        text = PRESET_HELP[name]
        assert f"{over['model.wiring']} wiring" in text, name
        assert ("conv" if over["model.mean_head"] == "conv" else "gate") in text, name
        terms = [t for t in ("global", "local", "prior") if over[f"method.mi_{t}"]]
        assert ("+".join(terms) + " SMIE" if terms else "no SMIE") in text, name


# ----------------------------------------------------------------- 3. override messages


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model.depth", "x", "model.depth: expected an integer, got 'x'"),
        ("model.depth", "2.5", "model.depth: expected an integer, got '2.5'"),
        ("data.crop", "inf", "data.crop: expected an integer, got 'inf'"),
        ("optim.lr", "fast", "optim.lr: expected a number, got 'fast'"),
        ("method.weights.dist", "1,x,3", "method.weights.dist: expected a number, got 'x'"),
        ("data.augment", "maybe", "data.augment: expected a boolean (true/false, yes/no, on/off, 1/0), got 'maybe'"),
    ],
)
def test_override_type_errors_read_well(key: str, value: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        apply_overrides(Config(), {key: value})
    assert str(exc.value) == message


# ----------------------------------------------------------------- 4. the CPU-profile time claim


def test_train_help_gives_the_measured_cpu_time(capsys) -> None:
    out = " ".join(_help(["train", "--help"], capsys).split())
    assert "about an hour" not in out
    assert "<= 40 minutes" in out and "39 min in fp32" in out and "28 min with --amp bf16" in out
    assert "2-core AMD EPYC" in out
    src = (Path(udavae.__file__).parent / "config.py").read_text()  # the profiles live there
    assert "about an hour" not in src and "39 min" in src


# ----------------------------------------------------------------- 5. --resume says where it goes on

_TINY = [
    "--preset",
    "noadapt",
    "--profile",
    "tiny",
    "--device",
    "cpu",
    "--iters-per-epoch",
    "1",
    "--batch-size",
    "2",
    "model.base_width=4",
    "model.recon_width=8",
    "data.crop=32",
    "data.jitter=0",
]


def test_resume_says_from_which_epoch(tmp_path: Path, capsys) -> None:
    """A real (seconds-long) run: one epoch, then ``--resume`` to two says where it goes on."""
    from udavae.data.synthetic import generate_dataset

    data, run = tmp_path / "data", tmp_path / "run"
    generate_dataset(data, n_source=2, n_target=2, size=32, slices=2, seed=1, n_val=1)
    assert main(["train", "--dataset", str(data), "--out", str(run), "--epochs", "1", *_TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--dataset", str(data), "--out", str(run), "--epochs", "2", "--resume", *_TINY]) == 0
    out, err = capsys.readouterr()
    assert re.search(
        rf"resuming {re.escape(str(run))} after epoch 1 of 2; best validation Dice \d+\.\d\d at epoch 1", out + err
    ), out + err
    assert json.loads(out[out.index("{") :])["epochs"] == 2


def test_config_from_args_maps_train_flags_to_keys() -> None:
    """The flag -> key table ``config show`` prints is the one ``train`` applies."""
    from udavae.cli import build_parser
    from udavae.cli.train_cmd import FLAG_KEYS, config_from_args

    args = build_parser().parse_args(
        [
            "train",
            "--dataset",
            "d",
            "--out",
            "o",
            "--profile",
            "tiny",
            "--epochs",
            "3",
            "--amp",
            "bf16",
            "--compile",
            "--workers",
            "2",
            "model.base_width=4",
        ]
    )
    cfg = flatten(config_from_args(args).to_dict())
    assert cfg["data.dataset"] == "d" and cfg["optim.epochs"] == 3 and cfg["runtime.amp"] == "bf16"
    assert cfg["runtime.compile"] is True and cfg["data.num_workers"] == 2 and cfg["model.base_width"] == 4
    assert cfg["optim.iters_per_epoch"] == 5 and cfg["optim.batch_size"] == 4  # unset flags: the profile's
    assert set(FLAG_KEYS.values()) <= set(cfg)


# ----------------------------------------------------------------- 6. training-curves figure

_LOSS_KEYS = (
    ["seg_full", "seg_fusion", "seg_half", "seg_quarter"]
    + [f"{t}_{d}_{s}" for d in ("src", "tgt") for s in ("full", "half", "quarter") for t in ("recon", "kl")]
    + ["dist_full", "dist_half", "dist_quarter", "mi_src", "mi_tgt"]
)


def _log_rows(epochs: int) -> list[dict]:
    """A log like the trainer's for udavae++: 21 weighted terms + total, lr, per-structure Dice."""
    rows = []
    for e in range(1, epochs + 1):
        row: dict = {"epoch": e}
        for k in _LOSS_KEYS:
            row[f"loss/{k}"] = {"seg": 1500.0, "recon": 8.0, "kl": 0.3, "dist": 3.0, "mi": 200.0}[k.split("_")[0]] / e
        row["loss/total"] = sum(row[f"loss/{k}"] for k in _LOSS_KEYS)
        row.update(
            {
                "lr": 1e-3,
                "train_time_s": 2.0,
                "val/dice_MYO": 0.1 * e,
                "val/dice_LV": 0.2 * e,
                "val/dice_RV": 0.15 * e,
                "val/dice_mean": 0.15 * e,
                "best_epoch": e,
                "best_val_dice": 0.15 * e,
            }
        )
        rows.append(row)
    return rows


def test_loss_families_sum_terms_by_prefix() -> None:
    from udavae.reports.figures import loss_families

    rows = _log_rows(2)
    fams = loss_families(rows)
    assert list(fams) == ["total", "seg", "recon", "kl", "dist", "mi"]
    assert fams["seg"] == pytest.approx([4 * 1500.0, 4 * 750.0])
    assert fams["kl"] == pytest.approx([6 * 0.3, 3 * 0.3])
    assert fams["total"] == pytest.approx([rows[0]["loss/total"], rows[1]["loss/total"]])


@pytest.mark.parametrize("epochs", [2, 12])
def test_curves_figure_is_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
    """Grouped legend outside the axes, no repeated colour in a panel, integer epoch ticks, a clear title."""
    import matplotlib.colors as mcolors
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from udavae.reports import figures

    figs: list = []
    save = figures._save

    def capture(fig, path):
        figs.append(fig)
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", capture)
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps(r) + "\n" for r in _log_rows(epochs)))
    png = figures.curves_figure(log, tmp_path / "curves.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    (fig,) = figs
    canvas = FigureCanvasAgg(fig)  # pyplot's canvas is gone once the figure is saved and closed
    canvas.draw()
    renderer = canvas.get_renderer()
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert len(axes) == 2
    titles = [t.get_window_extent(renderer) for ax in axes for t in (ax.title, ax._left_title) if t.get_text()]
    if fig._suptitle is not None:
        titles.append(fig._suptitle.get_window_extent(renderer))
    assert titles
    for ax in axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
        legend = ax.get_legend()
        box = legend.get_window_extent(renderer)
        for other in fig.axes:  # never over a plot area or a title
            assert not box.overlaps(other.get_window_extent(renderer))
        assert not any(box.overlaps(t) for t in titles)
        curves = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 1 and not ln.get_label().startswith("_")]
        colours = [mcolors.to_hex(ln.get_color()) for ln in curves]
        assert len(set(colours)) == len(colours) >= 4, colours
    loss_labels = [t.get_text().split(" (")[0] for t in axes[0].get_legend().get_texts()]
    assert loss_labels == ["total", "seg", "recon", "kl", "dist", "mi"]  # one entry per family, not 22

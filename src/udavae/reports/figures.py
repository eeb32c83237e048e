"""Report figures a reader of the paper expects, as PNG files.

- ``overlays.png``: target image / ground truth / prediction for a few cases (the paper's Fig. 5);
- ``reconstructions.png``: source and target images with their reconstructions (the paper's Fig. 6);
- ``training_curves.png``: losses and validation Dice per epoch.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from udavae.fileio import atomic_write, ensure_writable_dir  # noqa: E402
from udavae.layout import CONFIG_FILE, LOG_JSONL  # noqa: E402

_COLORS = ["#00000000", "#f5c518", "#e6194b", "#3cb44b", "#4363d8", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


def _label_cmap(num_classes: int) -> ListedColormap:
    cols = (_COLORS * (num_classes // len(_COLORS) + 1))[:num_classes]
    return ListedColormap(cols)


def _save(fig: plt.Figure, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def _best_slice(label: np.ndarray) -> int:
    """The slice (last axis) with the most foreground."""
    return int(np.argmax((label > 0).reshape(-1, label.shape[-1]).sum(0)))


def overlay_figure(
    cases: list, predictions: list[np.ndarray], num_classes: int, path: Path, names: dict[int, str]
) -> Path:
    """Image / ground truth / prediction on each case's most-labelled slice."""
    cmap = _label_cmap(num_classes)
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, (case, pred) in zip(axes, zip(cases, predictions)):
        k = _best_slice(case.native_label)
        img = case.reference.data[:, :, k]
        for ax, title, lab in zip(
            row, ("image", "ground truth", "prediction"), (None, case.native_label[:, :, k], pred[:, :, k])
        ):
            ax.imshow(img.T, cmap="gray", origin="lower")
            if lab is not None:
                ax.imshow(
                    lab.T, cmap=cmap, vmin=0, vmax=num_classes - 1, alpha=0.5, origin="lower", interpolation="nearest"
                )
            ax.set_title(f"{case.id} {title}" if title == "image" else title, fontsize=9)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in names]
    fig.legend(handles, list(names.values()), loc="lower center", ncol=len(names), frameon=False)
    return _save(fig, path)


def reconstruction_figure(
    method,
    source_slices: torch.Tensor,
    source_labels: torch.Tensor,
    target_slices: torch.Tensor,
    device: torch.device,
    path: Path,
) -> Path | None:
    """Source / target images and their full-scale reconstructions (None if the method has none)."""
    from udavae.data.sampling import multiscale

    with torch.inference_mode():
        src = multiscale({"image": source_slices[:, None].to(device), "label": source_labels.long().to(device)})
        tgt = multiscale({"image": target_slices[:, None].to(device)})
        rs = method.reconstruct(src, "source")
        rt = method.reconstruct(tgt, "target")
    if rs is None or rt is None:
        return None
    n = source_slices.shape[0]
    fig, axes = plt.subplots(4, n, figsize=(2.4 * n, 9.6), squeeze=False)
    rows = [
        ("source", source_slices),
        ("source recon", rs[:, 0].float().cpu()),
        ("target", target_slices),
        ("target recon", rt[:, 0].float().cpu()),
    ]
    for r, (title, imgs) in enumerate(rows):
        for c in range(n):
            # same display convention as the overlays: array (x, y) shown transposed, origin lower
            axes[r, c].imshow(imgs[c].numpy().T, cmap="gray", vmin=0, vmax=1, origin="lower")
            axes[r, c].axis("off")
        axes[r, 0].set_title(title, fontsize=9, loc="left")
    return _save(fig, path)


#: Colours of the loss families (``total`` is drawn in black); 20 distinct ones, none reused in a panel.
_CURVE_COLORS = (
    list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors) + list(plt.get_cmap("Set1").colors)[:2]
)
#: Families in the order the objective lists them, so a family keeps its colour across methods.
_FAMILY_ORDER = ("seg", "recon", "kl", "dist", "mi", "cf", "mean")


def loss_families(rows: list[dict]) -> dict[str, list[float]]:
    """Per-epoch weighted losses summed by family (``seg_full`` + ``seg_half`` ... -> ``seg``).

    The family is the name up to the first underscore, as in the trainer's progress bar; ``total`` comes
    first, then the families in objective order. A family missing from a row is NaN there.
    """
    sums: dict[str, list[float]] = {}
    for i, row in enumerate(rows):
        for key, value in row.items():
            if key.startswith("loss/") and value is not None:
                col = sums.setdefault(key[5:].split("_")[0], [float("nan")] * len(rows))
                col[i] = float(value) if np.isnan(col[i]) else col[i] + float(value)
    rank = {f: i for i, f in enumerate(("total", *_FAMILY_ORDER))}
    return {f: sums[f] for f in sorted(sums, key=lambda f: (rank.get(f, len(rank)), f))}


def _loss_scale(values: np.ndarray) -> tuple[str, dict]:
    """``log`` if the curves span more than ~1.5 decades (``symlog`` if some are <= 0), else ``linear``."""
    finite = values[np.isfinite(values)]
    mags = np.abs(finite[finite != 0])
    if mags.size == 0 or mags.max() / mags.min() < 30:
        return "linear", {}
    if (finite > 0).all():
        return "log", {}
    return "symlog", {"linthresh": float(mags.min())}


def training_curves(rows: list[dict], title: str = "training curves") -> plt.Figure:
    """The curves figure of a training log: loss families (top) and validation Dice (bottom).

    Legends sit to the right of the axes (never over the curves or the title), each curve of a panel has
    its own colour, and epoch ticks are integers.
    """
    epochs = np.array([r["epoch"] for r in rows], dtype=float)
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, layout="constrained")
    fig.suptitle(title, fontsize=11)

    fams = loss_families(rows)
    fixed = dict(zip(_FAMILY_ORDER, _CURVE_COLORS))  # a known family has the same colour in every run
    spare = itertools.cycle(_CURVE_COLORS[len(_FAMILY_ORDER) :])  # repeats only past 20 families
    for fam, vals in fams.items():
        total = fam == "total"
        v = np.asarray(vals, dtype=float)
        last = v[np.isfinite(v)][-1] if np.isfinite(v).any() else float("nan")
        colour = "black" if total else fixed.get(fam) or next(spare)
        shown = f"{last:.0f}" if abs(last) >= 100 else f"{last:.3g}"  # 3404, not 3.4e+03
        a.plot(
            epochs,
            v,
            marker="o",
            ms=3.5 if total else 3,
            lw=2.2 if total else 1.4,
            color=colour,
            label=f"{fam} ({shown})",
            zorder=3 if total else 2,
        )
    scale, kw = _loss_scale(np.array(list(fams.values()), dtype=float)) if fams else ("linear", {})
    a.set_yscale(scale, **kw)
    a.set_ylabel("weighted loss per step")
    a.set_title("training losses by family (sum over scales and domains; last value)", fontsize=9, loc="left")
    a.grid(True, which="major", alpha=0.3)
    if fams:
        a.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, borderaxespad=0)

    dice_keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("val/dice_")]
    dice_keys = [k for k in dice_keys if k != "val/dice_mean"] + [k for k in dice_keys if k == "val/dice_mean"]
    colours = itertools.cycle(_CURVE_COLORS)
    top = 0.0
    for key in dice_keys:
        pts = np.array([(r["epoch"], 100 * r[key]) for r in rows if r.get(key) is not None], dtype=float)
        if not len(pts):
            continue
        mean = key == "val/dice_mean"
        top = max(top, float(np.nanmax(pts[:, 1])) if np.isfinite(pts[:, 1]).any() else 0.0)
        b.plot(
            pts[:, 0],
            pts[:, 1],
            marker="o",
            ms=3.5 if mean else 3,
            lw=2.2 if mean else 1.4,
            color="black" if mean else next(colours),
            label=key[9:],
            zorder=3 if mean else 2,
        )
    best = [
        (r["epoch"], 100 * r["val/dice_mean"])
        for r in rows
        if r.get("val/dice_mean") is not None and np.isfinite(r["val/dice_mean"])
    ]
    if best:
        be, bv = max(best, key=lambda p: p[1])
        b.axvline(be, color="0.5", ls=":", lw=1)
        b.plot(
            [be],
            [bv],
            marker="*",
            ms=12,
            color="black",
            ls="none",
            zorder=4,
            label=f"best mean {bv:.1f}\n(epoch {be:g})",
        )
    if dice_keys:
        b.set_ylim(0, min(100.0, top * 1.1 + 2))
        b.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, borderaxespad=0)
    else:
        b.text(0.5, 0.5, "no validated epoch yet", transform=b.transAxes, ha="center", va="center", color="0.4")
    b.set_ylabel("Dice %")
    b.set_title("validation Dice on the target validation split", fontsize=9, loc="left")
    b.grid(True, alpha=0.3)
    b.set_xlabel("epoch")
    b.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(epochs):
        b.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)
    return fig


def curves_figure(log_path: Path, path: Path) -> Path | None:
    """Training losses (grouped by family) and validation Dice against the epoch, from ``RUN/log.jsonl``.

    The title names the run folder and, when ``config.yaml`` is beside the log, its preset and profile.
    Returns None when there is no log or it has no rows.
    """
    if not log_path.is_file():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    title = f"training curves: {log_path.parent.name}"
    try:
        import yaml

        cfg = yaml.safe_load((log_path.parent / CONFIG_FILE).read_text(encoding="utf-8"))
        title += f" ({cfg['preset']}, profile {cfg['profile']})"
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        pass
    return _save(training_curves(rows, title), path)


def make_report(
    run: str | Path,
    out: str | Path,
    split: str = "test",
    n_cases: int = 4,
    checkpoint: str = "best",
    device: str = "auto",
) -> list[Path]:
    """Write the report figures of a model folder; returns the files written."""
    from udavae.data.spec import DatasetSpec
    from udavae.data.volumes import load_cases
    from udavae.engine.inference import Predictor
    from udavae.engine.model_folder import load_trained
    from udavae.engine.runtime import resolve_device

    run, out = Path(run), ensure_writable_dir(out)
    dev = resolve_device(device)
    cfg, info, method, _ = load_trained(run, checkpoint, dev)
    spec = DatasetSpec.load(info.dataset_path)
    written: list[Path] = []
    tgt_cases = [c for c in spec.split(info.target, split) if c.label is not None][:n_cases]
    loaded = load_cases(spec, tgt_cases, info.preprocessing, with_labels=True, desc="report cases")
    if loaded:
        pred = Predictor(method.net, info.preprocessing, dev, amp=cfg.runtime.amp)
        preds = [pred.predict(c.image, c.geometry).classes for c in loaded]
        written.append(overlay_figure(loaded, preds, info.num_classes, out / "overlays.png", info.labels.class_names))
        src_split = spec.splits.get(info.source, {})
        src_cases = spec.split(info.source, "train") if "train" in src_split else spec.cases(info.source)
        src = load_cases(spec, [c for c in src_cases if c.label is not None][:1], info.preprocessing, desc="source")
        if src:
            s, t = src[0], loaded[0]
            si = np.linspace(0, s.image.shape[0] - 1, 4).round().astype(int)
            ti = np.linspace(0, t.image.shape[0] - 1, 4).round().astype(int)
            f = reconstruction_figure(
                method,
                s.image[si],
                s.label[si],
                t.image[ti],
                dev,  # type: ignore[index]
                out / "reconstructions.png",
            )
            if f is not None:
                written.append(f)
    f = curves_figure(run / LOG_JSONL, out / "training_curves.png")
    if f is not None:
        written.append(f)
    return written

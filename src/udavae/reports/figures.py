"""Report figures a reader of the paper expects, as PNG files.

- ``overlays.png``: target image / ground truth / prediction for a few cases (deck Fig. 5);
- ``reconstructions.png``: source and target images with their reconstructions (deck Fig. 6);
- ``training_curves.png``: losses and validation Dice per epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from udavae.fileio import atomic_write, ensure_writable_dir  # noqa: E402

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


def overlay_figure(cases: list, predictions: list[np.ndarray], num_classes: int, path: Path,
                   names: dict[int, str]) -> Path:
    """Image / ground truth / prediction on each case's most-labelled slice."""
    cmap = _label_cmap(num_classes)
    fig, axes = plt.subplots(len(cases), 3, figsize=(9, 3 * len(cases)), squeeze=False)
    for row, (case, pred) in zip(axes, zip(cases, predictions)):
        k = _best_slice(case.native_label)
        img = case.reference.data[:, :, k]
        for ax, title, lab in zip(row, ("image", "ground truth", "prediction"),
                                  (None, case.native_label[:, :, k], pred[:, :, k])):
            ax.imshow(img.T, cmap="gray", origin="lower")
            if lab is not None:
                ax.imshow(lab.T, cmap=cmap, vmin=0, vmax=num_classes - 1, alpha=0.5, origin="lower",
                          interpolation="nearest")
            ax.set_title(f"{case.id} {title}" if title == "image" else title, fontsize=9)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in names]
    fig.legend(handles, list(names.values()), loc="lower center", ncol=len(names), frameon=False)
    return _save(fig, path)


def reconstruction_figure(method, source_slices: torch.Tensor, source_labels: torch.Tensor,
                          target_slices: torch.Tensor, device: torch.device, path: Path) -> Path | None:
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
    rows = [("source", source_slices), ("source recon", rs[:, 0].float().cpu()),
            ("target", target_slices), ("target recon", rt[:, 0].float().cpu())]
    for r, (title, imgs) in enumerate(rows):
        for c in range(n):
            # same display convention as the overlays: array (x, y) shown transposed, origin lower
            axes[r, c].imshow(imgs[c].numpy().T, cmap="gray", vmin=0, vmax=1, origin="lower")
            axes[r, c].axis("off")
        axes[r, 0].set_title(title, fontsize=9, loc="left")
    return _save(fig, path)


def curves_figure(log_path: Path, path: Path) -> Path | None:
    """Training losses and validation Dice against the epoch."""
    if not log_path.is_file():
        return None
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    epochs = [r["epoch"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({k for r in rows for k in r if k.startswith("loss/")}):
        vals = [r.get(key, np.nan) for r in rows]
        if np.nanmax(np.abs(vals)) > 0:
            a.plot(epochs, np.abs(vals), marker="o", label=key[5:])
    a.set_yscale("log")
    a.set_xlabel("epoch")
    a.set_title("training losses (weighted, |value|)")
    a.legend(fontsize=7)
    for key in sorted({k for r in rows for k in r if k.startswith("val/dice_")}):
        pts = [(r["epoch"], 100 * r[key]) for r in rows if key in r]
        if pts:
            b.plot(*zip(*pts), marker="o", label=key[9:])
    b.set_xlabel("epoch")
    b.set_ylabel("Dice %")
    b.set_title("validation Dice (target)")
    b.legend(fontsize=7)
    return _save(fig, path)


def make_report(run: str | Path, out: str | Path, split: str = "test", n_cases: int = 4,
                checkpoint: str = "best", device: str = "auto") -> list[Path]:
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
            f = reconstruction_figure(method, s.image[si], s.label[si], t.image[ti], dev,  # type: ignore[index]
                                      out / "reconstructions.png")
            if f is not None:
                written.append(f)
    f = curves_figure(run / "log.jsonl", out / "training_curves.png")
    if f is not None:
        written.append(f)
    return written

"""Figure of the augmentations: one source slice and eight augmented versions of it per kind (docs/).

Rows: standard spatial, standard intensity, SLAug global view (GLA), SLAug class-level view (LLA), SLAug fused
(with the saliency of an untrained network), GIN, IPA. Seeds 0-7; the label's outline is drawn on the spatial row.

    python benchmarks/augment_figure.py [--dataset benchmarks/work/mscmrseg] [--out docs/figures/augmentations.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from udavae.augment import SourceAugmenter, gin_views  # noqa: E402
from udavae.augment.crop import CropAugment  # noqa: E402
from udavae.augment.stage import image_pyramid, label_pyramid  # noqa: E402
from udavae.config import AugmentConfig  # noqa: E402
from udavae.engine.trainer import prepare_data  # noqa: E402
from udavae.methods import build_method  # noqa: E402
from udavae.methods.presets import build_config  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(HERE / "work" / "mscmrseg"))
    ap.add_argument("--out", default=str(HERE.parent / "docs" / "figures" / "augmentations.png"))
    ap.add_argument("--slice", type=int, default=40, help="index of the source slice")
    args = ap.parse_args()
    cfg = build_config("slaug", "cpu", {"data.dataset": args.dataset, "runtime.device": "cpu"})
    data = prepare_data(cfg)
    stack = data.source.stack
    c = cfg.data.crop
    h, w = stack.images.shape[1:]
    y0, x0 = (h - c) // 2, (w - c) // 2
    image = stack.images[args.slice, y0 : y0 + c, x0 : x0 + c].clone()
    label = stack.labels[args.slice, y0 : y0 + c, x0 : x0 + c].clone()
    torch.manual_seed(0)
    method = build_method(cfg, data.spec.labels.num_classes).train()
    rows: dict[str, list[np.ndarray]] = {
        k: [] for k in ("spatial", "intensity", "SLAug GLA", "SLAug LLA", "SLAug fused", "GIN", "IPA")
    }
    outlines = []
    spatial = CropAugment(AugmentConfig(spatial=True, affine_prob=1.0, elastic_prob=0.5), source=True)
    intensity = CropAugment(
        AugmentConfig(intensity=True, gamma_prob=0.5, bias_prob=0.5, noise_prob=0.5, blur_prob=0.5), source=True
    )
    sl = CropAugment(AugmentConfig(slaug=True), source=True)
    stage = SourceAugmenter(AugmentConfig(slaug=True), 0)
    for seed in range(8):
        rng = np.random.default_rng(seed)
        item = spatial(image, label, rng)
        rows["spatial"].append(item["image"][0].numpy())
        outlines.append(item["label"].numpy())
        rows["intensity"].append(intensity(image, label, np.random.default_rng(seed))["image"][0].numpy())
        it = sl(image, label, np.random.default_rng(seed))
        rows["SLAug GLA"].append(it["image"][0].numpy())
        rows["SLAug LLA"].append(it["image_lla"][0].numpy())
        batch = {
            "image": image_pyramid(it["image"][None]),
            "image_lla": image_pyramid(it["image_lla"][None]),
            "label": label_pyramid(label[None].long()),
        }
        rows["SLAug fused"].append(stage(batch, method, seed)["image"][0][0, 0].numpy())
        gen = torch.Generator().manual_seed(seed)
        gin, ipa = gin_views(image[None, None], gen)
        rows["GIN"].append(gin[0, 0].numpy())
        rows["IPA"].append(ipa[0, 0].numpy())
    fig, axes = plt.subplots(len(rows), 9, figsize=(13.5, 1.6 * len(rows)))
    for r, (name, images) in enumerate(rows.items()):
        axes[r, 0].imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(name, fontsize=9)
        for k, im in enumerate(images):
            axes[r, k + 1].imshow(im, cmap="gray", vmin=0, vmax=1)
            if name == "spatial":
                axes[r, k + 1].contour(outlines[k], levels=[0.5, 1.5, 2.5], colors=["y", "r", "c"], linewidths=0.5)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("source slice", fontsize=9)
    for k in range(8):
        axes[0, k + 1].set_title(f"seed {k}", fontsize=9)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

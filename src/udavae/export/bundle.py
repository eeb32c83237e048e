"""``udavae export RUN DIR --format monai-bundle``: the model as a MONAI bundle.

Layout (MONAI's bundle specification; docs/reference/export.md)::

    DIR/configs/metadata.json    label map (channel_def), input spacing and intensity rules, network_data_format,
                                 versions, required packages (udavae), the model's provenance
    DIR/configs/inference.json   LoadImaged -> udavae preprocessing -> network -> back to the scan's grid ->
                                 argmax -> largest components -> label codes -> SaveImaged (NIfTI masks)
    DIR/configs/logging.conf     the logging set-up ``monai.bundle run`` reads
    DIR/models/model.pt          the network's weights (a state dict of
                                 :class:`udavae.export.bundle_runtime.SegmentationNetwork`)
    DIR/docs/README.md           how to run it and why some steps are udavae's

``python -m monai.bundle run --config_file DIR/configs/inference.json --bundle_root DIR --dataset_dir IN
--output_dir OUT`` writes, for every NIfTI scan of ``IN``, the mask ``udavae predict`` writes (same voxels, same
geometry, same name). The steps that must compute exactly what udavae computes are udavae's own functions
(:mod:`udavae.export.bundle_runtime`), so the bundle needs udavae installed (``pip install 'udavae[monai]'``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from udavae.errors import UserError
from udavae.version import __version__

__all__ = ["BUNDLE_FILES", "SCHEMA_URL", "export_bundle", "inference_config", "metadata"]

#: MONAI's metadata schema that ``metadata.json`` names (``monai.bundle.verify_metadata`` downloads it).
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
BUNDLE_FILES = (
    "configs/metadata.json",
    "configs/inference.json",
    "configs/logging.conf",
    "models/model.pt",
    "docs/README.md",
)
_RUNTIME = "udavae.export.bundle_runtime"
_LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


def inference_config(cfg: Any, info: Any, largest_component: list[int], batch_size: int = 16) -> dict[str, Any]:
    """``configs/inference.json``: segment every NIfTI scan of ``dataset_dir`` into ``output_dir``.

    Args:
        cfg / info: the run's configuration and model description.
        largest_component: class indices that keep only their largest component (``postprocessing.json``).
        batch_size: slices per forward pass (the default of ``udavae predict``).
    """
    m = cfg.model
    codes = [info.labels.background_codes[0], *info.labels.codes.values()]
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "dataset_dir": "$os.path.join(@bundle_root, 'data')",
        "output_dir": "$os.path.join(@bundle_root, 'eval')",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "datalist": "$[{'image': f} for f in sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')) "
        "+ glob.glob(os.path.join(@dataset_dir, '*.nii')))]",
        "network_def": {
            "_target_": f"{_RUNTIME}.SegmentationNetwork",
            "num_classes": info.num_classes,
            "base_width": m.base_width,
            "depth": m.depth,
            "wiring": m.wiring,
            "mean_head": m.mean_head,
            "dropout": m.dropout,
        },
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image", "reader": "NibabelReader", "dtype": "$np.float32"},
                {"_target_": f"{_RUNTIME}.ToSlicesd", "keys": "image", **info.preprocessing.to_dict()},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@datalist", "transform": "@preprocessing"},
        "inferer": {"_target_": f"{_RUNTIME}.SliceInferer", "batch_size": batch_size, "amp": cfg.runtime.amp},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": f"{_RUNTIME}.ToNativeGridd", "keys": "pred", "image_key": "image"},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": f"{_RUNTIME}.KeepLargestComponentd", "keys": "pred", "classes": largest_component},
                {
                    "_target_": "MapLabelValued",
                    "keys": "pred",
                    "orig_labels": list(range(len(codes))),
                    "target_labels": codes,
                    "dtype": "$np.int16",
                },
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_postfix": "",
                    "output_ext": ".nii.gz",
                    "output_dtype": "$np.int16",
                    "resample": False,
                    "separate_folder": False,
                    "print_log": False,
                },
            ],
        },
        "evaluator": {
            "_target_": f"{_RUNTIME}.Segmenter",
            "dataset": "@dataset",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
        },
        "initialize": [
            "$@network.load_state_dict(torch.load(os.path.join(@bundle_root, 'models', 'model.pt'), "
            "map_location=@device, weights_only=True))"
        ],
        "run": ["$@evaluator.run()"],
    }


def metadata(cfg: Any, info: Any, checkpoint: str, epoch: int | None, pp: Any) -> dict[str, Any]:
    """``configs/metadata.json``: MONAI's required fields, the label map and the preprocessing."""
    import monai
    import nibabel
    import numpy as np
    import scipy
    import torch

    names = info.labels.class_names
    codes = {name: code for name, code in info.labels.codes.items()}
    prep = info.preprocessing
    stride = 2 ** (cfg.model.depth - 1)
    side = f"{stride}*n"
    channels = {"0": "background", **{str(i): names[i] for i in sorted(names)}}
    structures = ", ".join(names[i] for i in sorted(names))
    if prep.target_spacing:
        resampling = f"resampled in-plane to {prep.target_spacing[0]:g} x {prep.target_spacing[1]:g} mm"
    elif prep.zoom != 1.0:
        resampling = f"zoomed in-plane by {prep.zoom:g} (pixels)"
    else:
        resampling = "kept on their own in-plane grid"
    if prep.intensity == "percentile":
        intensity = f"clipped to the {prep.lower:g}-{prep.upper:g} percentiles of the volume, then scaled to [0, 1]"
    elif prep.intensity == "minmax":
        intensity = "scaled to [0, 1] by the volume's minimum and maximum"
    else:
        intensity = "already in [0, 1] (clipped)"
    return {
        "schema": SCHEMA_URL,
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported by udavae {__version__} (checkpoint {checkpoint}, epoch {epoch})"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {
            "udavae": __version__,
            "nibabel": nibabel.__version__,
            "scipy": scipy.__version__,
        },
        "task": f"Cardiac MR segmentation of {structures} ({info.target} scans; trained with labels of {info.source})",
        "description": (
            f"A {cfg.method.name} model trained with udavae by unsupervised domain adaptation from {info.source} "
            f"(labelled) to {info.target} (unlabelled) scans of the dataset {info.dataset_name!r}. It segments 3-D "
            f"NIfTI volumes slice by slice (axial, the third axis) and writes masks in the scans' geometry with "
            f"the label codes {codes}. Intensities are {intensity}; slices are {resampling} and zero-padded to "
            f"at least {prep.size[0]} x {prep.size[1]} pixels and to a multiple of {stride}."
        ),
        "authors": f"the owner of the training run; exported with udavae {__version__}",
        "copyright": "udavae is MIT-licensed; the weights carry the terms of the data they were trained on",
        "data_source": f"dataset {info.dataset_name!r}, domains {info.source} (labelled) and {info.target}",
        "data_type": "nibabel",
        "image_classes": f"single-channel MR slices, intensities {intensity}",
        "pred_classes": ", ".join(f"{i}: {name}" for i, name in channels.items()),
        "label_codes": {"background": info.labels.background_codes[0], **codes},
        "intended_use": "research only, not for clinical use",
        "references": [
            "Lu, Zheng, Gupta. Unsupervised Domain Adaptation for Cardiac Segmentation: Towards Structure Mutual "
            "Information Maximization. CVPR Workshops 2022.",
        ],
        "preprocessing": {
            **prep.to_dict(),
            "spacing_source": "the NIfTI header's pixdim",
            "slice_axis": 2,
            "network_stride": stride,
        },
        "postprocessing": {
            "largest_component": list(pp.largest_component) if pp is not None else [],
            "decided_on": pp.decided_on if pp is not None else "",
        },
        "udavae": {
            "version": __version__,
            "method": cfg.method.name,
            "checkpoint": checkpoint,
            "epoch": epoch,
            "source": info.source,
            "target": info.target,
        },
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "MR",
                    "num_channels": 1,
                    "spatial_shape": [side, side],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": info.num_classes,
                    "spatial_shape": [side, side],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": channels,
                }
            },
            "post_processed_outputs": {
                "pred": {
                    "type": "image",
                    "format": "labels",
                    "num_channels": 1,
                    "spatial_shape": ["*", "*", "*"],
                    "dtype": "int16",
                    "value_range": sorted({info.labels.background_codes[0], *codes.values()}),
                    "is_patch_data": False,
                    "channel_def": {str(c): n for n, c in {"background": 0, **codes}.items()},
                }
            },
        },
    }


def readme(cfg: Any, info: Any, checkpoint: str, epoch: int | None, largest: list[str]) -> str:
    """``docs/README.md`` of the bundle."""
    pp = ", ".join(largest) if largest else "none"
    n = max(2, info.preprocessing.size[0] // 2 ** (cfg.model.depth - 1))  # the network's input side, in strides
    return f"""# udavae model: {cfg.method.name}, {info.source} -> {info.target}

Exported by udavae {__version__} from a training run (checkpoint `{checkpoint}`, epoch {epoch}). Structures:
{", ".join(f"{n} (code {c})" for n, c in info.labels.codes.items())}. Post-processing (largest connected component
kept): {pp}.

## Run it

```bash
pip install 'udavae[monai]=={__version__}'   # MONAI, fire (the bundle command line) and udavae's transforms
python -m monai.bundle run --config_file BUNDLE/configs/inference.json --bundle_root BUNDLE \\
    --dataset_dir SCANS --output_dir MASKS
```

Every `*.nii.gz` / `*.nii` scan of `SCANS` gives `MASKS/<name>.nii.gz`: the mask `udavae predict` writes for it,
voxel for voxel, in the scan's geometry (shape, spacing, origin, direction), with the label codes above
(`configs/metadata.json`, `label_codes`). Run from the bundle folder, `--bundle_root` can be left out. On a GPU the
bundle runs there (the `device` entry).

## What it does (`configs/inference.json`)

1. `LoadImaged` (MONAI, nibabel): the scan as float32, its affine and header.
2. `ToSlicesd` (udavae): intensities normalised per volume, slices resampled in-plane and zero-padded, exactly as
   `udavae predict` does (`metadata.json`, `preprocessing`).
3. `SliceInferer` (udavae): slices in batches of 16, padded to the network stride, softmax of the fusion head.
4. `ToNativeGridd` (udavae): back to the scan's grid (padding removed, bilinear resampling back).
5. `AsDiscreted` (MONAI): arg-max over the classes.
6. `KeepLargestComponentd` (udavae): the largest 3-D component of the structures listed above.
7. `MapLabelValued` (MONAI): class indices to the label codes; `SaveImaged` (MONAI): the NIfTI mask.

## Why some steps are udavae's own

The bundle must give the masks `udavae predict` gives, not masks that are almost the same. MONAI's transforms
compute other numbers for steps 2-4 and 6: its percentile scaling uses `torch.quantile` (volumes under a million
voxels) where udavae uses `np.percentile`, its resizing anti-aliases with a Gaussian filter where udavae uses
PyTorch's anti-aliased bilinear interpolation, and its largest-component filter needs scikit-image and keeps the
last of equally large components where udavae keeps the first. A few voxels would differ. These steps therefore
call udavae's functions through `_target_`, and `metadata.json` lists udavae under `required_packages_version`.
Everything else is MONAI's.

## Check it

```bash
python -m monai.bundle verify_metadata --meta_file BUNDLE/configs/metadata.json --filepath schema.json
python -m monai.bundle verify_net_in_out network_def --meta_file BUNDLE/configs/metadata.json \\
    --config_file BUNDLE/configs/inference.json --n {n}
```

`verify_metadata` downloads MONAI's schema to `schema.json` (offline: place a copy of the schema named in
`metadata.json` there first). `verify_net_in_out` needs `--n` of at least 2 (instance normalisation needs more than
one pixel at the bottom of the U-Net).
"""


def export_bundle(run: str | Path, out: str | Path, checkpoint: str = "selected", batch_size: int = 16) -> Path:
    """Write the MONAI bundle of a model folder (or model zip) into the new folder ``out``.

    The bundle is written into a temporary folder beside ``out`` and renamed, so ``out`` never holds half a
    bundle.

    Raises:
        UserError: not a model, no such checkpoint, ``out`` exists and is not an empty folder.
    """
    import torch

    from udavae.engine import model_folder as mf
    from udavae.export.archive import model_source
    from udavae.export.bundle_runtime import SegmentationNetwork
    from udavae.fileio import ensure_writable_dir, write_json, write_text

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder: give a new folder for the bundle")
    parent = ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    with model_source(run, checkpoint) as (folder, name, _):
        cfg, info, method, state = mf.load_trained(folder, name, "cpu")
        pp = mf.load_postprocessing(folder, name)
    largest = [i for i, n in sorted(info.labels.class_names.items()) if pp is not None and n in pp.largest_component]
    m = cfg.model
    network = SegmentationNetwork(info.num_classes, m.base_width, m.depth, m.wiring, m.mean_head, m.dropout)
    network.net.load_state_dict(method.net.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=parent))
    try:
        for sub in ("configs", "models", "docs"):
            (tmp / sub).mkdir()
        write_json(tmp / "configs" / "metadata.json", metadata(cfg, info, name, state.get("epoch"), pp))
        write_json(tmp / "configs" / "inference.json", inference_config(cfg, info, largest, batch_size))
        write_text(tmp / "configs" / "logging.conf", _LOGGING_CONF)
        torch.save(network.state_dict(), tmp / "models" / "model.pt")
        names = [info.labels.class_names[i] for i in largest]
        write_text(tmp / "docs" / "README.md", readme(cfg, info, name, state.get("epoch"), names))
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

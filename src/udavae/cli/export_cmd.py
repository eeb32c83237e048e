"""``udavae export``: a trained model as one zip file, or as a MONAI bundle (docs/reference/export.md)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

_DESCRIPTION = """\
Write a trained model in a form that can be used elsewhere.

--format zip (default): OUT is one file holding the chosen weights only (no optimiser state), config.yaml,
model.json (label map, preprocessing), selection.json, postprocessing.json, training_data.json (the training
data as counts: domains, cases, splits; no case ids, no patient data) and manifest.json (the sha256 of every
member, the udavae version, the format version). 'udavae predict', 'udavae evaluate --out', 'udavae model info',
'udavae export' and udavae.load() take the zip wherever they take a model folder; it is verified before use.

--format monai-bundle: OUT is a new folder holding a MONAI bundle (configs/metadata.json,
configs/inference.json, models/model.pt, docs/README.md); 'python -m monai.bundle run --config_file
OUT/configs/inference.json --bundle_root OUT --dataset_dir SCANS --output_dir MASKS' writes the masks 'udavae
predict' writes, voxel for voxel (pip install 'udavae[monai]').
"""

_EPILOG = """\
examples:
  udavae export runs/udavae++ udavae++.zip
  udavae predict udavae++.zip new_scans/ masks/          # on another machine: nothing else needed
  udavae export runs/udavae++ bundle/ --format monai-bundle
  python -m monai.bundle run --config_file bundle/configs/inference.json --bundle_root bundle \\
      --dataset_dir new_scans/ --output_dir masks/
"""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    p = sub.add_parser(
        "export",
        help="write a trained model as one zip file or as a MONAI bundle",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", help="model folder written by 'udavae train' (or a model zip)")
    p.add_argument("out", help="the zip file to write (--format zip), or a new folder (--format monai-bundle)")
    p.add_argument(
        "--format",
        choices=("zip", "monai-bundle"),
        default="zip",
        help="zip: one file for udavae (default); monai-bundle: a MONAI bundle folder",
    )
    p.add_argument(
        "--checkpoint",
        default="selected",
        help="which weights to export: 'selected' = the one the run's selection rule chose (default), 'best', "
        "'last', 'ema', or a kept 'epoch_NNN' / 'epoch_NNN_ema'",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="monai-bundle: slices per forward pass in the bundle (default 16, as 'udavae predict')",
    )
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    """Write the zip or the bundle and say what was written."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.format == "zip":
        from udavae.export.archive import export_zip

        res = export_zip(args.run, args.out, args.checkpoint)
        size = res.path.stat().st_size / 1e6
        print(f"wrote {res.path} ({size:.1f} MB): checkpoint {res.checkpoint} (epoch {res.epoch}), sha256 {res.sha256}")
        return 0
    from udavae.export.bundle import export_bundle

    out = export_bundle(args.run, args.out, args.checkpoint, args.batch_size)
    if importlib.util.find_spec("fire") is None:
        print("note: 'python -m monai.bundle run' needs the package fire: pip install 'udavae[monai]'", file=sys.stderr)
    config = Path(out) / "configs" / "inference.json"
    print(f"wrote the MONAI bundle {out}; run it with (pip install 'udavae[monai]'):")
    print(f"  python -m monai.bundle run --config_file {config} --bundle_root {out} --dataset_dir IN --output_dir OUT")
    return 0

"""``udavae model info MODEL``: what a model folder or a model zip holds, in a few lines.

For a zip this is also its check: the zip is verified (every member's sha256) as any command that loads it does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from udavae.fileio import read_json

__all__ = ["model_summary"]


def _domain(d: dict[str, Any]) -> str:
    """``C0: 35 cases (35 labelled; train 35)``, or the domain name alone when counts are unknown."""
    if "cases" not in d:
        return d["domain"]
    splits = ", ".join(f"{k} {v}" for k, v in d.get("splits", {}).items())
    return f"{d['domain']}: {d['cases']} cases ({d['labelled']} labelled{'; ' + splits if splits else ''})"


def model_summary(path: str | Path, checkpoint: str = "selected") -> list[tuple[str, str]]:
    """(label, text) rows describing a model folder or a model zip: provenance, network, checkpoint, label map,
    preprocessing, post-processing and training data.

    Raises:
        UserError: not a model folder or model zip, or a zip that fails its checks.
    """
    from udavae.engine import model_folder as mf
    from udavae.export.archive import TRAINING_DATA, describe_training_data, model_source, sha256_file

    path = Path(path)
    rows: list[tuple[str, str]] = []
    with model_source(path, checkpoint) as (folder, name, manifest):
        cfg, info = mf.read_model_folder(folder)
        state = mf.load_checkpoint(mf.checkpoint_path(folder, name))
        selection = mf.read_selection(folder)
        pp = mf.load_postprocessing(folder, name)
        if manifest is not None:
            rows.append(
                (
                    "model zip",
                    f"format {manifest['format_version']}, written by udavae {manifest.get('udavae_version')} "
                    f"(torch {manifest.get('torch_version')}) on {manifest.get('created')}; "
                    f"{len(manifest['files'])} members, every sha256 verified",
                )
            )
            rows.append(("zip sha256", f"{sha256_file(path)} ({path.stat().st_size / 1e6:.1f} MB)"))
            data = read_json(folder / TRAINING_DATA) if (folder / TRAINING_DATA).is_file() else None
        else:
            written = read_json(folder / "model.json").get("udavae_version")
            rows.append(("model folder", f"{path}, written by udavae {written}"))
            data = describe_training_data(cfg, info, selection)
    m = cfg.model
    rows.append(
        (
            "method",
            f"{cfg.method.name} (kind {cfg.method.kind}); network base_width {m.base_width}, depth {m.depth}, "
            f"wiring {m.wiring}, mean_head {m.mean_head}",
        )
    )
    how = f", chosen by {selection['rule']}" if selection and selection.get("checkpoint") == name else ""
    rows.append(("checkpoint", f"{name} (epoch {state.get('epoch')}{how})"))
    codes = ", ".join(f"{k}={v}" for k, v in info.labels.codes.items())
    rows.append(("structures", f"{codes} (background {info.labels.background_codes[0]})"))
    rows.append(("preprocessing", _prep_text(info.preprocessing)))
    rows.append(("post-processing", pp.describe().removeprefix("post-processing: ") if pp else "none decided"))
    if data is not None:
        text = f"dataset {data.get('dataset')!r}, {_domain(data['source'])} -> {_domain(data['target'])}"
        if not data.get("available", True):
            text += " (dataset not found when described: no counts)"
        rows.append(("training data", text))
    return rows


def _prep_text(prep: Any) -> str:
    """One line: intensity rule, resampling, network size."""
    if prep.intensity == "percentile":
        text = f"intensities clipped to percentiles {prep.lower:g}-{prep.upper:g} then to [0, 1]"
    else:
        text = f"intensities {prep.intensity}"
    if prep.target_spacing:
        text += f"; in-plane spacing {prep.target_spacing[0]:g} x {prep.target_spacing[1]:g} mm"
    elif prep.zoom != 1.0:
        text += f"; in-plane zoom {prep.zoom:g}"
    return text + f"; slices padded to at least {prep.size[0]} x {prep.size[1]}"

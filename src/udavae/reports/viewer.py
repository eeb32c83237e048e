"""The per-case overlay viewer of the HTML reports (:mod:`udavae.reports.html`): slices as data URIs, the page.

Each case's slices are embedded as base64 JPEG (the image, windowed to its 0.5-99.5 percentiles) and PNG (the
mask filled, the reference label as outlines). The template ``report_template.html`` (package data) holds the
style and the inline script that builds, per case, the slice slider, the mask and reference toggles and the
opacity slider. Nothing is fetched: the page opens offline.

Size limit: a case shows at most :data:`MAX_SLICES` slices (evenly spaced), each at most :data:`MAX_SIDE` pixels
on its longer side; about 0.1-0.3 MB per case.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import numpy as np

__all__ = ["MAX_SIDE", "MAX_SLICES", "colours", "encode_case", "legend", "render_page"]

#: Longest side (pixels) of an embedded slice; larger slices are downsampled.
MAX_SIDE = 256
#: Slices embedded per case (evenly spaced when the scan has more).
MAX_SLICES = 32
#: Viewer size on the page (CSS pixels): the scan's physical width fills VIEW_WIDTH, its height at most VIEW_HEIGHT.
VIEW_WIDTH, VIEW_HEIGHT = 400, 440
JPEG_QUALITY = 85
#: The structures' colours, in class order (those of the PNG figures, :mod:`udavae.reports.figures`).
STRUCTURE_COLOURS = ("#f5c518", "#e6194b", "#3cb44b", "#4363d8", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")


def colours(n_classes: int) -> np.ndarray:
    """RGBA (uint8) per class index: background transparent, then the structure colours."""
    lut = np.zeros((max(n_classes, 2), 4), np.uint8)
    for i in range(1, len(lut)):
        h = STRUCTURE_COLOURS[(i - 1) % len(STRUCTURE_COLOURS)]
        lut[i] = (int(h[1:3], 16), int(h[3:5], 16), int(h[5:7], 16), 255)
    return lut


def _b64(img: Any, fmt: str) -> str:
    """A PIL image as base64 JPEG or PNG."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": JPEG_QUALITY} if fmt == "JPEG" else {"optimize": True}))
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _outline(classes: np.ndarray) -> np.ndarray:
    """The class map with only each structure's boundary pixels kept (how the reference label is drawn)."""
    pad = np.pad(classes, 1, mode="edge")
    inner = (
        (pad[1:-1, :-2] == classes)
        & (pad[1:-1, 2:] == classes)
        & (pad[:-2, 1:-1] == classes)
        & (pad[2:, 1:-1] == classes)
    )
    return np.where(inner, 0, classes).astype(np.uint8)


def encode_case(
    key: str,
    case_id: str,
    image: np.ndarray,
    spacing: Sequence[float],
    mask: np.ndarray,
    n_classes: int,
    reference: np.ndarray | None = None,
    max_slices: int = MAX_SLICES,
    max_side: int = MAX_SIDE,
) -> dict[str, Any]:
    """The viewer data of one case (JSON-ready): its slices as base64 images, the first slice shown, the size.

    Args:
        key: the viewer's id on the page (the element ``udv-<key>``).
        case_id: shown under the images (alt texts).
        image / mask / reference: (x, y, z) intensities and class indices on the scan's grid.
        spacing: voxel size (mm), for the displayed aspect ratio.
        n_classes: classes including the background (the colours).
    """
    from PIL import Image

    nx, ny, nz = image.shape
    picked = np.unique(np.linspace(0, nz - 1, min(nz, max_slices)).round().astype(int))
    finite = image[np.isfinite(image)]
    lo, hi = (float(v) for v in np.percentile(finite, (0.5, 99.5))) if finite.size else (0.0, 1.0)
    scale = max_side / max(nx, ny) if max(nx, ny) > max_side else 1.0
    size = (max(1, round(nx * scale)), max(1, round(ny * scale)))
    lut = colours(n_classes)
    layers = [("mask", mask, False)] + ([("reference", reference, True)] if reference is not None else [])
    out: dict[str, Any] = {"key": key, "id": case_id, "slices": picked.tolist(), "image": [], "mask": []}
    out["reference"] = [] if reference is not None else None
    for k in picked:
        # x to the right, y upwards: as the PNG figures show the arrays (transposed, origin lower)
        grey = np.clip((np.nan_to_num(image[:, :, k].T[::-1]) - lo) / max(hi - lo, 1e-12), 0, 1)
        img = Image.fromarray((grey * 255).round().astype(np.uint8), mode="L")
        out["image"].append(_b64(img.resize(size, Image.BILINEAR) if scale != 1 else img, "JPEG"))
        for name, lab, outline in layers:
            plane = Image.fromarray(np.ascontiguousarray(lab[:, :, k].T[::-1]).astype(np.uint8))
            small = np.asarray(plane.resize(size, Image.NEAREST) if scale != 1 else plane)
            small = _outline(small) if outline else small
            out[name].append(_b64(Image.fromarray(lut[np.minimum(small, len(lut) - 1)], mode="RGBA"), "PNG"))
    foreground = [int((mask[:, :, k] > 0).sum()) for k in picked]
    out["start"] = int(np.argmax(foreground)) if max(foreground) > 0 else len(picked) // 2
    w_mm, h_mm = nx * float(spacing[0]), ny * float(spacing[1])
    px = min(VIEW_WIDTH / w_mm, VIEW_HEIGHT / h_mm)
    out["width"], out["height"] = round(w_mm * px), round(h_mm * px)
    return out


def legend(structures: Sequence[str], reference: bool) -> str:
    """The colour legend of the viewers (HTML)."""
    lut = colours(len(structures) + 1)
    items = "".join(
        f'<span><span class="sw" style="background: rgb({c[0]}, {c[1]}, {c[2]})"></span>{html.escape(str(s))}</span>'
        for s, c in zip(structures, lut[1:])
    )
    note = "filled: predicted mask; outline: reference label" if reference else "filled: predicted mask"
    return f'<div class="legend">{items}<span>{note}</span></div>'


def render_page(title: str, body: str, cases: Sequence[Mapping[str, Any]]) -> str:
    """The page: the template with the title, the body HTML and the viewers' data (JSON, ``</`` escaped)."""
    template = resources.files("udavae.reports").joinpath("report_template.html").read_text(encoding="utf-8")
    values = {
        "TITLE": html.escape(title),
        "BODY": body,
        "CASES": json.dumps(list(cases), separators=(",", ":")).replace("</", "<\\/"),
    }
    return re.sub(r"__(TITLE|BODY|CASES)__", lambda m: values[m.group(1)], template)  # one pass: no re-substitution

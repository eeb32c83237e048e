"""Synthetic two-domain cardiac short-axis MR phantoms: demo data that needs no download.

:func:`generate_dataset` writes the canonical layout (``dataset.json`` beside
``<domain>/images|labels/<id>.nii.gz``, see :mod:`udavae.data.spec`) with two unpaired domains:

- ``C0`` (source, bSSFP-like): bright blood pools, dark myocardium, mid-grey tissue, dark lungs, bright fat;
- ``LGE`` (target), as late-gadolinium images look: nulled (dark) myocardium, blood pools only as bright as
  the chest-wall muscle, liver and aorta around them, bright fat, plus a strong smooth multiplicative bias
  field, more blur, more Rician noise and a different global contrast (gamma). A source-only model, which
  learned "blood is the brightest tissue", loses the blood pools (and with them the LV and RV) while every
  structure stays visible by its shape and its dark myocardial border.

Each volume has random anatomy (seeded per domain and case): an elliptic LV blood pool with papillary
muscles, a myocardial ring of varying thickness, an RV crescent on the septal side, a base-to-apex
taper (slice 0 is basal; the RV may vanish apically), heart axis rotation, centre offset and slice
misregistration, and background structures (chest wall, subcutaneous and pericardial fat, lungs,
liver, descending aorta, spine). Tissues are drawn at 3x in-plane super-resolution and averaged down
(partial volume); labels are sampled at the final pixel centres. Shapes are drawn in pixel units, so
the domains differ in spacing only through the header. Labels use MS-CMRSeg codes (MYO 200, LV 500,
RV 600).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from udavae.data.nifti import save_volume
from udavae.data.preprocessing import Preprocessing
from udavae.data.spec import Case, DatasetSpec, LabelMap, case_relpaths

SOURCE, TARGET = "C0", "LGE"
LABELS = LabelMap(codes={"MYO": 200, "LV": 500, "RV": 600})
SUPERSAMPLE = 3  # odd, so the centre sub-pixel of each block is the pixel centre (label sampling)

# Tissue classes drawn by the phantom (painter's order is in _draw_tissues).
AIR, MUSCLE, FAT, LUNG, LIVER, SPINE, AORTA, MYO, LV, RV, RV_WALL, PAP = range(12)
# Label code of each tissue: papillary muscles belong to the LV blood pool (as in MS-CMRSeg).
LABEL_OF = np.array([0, 0, 0, 0, 0, 0, 0, 200, 500, 600, 0, 500], dtype=np.int16)


@dataclass(frozen=True)
class DomainStyle:
    """How one domain renders tissues: intensities, acquisition artefacts and header geometry.

    Attributes:
        lut: mean intensity per tissue class (index = tissue constant).
        spacing: nominal voxel size (mm) written to the header.
        euler_deg: nominal oblique orientation of the slice stack (degrees about x, y, z).
        zoom: anatomy scale factor in pixels (finer target pixels show a larger heart).
        blur: Gaussian PSF sigma in pixels applied after partial-volume averaging.
        noise: Rician noise sigma (image intensities are about [0, 1]).
        bias: spread of the smooth log bias-field coefficients.
        gamma: global contrast exponent.
    """

    lut: tuple[float, ...]
    spacing: tuple[float, float, float]
    euler_deg: tuple[float, float, float]
    zoom: float
    blur: float
    noise: float
    bias: float
    gamma: float


#            AIR   MUSCLE FAT  LUNG  LIVER SPINE AORTA MYO   LV    RV    RV_WALL PAP
STYLES: dict[str, DomainStyle] = {
    SOURCE: DomainStyle(
        lut=(0.00, 0.30, 0.80, 0.06, 0.38, 0.45, 0.88, 0.24, 0.90, 0.86, 0.30, 0.30),
        spacing=(1.25, 1.25, 10.0),
        euler_deg=(-35.0, 25.0, 10.0),
        zoom=1.0,
        blur=0.35,
        noise=0.025,
        bias=0.08,
        gamma=1.0,
    ),
    TARGET: DomainStyle(
        lut=(0.03, 0.42, 0.75, 0.08, 0.45, 0.50, 0.40, 0.10, 0.40, 0.38, 0.12, 0.12),
        spacing=(0.8, 0.8, 5.0),
        euler_deg=(-30.0, 30.0, 0.0),
        zoom=1.1,
        blur=0.9,
        noise=0.06,
        bias=0.30,
        gamma=1.3,
    ),
}


@dataclass
class PhantomCase:
    """One rendered volume: image (x, y, z) float32, label codes (x, y, z) int16 and geometry."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


def _quadric(
    X: np.ndarray, Y: np.ndarray, cx: np.ndarray, cy: np.ndarray, a: np.ndarray, b: np.ndarray, theta: np.ndarray
) -> np.ndarray:
    """Ellipse membership on the grid, one ellipse per slice (params broadcast as (S, 1, 1)).

    The quadratic form is expanded so that only four full-size array operations are needed.
    """
    c, s = np.cos(theta), np.sin(theta)
    ia, ib = 1.0 / np.square(a), 1.0 / np.square(b)
    dx, dy = X - cx, Y - cy  # (S, N, 1) and (S, 1, N)
    q = (c * c * ia + s * s * ib) * dx * dx + (s * s * ia + c * c * ib) * dy * dy
    q += (2 * c * s * (ia - ib) * dx) * dy
    return q <= 1.0


def _col(v: np.ndarray | float, slices: int) -> np.ndarray:
    """Per-slice parameter as a float32 (S, 1, 1) column (scalars are repeated)."""
    return np.broadcast_to(np.asarray(v, dtype=np.float32), (slices,)).reshape(-1, 1, 1)


def _draw_tissues(rng: np.random.Generator, size: int, slices: int, zoom: float) -> np.ndarray:
    """Random anatomy as a super-resolved tissue map (S, size*F, size*F) uint8."""
    sc = size / 96 * zoom
    n = size * SUPERSAMPLE
    xs = (np.arange(n, dtype=np.float32) + 0.5) / SUPERSAMPLE
    X, Y = xs[None, :, None], xs[None, None, :]
    t = np.linspace(0.0, 1.0, slices) if slices > 1 else np.array([0.4])  # 0 = base, 1 = apex

    # Heart frame: u points from the LV to the RV (septal direction), v is anterior; shown as
    # ``data[:, :, k].T`` with the origin at the bottom, the RV is on the left and anterior is up.
    phi = np.pi + rng.normal(0.0, 0.35)
    u, v = np.array([np.cos(phi), np.sin(phi)]), np.array([np.sin(phi), -np.cos(phi)])
    r_epi0 = rng.uniform(15.0, 19.0) * sc
    w_rv0 = rng.uniform(7.0, 11.0) * sc
    centre = size / 2 + np.clip(rng.normal(0.0, 3.0 * sc, 2), -7 * sc, 7 * sc) - u * 0.5 * w_rv0
    drift = rng.normal(0.0, 2.5 * sc, 2)
    c = centre + np.outer(t, drift) + rng.normal(0.0, 0.6 * sc, (slices, 2))  # per-slice LV centre
    taper = np.sqrt(1.0 - (rng.uniform(0.72, 0.85) * t) ** 2)
    thick = rng.uniform(3.0, 5.0) * sc * (1.0 + 0.25 * t)
    r_epi = r_epi0 * taper
    r_endo = np.maximum(r_epi - thick, 0.6 * sc)
    ecc, psi = rng.uniform(0.82, 1.0), rng.uniform(0.0, np.pi)
    shift = rng.normal(0.0, 0.25, 2) * thick[:, None]  # epicardium off-centre: thickness varies
    w_rv = w_rv0 * np.clip(1.0 - (t / rng.uniform(0.7, 1.1)) ** 2, 0.0, 1.0)
    rv_on = w_rv > 0.8 * sc

    def ell(
        cxy: np.ndarray,
        a: np.ndarray | float,
        b: np.ndarray | float,
        th: np.ndarray | float,
        on: np.ndarray | None = None,
    ) -> np.ndarray:
        cxy = np.broadcast_to(cxy, (slices, 2)).astype(np.float32)
        a, b = np.broadcast_to(a, (slices,)).copy(), np.broadcast_to(b, (slices,)).copy()
        if on is not None:  # an absent ellipse: tiny and far away
            a[~on], b[~on] = 1e-3, 1e-3
            cxy = np.where(on[:, None], cxy, -1e4)
        return _quadric(
            X, Y, _col(cxy[:, 0], slices), _col(cxy[:, 1], slices), _col(a, slices), _col(b, slices), _col(th, slices)
        )

    tissue = np.full((slices, n, n), AIR, dtype=np.uint8)

    def paint(mask: np.ndarray, value: int) -> None:
        np.putmask(tissue, mask, np.uint8(value))

    # Thorax: subcutaneous fat, chest-wall muscle, mediastinal soft tissue, lungs, liver, spine, aorta.
    body_c = centre + u * rng.normal(0.0, 4.0 * sc) - v * rng.uniform(9.0, 14.0) * sc
    body_a, body_b = rng.uniform(80.0, 95.0) * sc, rng.uniform(44.0, 52.0) * sc
    paint(ell(body_c, body_a, body_b, phi), FAT)
    fat_w = rng.uniform(2.5, 4.5) * sc
    paint(ell(body_c, body_a - fat_w, body_b - fat_w, phi), MUSCLE)
    wall = fat_w + rng.uniform(5.0, 8.0) * sc
    thorax = ell(body_c, body_a - wall, body_b - wall, phi)
    lung_s = 1.0 - 0.35 * t
    for side, gap, a0, b0 in ((-1.0, r_epi0 + 3 * sc, 20.0, 34.0), (1.0, r_epi0 + w_rv0 + 4 * sc, 18.0, 30.0)):
        a_l = a0 * sc * lung_s * rng.uniform(0.85, 1.15)
        lc = c + side * u * (gap + a_l)[:, None] + v * rng.uniform(-2.0, 8.0) * sc
        paint(ell(lc, a_l, b0 * sc * lung_s, phi + rng.normal(0.0, 0.2)) & thorax, LUNG)
    liver_c = c + u * 0.6 * r_epi0 - v[None] * (r_epi0 + (44.0 - 30.0 * t) * sc)[:, None]
    paint(ell(liver_c, 34 * sc, 24 * sc, phi + rng.normal(0.0, 0.2)) & thorax, LIVER)
    aorta_c = centre - v * (r_epi0 + rng.uniform(8.0, 11.0) * sc) - u * 0.55 * r_epi0
    paint(ell(aorta_c + u * 12 * sc - v * 5 * sc, 8 * sc, 8 * sc, 0.0), SPINE)
    r_ao = rng.uniform(4.5, 6.0) * sc
    paint(ell(aorta_c, r_ao, r_ao, 0.0), AORTA)

    # Heart: pericardial fat, RV free wall, RV cavity, myocardium, LV cavity, papillary muscles.
    rv_b = 0.55 * (r_epi + w_rv)
    rv_c = c + u * (r_epi + w_rv - rv_b)[:, None] + v * rng.normal(0.1, 0.08) * r_epi0
    rv_a = rng.uniform(1.05, 1.3) * (r_epi + 0.5 * w_rv)
    rv_th = phi + rng.normal(0.0, 0.15)
    endo_a, endo_b = r_endo, r_endo * ecc
    fat_t = rng.uniform(1.5, 3.0) * sc
    paint(ell(c + shift + v * fat_t, endo_a + thick + fat_t, endo_b + thick + fat_t, phi + psi), FAT)
    wall_t = rng.uniform(1.0, 1.6) * sc
    paint(ell(rv_c, rv_b + wall_t, rv_a + wall_t, rv_th, rv_on), RV_WALL)
    paint(ell(rv_c, rv_b, rv_a, rv_th, rv_on), RV)
    paint(ell(c + shift, endo_a + thick, endo_b + thick, phi + psi), MYO)
    paint(ell(c, endo_a, endo_b, phi + psi), LV)
    pap_on = (t > 0.15) & (t < 0.85) & (r_endo > 5 * sc)
    for ang in (-2.3, 2.2):
        d = np.array([np.cos(phi + ang), np.sin(phi + ang)])
        r_p = 0.17 * r_endo * rng.uniform(0.8, 1.2)
        paint(ell(c + d * (r_endo - 1.2 * r_p)[:, None], r_p, r_p, 0.0, pap_on), PAP)
    return tissue


def _bias_field(rng: np.random.Generator, size: int, slices: int, spread: float) -> np.ndarray:
    """Smooth multiplicative field (S, size, size): exp of a random quadratic polynomial."""
    g = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    x, y = g[None, :, None], g[None, None, :]
    z = np.linspace(-1.0, 1.0, slices, dtype=np.float32)[:, None, None]
    k = rng.normal(0.0, spread, 6).astype(np.float32)
    return np.exp(k[0] * x + k[1] * y + k[2] * x * y + k[3] * (x * x - 0.3) + k[4] * (y * y - 0.3) + 0.3 * k[5] * z)


def _render_intensities(tissue: np.ndarray, style: DomainStyle, rng: np.random.Generator) -> np.ndarray:
    """Tissue map -> image (S, size, size): per-case contrast, partial volume, PSF, bias, Rician noise."""
    s, n, _ = tissue.shape
    size = n // SUPERSAMPLE
    lut = np.asarray(style.lut, dtype=np.float32) * rng.uniform(0.9, 1.1, len(style.lut)).astype(np.float32)
    lut = np.clip(lut + rng.normal(0.0, 0.02, lut.shape).astype(np.float32), 0.0, None)
    hi = lut[tissue]
    img = hi.reshape(s, size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(2, 4))
    texture = gaussian_filter(rng.standard_normal(img.shape).astype(np.float32), (0, 2.5, 2.5))
    img *= 1.0 + 0.05 * texture / (texture.std() + 1e-6)
    img = gaussian_filter(img, (0, style.blur, style.blur))
    img = np.clip(img, 0.0, None) ** (style.gamma * rng.uniform(0.9, 1.1))
    img *= _bias_field(rng, size, s, style.bias) * rng.uniform(0.85, 1.15)
    img *= rng.normal(1.0, 0.03, (s, 1, 1)).astype(np.float32)  # per-slice (breath-hold) gain
    sigma = style.noise * rng.uniform(0.8, 1.25)
    re = img + rng.normal(0.0, sigma, img.shape).astype(np.float32)
    im = rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)


def _euler(deg: np.ndarray) -> np.ndarray:
    """Rotation matrix from angles (degrees) about x, then y, then z."""
    a, b, g = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(g), -np.sin(g), 0], [np.sin(g), np.cos(g), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _geometry(
    rng: np.random.Generator, style: DomainStyle, shape: tuple[int, int, int]
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Oblique voxel-to-world affine and spacing of a case (nominal domain geometry, jittered)."""
    inplane = round(style.spacing[0] * rng.uniform(0.95, 1.05), 4)
    spacing = (inplane, inplane, style.spacing[2])
    affine = np.eye(4)
    affine[:3, :3] = _euler(np.asarray(style.euler_deg) + rng.normal(0.0, 4.0, 3)) @ np.diag(spacing)
    centre = rng.normal(0.0, 20.0, 3)
    affine[:3, 3] = centre - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2)
    return affine, spacing


def render_case(domain: str, index: int, seed: int = 0, size: int = 96, slices: int = 8) -> PhantomCase:
    """Render case ``index`` of ``domain`` (``C0`` or ``LGE``); deterministic in (seed, domain, index).

    Each case has its own random stream, so a case does not change when the case counts change.
    """
    if domain not in STYLES:
        raise ValueError(f"unknown synthetic domain {domain!r} (domains: {', '.join(STYLES)})")
    if size < 32 or slices < 1:
        raise ValueError(f"need size >= 32 and slices >= 1, got size={size}, slices={slices}")
    style = STYLES[domain]
    rng = np.random.default_rng([seed, list(STYLES).index(domain), index])
    tissue = _draw_tissues(rng, size, slices, style.zoom)
    image = _render_intensities(tissue, style, rng)
    c = SUPERSAMPLE // 2
    label = LABEL_OF[tissue[:, c::SUPERSAMPLE, c::SUPERSAMPLE]]
    affine, spacing = _geometry(rng, style, (size, size, slices))
    return PhantomCase(
        image=np.ascontiguousarray(image.transpose(1, 2, 0)),
        label=np.ascontiguousarray(label.transpose(1, 2, 0)),
        affine=affine,
        spacing=spacing,
    )


def generate_dataset(
    out: str | Path,
    n_source: int = 12,
    n_target: int = 12,
    size: int = 96,
    slices: int = 8,
    seed: int = 0,
    n_val: int = 3,
) -> DatasetSpec:
    """Write a synthetic two-domain dataset in the canonical layout and return its spec.

    Splits: ``C0: {train: all}``, ``LGE: {val: first n_val, test: the rest}``; both domains carry
    labels (the target's for validation and evaluation only). ``dataset.json`` is written last, so a
    folder with a spec holds complete data.

    Raises:
        ValueError: non-positive counts, or ``n_val`` outside ``[0, n_target]``.
    """
    if n_source < 1 or n_target < 1:
        raise ValueError(f"need at least one case per domain, got n_source={n_source}, n_target={n_target}")
    if not 0 <= n_val <= n_target:
        raise ValueError(f"n_val must be in [0, n_target={n_target}], got {n_val}")
    root = Path(out)
    domains: dict[str, list[Case]] = {}
    for domain, count in ((SOURCE, n_source), (TARGET, n_target)):
        for sub in ("images", "labels"):
            (root / domain / sub).mkdir(parents=True, exist_ok=True)
        domains[domain] = []
        for i in range(count):
            case_id = f"case{i + 1:03d}"
            image_rel, label_rel = case_relpaths(domain, case_id)
            ph = render_case(domain, i, seed=seed, size=size, slices=slices)
            save_volume(ph.image, ph.affine, root / image_rel, spacing=ph.spacing, dtype=np.float32)
            save_volume(ph.label, ph.affine, root / label_rel, spacing=ph.spacing, dtype=np.int16)
            domains[domain].append(Case(id=case_id, image=image_rel, label=label_rel))
    target_ids = [c.id for c in domains[TARGET]]
    spec = DatasetSpec(
        name="synthetic-cmr",
        labels=LABELS,
        domains=domains,
        splits={
            SOURCE: {"train": [c.id for c in domains[SOURCE]]},
            TARGET: {"val": target_ids[:n_val], "test": target_ids[n_val:]},
        },
        preprocessing=Preprocessing(intensity="percentile", size=(size, size)),
        description=(
            f"Synthetic short-axis cardiac MR phantoms (seed {seed}): bSSFP-like source C0, "
            "contrast-remapped target LGE (myocardium brighter than blood, bias field, noise); "
            "cases are unpaired across domains; slice 0 is basal."
        ),
        root=root,
    )
    spec.save(root)
    return spec

"""Tests of the synthetic two-domain phantom generator (layout, anatomy, domain shift, determinism)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from udavae.data.preprocessing import Preprocessing
from udavae.data.spec import SPEC_FILE, DatasetSpec
from udavae.data.synthetic import LABELS, SOURCE, TARGET, generate_dataset, render_case

CODES = {0, 200, 500, 600}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> DatasetSpec:
    """The default demo dataset (12 + 12 cases, 96 x 96 x 8), generated once for the module."""
    return generate_dataset(tmp_path_factory.mktemp("synth"))


def _load(spec: DatasetSpec, domain: str) -> list[tuple[nib.Nifti1Image, nib.Nifti1Image]]:
    return [(nib.load(spec.path(c.image)), nib.load(spec.path(c.label))) for c in spec.cases(domain)]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1))


def test_layout_counts_and_splits(dataset: DatasetSpec) -> None:
    root = dataset.root
    assert (root / SPEC_FILE).is_file()
    spec = DatasetSpec.load(root)
    assert spec.to_dict() == dataset.to_dict()
    assert list(spec.domains) == [SOURCE, TARGET]
    ids = [f"case{i:03d}" for i in range(1, 13)]
    for domain in (SOURCE, TARGET):
        cases = spec.cases(domain)
        assert [c.id for c in cases] == ids
        for c in cases:
            assert c.image == f"{domain}/images/{c.id}.nii.gz"
            assert c.label == f"{domain}/labels/{c.id}.nii.gz"
            assert spec.path(c.image).is_file() and spec.path(c.label).is_file()
    assert spec.splits == {SOURCE: {"train": ids}, TARGET: {"val": ids[:3], "test": ids[3:]}}
    assert [c.id for c in spec.split(TARGET, "val")] == ["case001", "case002", "case003"]
    assert spec.labels.codes == {"MYO": 200, "LV": 500, "RV": 600}
    assert spec.preprocessing == Preprocessing(intensity="percentile", size=(96, 96))


def test_labels_and_anatomy(dataset: DatasetSpec) -> None:
    for domain in (SOURCE, TARGET):
        for _, lab_img in _load(dataset, domain):
            lab = np.asarray(lab_img.dataobj)
            assert lab.dtype == np.int16 and lab.shape == (96, 96, 8)
            assert set(np.unique(lab).tolist()) <= CODES
            LABELS.to_classes(lab)  # accepted by the dataset's own label map
            present = {code: np.array([(lab[:, :, k] == code).any() for k in range(8)]) for code in (200, 500, 600)}
            assert present[200].all()  # myocardium in every slice
            assert present[500].sum() >= 6  # LV blood pool in most slices
            assert present[600][:4].all()  # RV in the basal half (slice 0 is basal)
            sizes = [(lab[:, :, k] > 0).sum() for k in range(8)]
            assert sizes[0] > sizes[-1]  # the heart shrinks toward the apex


def test_image_geometry_matches_label(dataset: DatasetSpec) -> None:
    for domain, inplane in ((SOURCE, 1.25), (TARGET, 0.8)):
        for img, lab in _load(dataset, domain):
            assert img.get_data_dtype() == np.float32
            assert img.shape == lab.shape == (96, 96, 8)
            np.testing.assert_array_equal(img.affine, lab.affine)
            assert img.header.get_zooms() == lab.header.get_zooms()
            zooms = img.header.get_zooms()
            assert zooms[0] == pytest.approx(inplane, rel=0.06) and zooms[0] == zooms[1]
            np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), zooms, rtol=1e-5)
            assert not np.allclose(img.affine[:3, :3], np.diag(zooms))  # oblique orientation
            data = img.get_fdata()
            assert data.min() >= 0.0 and np.percentile(data, 99) < 1.3  # roughly [0, 1]


def _tissue_means(img, lab) -> dict[str, float]:  # noqa: ANN001
    """Normalised mean intensity of MYO, blood (LV + RV) and the non-heart pixels in a box around the heart."""
    x, y = Preprocessing().normalize(img.get_fdata()), np.asarray(lab.dataobj)
    xi, yi = np.nonzero((y > 0).any(axis=2))
    box = (slice(max(xi.min() - 8, 0), xi.max() + 9), slice(max(yi.min() - 8, 0), yi.max() + 9))
    xb, yb = x[box], y[box]
    return {
        "myo": float(xb[yb == 200].mean()),
        "blood": float(xb[(yb == 500) | (yb == 600)].mean()),
        "around": float(xb[yb == 0].mean()),
    }


def test_designed_shift_blood_is_brightest_in_source_and_iso_intense_in_target(dataset: DatasetSpec) -> None:
    """Source: blood far brighter than the tissue around the heart; target: blood about as bright as that
    tissue. Myocardium is darker than blood in both (LGE nulls it)."""
    for domain in (SOURCE, TARGET):
        for img, lab in _load(dataset, domain):
            m = _tissue_means(img, lab)
            assert m["blood"] - m["myo"] > 0.1, (domain, m)
            if domain == SOURCE:
                assert m["blood"] - m["around"] > 0.3, m
            else:
                assert m["blood"] - m["around"] < 0.1, m  # not brighter than its surroundings


def test_source_intensity_model_fails_on_target_but_target_is_separable(dataset: DatasetSpec) -> None:
    """A blood-vs-surroundings intensity threshold fitted on C0 collapses on LGE (shape is needed there)."""

    def pixels(domain: str) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for img, lab in _load(dataset, domain):
            x, y = Preprocessing().normalize(img.get_fdata()), np.asarray(lab.dataobj)
            keep = y != 200  # blood pools against everything but the myocardium
            xs.append(x[keep])
            ys.append((y[keep] == 500) | (y[keep] == 600))
        return np.concatenate(xs), np.concatenate(ys)

    xs, bs = pixels(SOURCE)
    xt, bt = pixels(TARGET)
    thr = (xs[bs].mean() + xs[~bs].mean()) / 2
    assert _dice(xs > thr, bs) > 0.6
    assert _dice(xt > thr, bt) < 0.5 * _dice(xs > thr, bs)


def test_seed_determinism() -> None:
    a, b = render_case(TARGET, 2, seed=5, size=48, slices=4), render_case(TARGET, 2, seed=5, size=48, slices=4)
    assert a.image.tobytes() == b.image.tobytes() and a.label.tobytes() == b.label.tobytes()
    np.testing.assert_array_equal(a.affine, b.affine)
    c = render_case(TARGET, 2, seed=6, size=48, slices=4)
    assert c.image.tobytes() != a.image.tobytes() and c.label.tobytes() != a.label.tobytes()
    assert render_case(TARGET, 3, seed=5, size=48, slices=4).label.tobytes() != a.label.tobytes()


def test_same_seed_same_files(tmp_path: Path) -> None:
    def arrays(out: Path, seed: int) -> list[bytes]:
        spec = generate_dataset(out, n_source=2, n_target=2, size=40, slices=3, seed=seed, n_val=1)
        return [
            np.asarray(nib.load(spec.path(p)).dataobj).tobytes()
            for d in (SOURCE, TARGET)
            for c in spec.cases(d)
            for p in (c.image, c.label)
        ]

    first = arrays(tmp_path / "a", 1)
    assert first == arrays(tmp_path / "b", 1)
    other = arrays(tmp_path / "c", 2)
    assert all(x != y for x, y in zip(first, other))


def test_small_volume_shapes_and_argument_errors(tmp_path: Path) -> None:
    spec = generate_dataset(tmp_path, n_source=1, n_target=2, size=64, slices=1, n_val=0)
    assert spec.splits[TARGET] == {"val": [], "test": ["case001", "case002"]}
    assert nib.load(spec.path(spec.cases(SOURCE)[0].image)).shape == (64, 64, 1)
    with pytest.raises(ValueError, match="n_val"):
        generate_dataset(tmp_path / "x", n_target=2, n_val=3)
    with pytest.raises(ValueError, match="at least one case"):
        generate_dataset(tmp_path / "x", n_source=0)
    with pytest.raises(ValueError, match="size"):
        render_case(SOURCE, 0, size=16)
    with pytest.raises(ValueError, match="domain"):
        render_case("T2", 0)

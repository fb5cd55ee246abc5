"""Dice and surface distances against analytic spheres and scipy references."""

import numpy as np
import pytest
from scipy import integrate

from tomoprior import metrics


def sphere_volume(shape, spacing, center_mm, radius):
    """A distance-like grey volume whose 0.5 isosurface is exactly the sphere."""
    axes = [np.arange(n) * s for n, s in zip(shape, spacing)]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij")
    r = np.sqrt((zz - center_mm[0]) ** 2 + (yy - center_mm[1]) ** 2 + (xx - center_mm[2]) ** 2)
    return np.clip(radius - r + 0.5, 0.0, 1.0)


def analytic_shifted_spheres(radius, shift):
    """ASSD and HD95 between a sphere and the same sphere shifted by ``shift``: a point at polar
    cosine t (uniform on [-1, 1]) lies |sqrt(R^2 + d^2 - 2 R d t) - R| from the other sphere."""
    f = lambda t: abs(np.sqrt(radius**2 + shift**2 - 2 * radius * shift * t) - radius)  # noqa: E731
    assd = 0.5 * integrate.quad(f, -1, 1, limit=200)[0]
    t = np.linspace(-1, 1, 2_000_001)
    hd95 = float(np.percentile(f(t), 95))
    return assd, hd95


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.0, 1.25)])
def test_surface_distance_matches_analytic_sphere_shift(spacing):
    R, d = 12.0, 3.0
    shape = tuple(int(44 / s) for s in spacing)
    c = np.array([22.0, 22.0, 20.0])
    a = sphere_volume(shape, spacing, c, R)
    b = sphere_volume(shape, spacing, c + np.array([0.0, 0.0, d]), R)
    want_assd, want_hd95 = analytic_shifted_spheres(R, d)
    mesh = metrics.surface_distances(a, b, spacing, threshold=0.5, method="mesh")
    assert mesh["assd"] == pytest.approx(want_assd, abs=0.08)
    assert mesh["hd95"] == pytest.approx(want_hd95, abs=0.15)
    assert mesh["hausdorff"] == pytest.approx(d, abs=0.25)
    vox = metrics.surface_distances(a > 0.5, b > 0.5, spacing, method="voxel")
    # boundary voxels are biased by at most about half a voxel
    assert vox["assd"] == pytest.approx(want_assd, abs=0.5 * max(spacing))
    assert vox["hd95"] == pytest.approx(want_hd95, abs=0.75 * max(spacing))
    # identical surfaces are at distance zero
    same = metrics.surface_distances(a, a, spacing, threshold=0.5)
    assert same["assd"] == 0.0 and same["hd95"] == 0.0


def test_voxel_method_matches_brute_force_boundary_distances():
    rng = np.random.default_rng(3)
    from scipy import ndimage
    from scipy.spatial.distance import cdist

    a = ndimage.binary_dilation(rng.random((10, 11, 12)) > 0.97, iterations=2)
    b = ndimage.binary_dilation(rng.random((10, 11, 12)) > 0.97, iterations=2)
    sp = (2.0, 1.0, 0.5)
    res = metrics.surface_distances(a, b, sp, method="voxel")

    def boundary(m):
        return np.argwhere(m & ~ndimage.binary_erosion(m, border_value=0)) * sp

    pa, pb = boundary(a), boundary(b)
    dd = cdist(pa, pb)
    d_ab, d_ba = dd.min(1), dd.min(0)
    assert res["assd"] == pytest.approx((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))
    assert res["hd95"] == pytest.approx(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def test_dice_threshold_and_masks():
    a = np.zeros((6, 6, 6))
    a[:3] = 0.06
    b = np.zeros((6, 6, 6))
    b[1:4] = 0.06
    assert metrics.dice(a, b, threshold=0.035) == pytest.approx(2 * 72 / (108 + 108))
    assert metrics.dice(a > 0.035, a > 0.035) == 1.0
    assert metrics.dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), threshold=0.5) == 1.0
    with pytest.raises(ValueError, match="threshold is required"):
        metrics.dice(a, b)


def test_surface_distance_errors():
    a = np.zeros((8, 8, 8))
    b = a.copy()
    b[2:5, 2:5, 2:5] = 1
    with pytest.raises(ValueError, match="no voxel above"):
        metrics.surface_distances(a, b, 1.0, threshold=0.5)
    with pytest.raises(ValueError, match="spacing"):
        metrics.surface_distances(b, b, (1.0, -1.0, 1.0), threshold=0.5)
    with pytest.raises(ValueError, match="method"):
        metrics.surface_distances(b, b, 1.0, threshold=0.5, method="exact")

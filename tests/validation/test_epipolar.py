"""Epipolar consistency: exact analytic data, the ellipsoid's plane-integral derivative,
sensitivity to each miscalibration, autograd against finite differences, the unobservable
directions of one pair, truncation and bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import tomoprior as tp
from tomoprior.phantoms import Ellipsoid, Phantom
from tomoprior.validation import epipolar_consistency
from tomoprior.validation.epipolar import _plane_family, _VecView, line_integral_check, plane_derivatives

FIELDS = tp.ViewParameters.SCALAR_FIELDS
ANGLES = set(tp.ViewParameters.ANGLE_FIELDS)

BIG = Ellipsoid((8, -5, 6), (55, 65, 75), 0.02, angles=(0.3, 0.4, 0.2))
SMALL = Ellipsoid((-20, 10, -15), (15, 20, 25), 0.01, angles=(1.0, 0.2, 0.5))


@pytest.fixture(scope="module")
def geom():
    return tp.BiplanarGeometry.from_parameters(binning=12)  # 128 x 128 pixels of 2.4 mm


@pytest.fixture(scope="module")
def images(geom):
    return Phantom([BIG, SMALL]).line_integrals(geom)


def analytic_derivative(e: Ellipsoid, normals: torch.Tensor, point: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/drho of the ellipsoid's plane integral for planes ``n . x = n . point``, and ``|t| / h``.

    The section of the ellipsoid at signed distance ``t`` from its centre is an ellipse of
    area ``pi a b c / h (1 - t^2 / h^2)``, ``h`` the support function along ``n``; so the
    plane integral is ``mu pi a b c / h (1 - t^2 / h^2)`` and its derivative
    ``-2 pi mu a b c t / h^3`` inside, 0 outside."""
    a = e.semi_axes
    h = torch.sqrt(((normals @ e.rotation) ** 2 * a**2).sum(-1))
    t = normals @ point - normals @ e.center
    inside = t.abs() < h
    value = torch.where(inside, -2 * math.pi * e.density * a.prod() * t / h**3, torch.zeros_like(h))
    return value, t.abs() / h


def planes(geom, n=128):
    va, vb = geom.views
    return _plane_family(_VecView(va, va.vector), _VecView(vb, vb.vector), torch.as_tensor(geom.grid.corners()), n)


def test_each_view_gives_the_analytic_plane_integral_derivative(geom):
    # one ellipsoid, no blur: each view alone against the closed form
    ims = Phantom([BIG]).line_integrals(geom)
    _, normals = planes(geom)
    truth, depth = analytic_derivative(BIG, normals, geom.views[0].source)
    inner = depth < 0.9  # away from the tangent planes, where the derivative jumps
    assert int(inner.sum()) > 60
    scale = float(truth[inner].pow(2).mean().sqrt())
    assert scale > 1.0
    for i, view in enumerate(geom.views):
        got, truncated = plane_derivatives(ims[i], view, normals)
        assert int(truncated.sum()) <= 2  # at most the planes that graze a detector corner
        err = float((got - truth)[inner].pow(2).mean().sqrt()) / scale
        assert err < 0.02, f"view {i}: relative RMS error {err:.3g}"  # measured 1.2e-2 (128^2), 8.9e-3 (256^2)


def test_exact_geometry_residual_is_at_discretisation_level_and_converges(geom, images):
    pair = epipolar_consistency(images, geom, n_planes=128).pairs[0]
    assert pair.n_valid >= 120  # the outermost planes only graze a detector corner
    assert float(pair.relative) < 0.008  # measured 5.3e-3 at 128^2 (3.8e-3 at 256^2)
    # the blur lowers the aliasing floor of sharp edges (unblurred: 2.0e-2 at 128^2, 1.5e-2 at 256^2)
    sharp = float(epipolar_consistency(images, geom, n_planes=128, smoothing=0).relative)
    assert sharp > 2 * float(pair.relative)  # 2.0e-2 vs 5.3e-3


SWEEPS = {
    "source_to_detector": [0.0, 5.0, 10.0, 20.0],
    "source_to_isocenter": [0.0, 5.0, 10.0, 20.0],
    "u0": [0.0, 2.0, 4.0, 8.0],
    "v0": [0.0, 0.5, 1.0, 2.0],
    "detector_tilt_u_deg": [0.0, 0.5, 1.0, 2.0],
    "detector_rotation_deg": [0.0, 0.25, 0.5, 1.0],
    "secondary_angle_deg": [0.0, 0.25, 0.5, 1.0],
}


@pytest.mark.parametrize("name", sorted(SWEEPS))
def test_score_rises_monotonically_with_each_miscalibration(geom, images, name):
    scores = []
    for x in SWEEPS[name]:
        g = geom.perturbed({"frontal": {name: x}})
        scores.append(float(epipolar_consistency(images, g, n_planes=128).relative))
    assert all(b > a for a, b in itertools.pairwise(scores)), f"{name}: {scores}"
    assert scores[-1] > 1.2 * scores[0]


@pytest.mark.parametrize("name", ["primary_angle_deg", "detector_tilt_v_deg"])
def test_weak_directions_of_a_biplanar_pair(geom, images, name):
    # turning the frontal view about z (its primary angle) keeps its source in the plane z = 0
    # that holds both sources, and tilting its detector about its columns (z) moves the lines
    # along themselves: both are close to motions the pair cannot see (documented limit)
    r0 = float(epipolar_consistency(images, geom, n_planes=128).relative)
    r1 = float(epipolar_consistency(images, geom.perturbed({"frontal": {name: 1.0}}), n_planes=128).relative)
    v0 = float(epipolar_consistency(images, geom.perturbed({"frontal": {"v0": 0.5}}), n_planes=128).relative)
    assert abs(r1 - r0) < 0.1 * (v0 - r0)


def _parametric(base, x):
    ps = []
    for i, p in enumerate(base):
        ps.append(p.replace(**{f: getattr(p, f) + x[9 * i + j] * (1e-3 if f in ANGLES else 1.0)
                               for j, f in enumerate(FIELDS)}))
    return ps


def test_gradient_wrt_view_parameters_matches_finite_differences(geom, images):
    base = geom.perturbed({"frontal": {"source_to_detector": 5.0, "v0": 0.5},
                           "lateral": {"detector_tilt_u_deg": 0.5, "u0": 1.0}}).parameters

    def score(x):
        g = tp.geometry.ParametricGeometry(geom.grid, _parametric(base, x))  # tensors in, autograd through to_view
        return epipolar_consistency(images, g, n_planes=64).score

    x = torch.zeros(18, dtype=torch.float64, requires_grad=True)
    score(x).backward()
    grad = x.grad
    assert float(grad.abs().max()) > 1e-3
    gen = torch.Generator().manual_seed(0)
    h = 1e-4  # mm, or mrad for angles
    for _ in range(3):  # directional derivatives along random directions of all 18 parameters
        d = torch.randn(18, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            fd = (score(h * d) - score(-h * d)) / (2 * h)
        exact = float(grad @ d)
        assert abs(float(fd) - exact) < 1e-4 * abs(exact), (float(fd), exact)  # measured ~1e-6


@pytest.mark.slow  # about 10 s: an optimisation of 40 L-BFGS iterations
def test_minimising_the_score_recovers_a_miscalibration(geom, images):
    # self-calibration in miniature: three parameters of the frontal view from a wrong start,
    # L-BFGS on the differentiable score
    start = geom.perturbed({"frontal": {"v0": 1.0, "source_to_detector": 10.0, "detector_tilt_u_deg": 1.0}})
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)

    def geometry(x):
        f, lat = start.parameters
        f = f.replace(v0=f.v0 + x[0], source_to_detector=f.source_to_detector + 10 * x[1],
                      detector_tilt_u=f.detector_tilt_u + 0.01 * x[2])
        return tp.geometry.ParametricGeometry(geom.grid, [f, lat])

    opt = torch.optim.LBFGS([x], lr=1, max_iter=40, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = 1e3 * epipolar_consistency(images, geometry(x), n_planes=128).score
        loss.backward()
        return loss

    opt.step(closure)
    f = geometry(x.detach()).parameters[0]
    assert abs(float(f.v0)) < 0.2, float(f.v0)  # from 1 mm; measured 0.10
    assert abs(float(f.source_to_detector) - 1500.0) < 1.0  # from +10 mm; measured -0.06
    assert abs(math.degrees(float(f.detector_tilt_u))) < 1.0  # a weak direction: 1 -> 0.65 deg
    rel = float(epipolar_consistency(images, geometry(x.detach())).relative)
    assert rel < 1.1 * float(epipolar_consistency(images, geom).relative)


def _skew(w):
    return torch.tensor([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]], dtype=torch.float64)


def test_rigid_motions_and_the_baseline_shift_are_unobservable(geom, images):
    """The Jacobian of the residual vector w.r.t. the 24 view-vector numbers annihilates the
    seven motions a pair cannot see (a rigid motion of the whole setup, 6, and a shift of one
    view along the baseline, 1) and not the others."""
    vec0 = geom.vectors.detach().clone()

    def residual(v):
        views = [tp.View.from_vector(v[i], geom.views[i].shape, geom.views[i].name) for i in range(2)]
        return epipolar_consistency(images, views, n_planes=64).pairs[0].residual  # views only: no box

    def jvp(d, h=1e-3):  # central difference: the residual is exactly invariant under the null motions
        return (residual(vec0 + h * d.reshape(2, 12)) - residual(vec0 - h * d.reshape(2, 12))) / (2 * h)

    def motion(rot=(0.0, 0.0, 0.0), shift=(0.0, 0.0, 0.0), only=None):
        W = _skew(rot)
        t = torch.tensor(shift, dtype=torch.float64)
        d = torch.zeros(2, 12, dtype=torch.float64)
        for i in range(2):
            if only is not None and i != only:
                continue
            s, c, u, v = vec0[i].reshape(4, 3)
            d[i] = torch.cat([W @ s + t, W @ c + t, W @ u, W @ v])
        return d.reshape(24) / torch.linalg.norm(d)

    base = vec0[1, 0:3] - vec0[0, 0:3]
    null = [motion(rot=r) for r in ((1e-3, 0, 0), (0, 1e-3, 0), (0, 0, 1e-3))]
    null += [motion(shift=s) for s in ((1, 0, 0), (0, 1, 0), (0, 0, 1))]
    null.append(motion(shift=tuple(base.tolist()), only=1))
    seen = [motion(shift=(0, 0, 1), only=1), motion(rot=(0, 0, 1e-3), only=1), motion(rot=(1e-3, 0, 0), only=0)]
    gain = max(float(torch.linalg.norm(jvp(d))) for d in seen)
    assert gain > 1.0
    for d in null:
        assert float(torch.linalg.norm(jvp(d))) < 1e-7 * gain, float(torch.linalg.norm(jvp(d)))
    for d in seen:
        assert float(torch.linalg.norm(jvp(d))) > 1e-4 * gain


def test_the_18_view_parameters_of_a_pair_have_a_7_dimensional_null_space(geom, images):
    # Jacobian of the residual vector w.r.t. both views' 9 parameters (mm, mrad) by central
    # differences; the views alone (no grid box), so the plane family moves with them
    def residual(x):
        views = [p.to_view() for p in _parametric(geom.parameters, x)]
        return epipolar_consistency(images, views, n_planes=64).pairs[0].residual

    h = 1e-5  # small: a null direction of the parameters is a motion only to first order
    cols = []
    with torch.no_grad():
        for i in range(18):
            e = torch.zeros(18, dtype=torch.float64)
            e[i] = h
            cols.append((residual(e) - residual(-e)) / (2 * h))
    s = torch.linalg.svdvals(torch.stack(cols, dim=1))
    rel = s / s[0]
    # rigid motions (6) and one view along the baseline (1)
    assert int((rel < 1e-8).sum()) == 7, str([f"{v:.1e}" for v in rel.tolist()])
    assert float(rel[10]) > 1e-7  # the weakest observable direction (measured ~2e-6)


def test_three_views_give_three_pairs_and_named_pairs(images):
    ps = [tp.geometry.default_frontal(), tp.geometry.default_lateral(),
          tp.ViewParameters.from_degrees(name="oblique", primary_angle_deg=45)]
    g = tp.geometry.ParametricGeometry(tp.geometry.DEFAULT_GRID, [p.binned(24) for p in ps])
    ims = Phantom([BIG]).line_integrals(g)
    ecc = epipolar_consistency(ims, g, n_planes=32)
    assert [p.views for p in ecc.pairs] == [(0, 1), (0, 2), (1, 2)]
    assert ecc.pair(2, 1).names == ("lateral", "oblique")
    assert float(ecc.relative) < 0.02  # measured 6e-3 to 1e-2 at 64^2
    d = ecc.to_dict(per_plane=False)
    assert len(d["pairs"]) == 3 and "residual" not in d["pairs"][0]


def test_truncated_lines_are_masked(geom):
    # a rod along x, wider than the frontal detector's field (+-102 mm at the isocenter), leaves
    # it left and right on the epipolar lines through it; the lateral view sees it end-on
    rod = Ellipsoid((0, 5, 40), (150, 20, 12), 0.02, angles=(0.0, 0.1, 0.0))
    ims = Phantom([BIG, rod]).line_integrals(geom)
    ecc = epipolar_consistency(ims, geom, n_planes=64)
    pair = ecc.pairs[0]
    assert 0 < pair.n_valid < 64
    assert float(pair.relative) < 0.02
    # without the mask the truncated planes disagree
    loose = epipolar_consistency(ims, geom, n_planes=64, truncation=1e9).pairs[0]
    assert loose.n_valid == 64
    assert float(loose.relative) > 2 * float(pair.relative)


def test_float32_follows_the_geometry_dtype(geom, images):
    # device and dtype come from the geometry (float32, as on a GPU); the numbers barely change
    g32 = geom.to(dtype=torch.float32)
    ecc = epipolar_consistency(images.float(), g32, n_planes=64)
    ref = epipolar_consistency(images, geom, n_planes=64)
    assert ecc.pairs[0].residual.dtype == torch.float32
    assert abs(float(ecc.relative) - float(ref.relative)) < 0.05 * float(ref.relative)


def test_background_noise_is_not_taken_for_truncation(geom, images):
    # Poisson-like noise on the open-beam background (about 1000 photons per pixel) exceeds 2 % of
    # the peak at single pixels; the truncation test looks at the blurred image, so the planes stay
    noisy = images + 0.03 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1), dtype=images.dtype)
    pair = epipolar_consistency(noisy, geom, n_planes=64).pairs[0]
    assert pair.n_valid >= 60
    assert float(pair.relative) < 0.05


def test_bad_input_gives_clear_errors(geom, images):
    same = tp.Geometry(geom.grid, [geom.views[0], geom.views[0]])
    with pytest.raises(ValueError, match="coincident sources"):
        epipolar_consistency(images, same)
    with pytest.raises(ValueError, match=r"image 1 has \(64, 64\) pixels"):
        epipolar_consistency([images[0], images[1, ::2, ::2]], geom)
    bad = images.clone()
    bad[0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        epipolar_consistency(bad, geom)
    with pytest.raises(ValueError, match="one per view"):
        epipolar_consistency(images[:1], geom)
    with pytest.raises(ValueError, match="n_planes"):
        epipolar_consistency(images, geom, n_planes=0)


def test_intensity_images_are_recognised(images):
    assert line_integral_check(images[0]) is None
    transmission = torch.exp(-images[0])
    assert "transmission" in line_integral_check(transmission)
    counts = torch.round(4000 * transmission)
    assert "counts" in line_integral_check(counts)
    assert "open-beam" in line_integral_check(3.7 * transmission + 0.5)

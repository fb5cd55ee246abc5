"""Analytic shapes: exact chords against closed forms and dense numerical quadrature."""

from __future__ import annotations

import math

import pytest
import torch

from tomoprior.phantoms.shapes import Cylinder, Ellipsoid, Sphere, euler_zxz_matrix, shape_from_dict


def random_rays(gen: torch.Generator, n: int, target, spread: float, distance: float = 300.0):
    """Rays from random far-away points through random points near ``target`` (mm)."""
    target = torch.as_tensor(target, dtype=torch.float64)
    aim = target + spread * (2 * torch.rand(n, 3, generator=gen, dtype=torch.float64) - 1)
    way = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    way = way / way.norm(dim=-1, keepdim=True)
    origins = aim - distance * way
    # deliberately non-unit directions: the integral must not depend on their length
    directions = way * (0.5 + 3 * torch.rand(n, 1, generator=gen, dtype=torch.float64))
    return origins, directions


def quadrature(shape, origins, directions, half_length: float = 400.0, samples: int = 200_001):
    """Chord lengths by dense midpoint sampling of ``contains`` along each (unit) ray."""
    unit = directions / directions.norm(dim=-1, keepdim=True)
    # centre the sampled segment on the point of the ray closest to the shape centre
    foot = origins + ((shape.center - origins) * unit).sum(-1, keepdim=True) * unit
    ds = 2 * half_length / samples
    s = -half_length + ds * (torch.arange(samples, dtype=torch.float64) + 0.5)
    out = []
    for f, u in zip(foot, unit):
        out.append(shape.contains(f + s[:, None] * u).sum(dtype=torch.float64) * ds)
    return torch.stack(out)


def test_sphere_chord_matches_closed_form():
    gen = torch.Generator().manual_seed(1)
    centre, r = torch.tensor([12.0, -7.0, 30.0], dtype=torch.float64), 25.0
    sphere = Sphere(centre, r, density=0.7)
    o, d = random_rays(gen, 2000, centre, spread=40.0)
    unit = d / d.norm(dim=-1, keepdim=True)
    to_c = centre - o
    dist2 = (to_c * to_c).sum(-1) - (to_c * unit).sum(-1) ** 2
    expected = 2 * torch.sqrt((r**2 - dist2).clamp(min=0))
    assert ((dist2 < r**2).sum() > 500) and ((dist2 > r**2).sum() > 100)  # both hits and misses tested
    torch.testing.assert_close(sphere.path_lengths(o, d), expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(sphere.line_integrals(o, d), 0.7 * expected, rtol=0, atol=1e-9)


def test_rotated_ellipsoid_matches_quadrature():
    gen = torch.Generator().manual_seed(2)
    e = Ellipsoid((5.0, -10.0, 20.0), (40.0, 15.0, 25.0), density=1.3, angles=(0.4, 1.1, -0.7))
    o, d = random_rays(gen, 12, e.center, spread=10.0)
    exact = e.path_lengths(o, d)
    assert (exact > 0).sum() >= 8
    # midpoint sampling of an indicator: error at most one sample step (0.004 mm) per boundary
    torch.testing.assert_close(exact, quadrature(e, o, d), rtol=0, atol=0.01)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"radius": 18.0, "axis": (1.0, 2.0, -0.5)},
        {"radius": (22.0, 9.0), "angles": (0.3, -0.9, 1.7)},
    ],
)
def test_cylinder_matches_quadrature(kwargs):
    gen = torch.Generator().manual_seed(3)
    c = Cylinder((-8.0, 4.0, 10.0), height=50.0, density=2.0, **kwargs)
    o, d = random_rays(gen, 12, c.center, spread=8.0)
    exact = c.path_lengths(o, d)
    assert (exact > 0).sum() >= 8
    torch.testing.assert_close(exact, quadrature(c, o, d), rtol=0, atol=0.01)


def test_cylinder_closed_forms():
    c = Cylinder((0.0, 0.0, 0.0), radius=10.0, height=40.0, axis=(0.0, 0.0, 3.0))
    o = torch.tensor(
        [
            [0.0, -100.0, 5.0],
            [3.0, 0.0, -100.0],
            [0.0, 0.0, -100.0],
            [6.0, -100.0, 0.0],
            [0.0, -100.0, 25.0],
            [11.0, 0.0, -100.0],
        ],
        dtype=torch.float64,
    )
    d = torch.tensor(
        [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -2.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
        dtype=torch.float64,
    )
    expected = torch.tensor([20.0, 40.0, 40.0, 16.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(c.path_lengths(o, d), expected, rtol=0, atol=1e-12)
    # oblique through the centre, leaving through both caps: height / cos(angle to the axis)
    a = math.radians(20.0)
    oblique = c.path_lengths(
        torch.zeros(3, dtype=torch.float64), torch.tensor([math.sin(a), 0.0, math.cos(a)], dtype=torch.float64)
    )
    assert float(oblique) == pytest.approx(40.0 / math.cos(a), abs=1e-12)
    # oblique through the centre, leaving through the side wall: diameter / sin(angle)
    a = math.radians(70.0)
    oblique = c.path_lengths(
        torch.zeros(3, dtype=torch.float64), torch.tensor([math.sin(a), 0.0, math.cos(a)], dtype=torch.float64)
    )
    assert float(oblique) == pytest.approx(20.0 / math.sin(a), abs=1e-12)


def test_rotated_ellipsoid_equals_unrotated_with_inversely_rotated_rays():
    gen = torch.Generator().manual_seed(4)
    centre = torch.tensor([10.0, 20.0, -5.0], dtype=torch.float64)
    axes = (30.0, 12.0, 20.0)
    angles = (0.8, -0.5, 2.1)
    rotated = Ellipsoid(centre, axes, angles=angles)
    plain = Ellipsoid(centre, axes)
    R = euler_zxz_matrix(angles)
    o, d = random_rays(gen, 500, centre, spread=25.0)
    # R^T (x - c) + c in row-vector form
    o_back = (o - centre) @ R + centre
    d_back = d @ R
    got = rotated.path_lengths(o, d)
    assert (got > 0).sum() > 100
    torch.testing.assert_close(got, plain.path_lengths(o_back, d_back), rtol=1e-12, atol=1e-10)
    # the same rotation given as a matrix is the same shape
    torch.testing.assert_close(Ellipsoid(centre, axes, rotation=R).path_lengths(o, d), got, rtol=1e-12, atol=1e-10)


def test_euler_convention_is_intrinsic_zxz():
    phi, theta, psi = 0.3, 0.9, -1.2
    R = euler_zxz_matrix([phi, theta, psi])

    def rz(a):
        return torch.tensor(
            [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=torch.float64
        )

    def rx(a):
        return torch.tensor(
            [[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]], dtype=torch.float64
        )

    torch.testing.assert_close(R, rz(phi) @ rx(theta) @ rz(psi))
    # Kak & Slaney's beta: the first semi-axis turns from +x towards +y
    e = Ellipsoid((0, 0, 0), (30.0, 5.0, 5.0), angles=(math.radians(72.0), 0.0, 0.0))
    tip = 29.9 * torch.tensor([math.cos(math.radians(72.0)), math.sin(math.radians(72.0)), 0.0], dtype=torch.float64)
    assert bool(e.contains(tip)) and not bool(e.contains(tip * torch.tensor([-1.0, 1.0, 1.0])))


def test_integral_is_invariant_to_direction_length_and_sign():
    gen = torch.Generator().manual_seed(5)
    shapes = [
        Ellipsoid((1.0, 2.0, 3.0), (20.0, 30.0, 10.0), angles=(0.2, 0.4, 0.6)),
        Cylinder((1.0, 2.0, 3.0), (15.0, 8.0), 35.0, angles=(1.0, 0.3, 0.0)),
    ]
    o, d = random_rays(gen, 300, (1.0, 2.0, 3.0), spread=20.0)
    for s in shapes:
        base = s.line_integrals(o, d)
        assert (base > 0).sum() > 100
        for factor in (1e-3, 7.5, -2.0):
            torch.testing.assert_close(s.line_integrals(o, factor * d), base, rtol=1e-10, atol=1e-10)
        # moving the origin along the ray changes nothing either
        torch.testing.assert_close(s.line_integrals(o + 3.7 * d, d), base, rtol=1e-10, atol=1e-10)


def test_missing_rays_give_exact_zero_and_finite_gradients():
    centre = torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    axes = torch.tensor([10.0, 20.0, 15.0], dtype=torch.float64, requires_grad=True)
    angles = torch.tensor([0.3, 0.2, 0.1], dtype=torch.float64, requires_grad=True)
    radius = torch.tensor(8.0, dtype=torch.float64, requires_grad=True)
    height = torch.tensor(30.0, dtype=torch.float64, requires_grad=True)
    shapes = [
        Ellipsoid(centre, axes, angles=angles),
        Sphere(centre, radius),
        Cylinder(centre, radius, height, angles=angles),
    ]
    # rays: far miss, hit, ray parallel to the cylinder axis outside, zero-length direction
    o = torch.tensor(
        [[100.0, 0.0, -200.0], [-19.0, 2.0, -200.0], [50.0, 50.0, 0.0], [0.0, 0.0, 0.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    d = torch.tensor(
        [[0.0, 0.0, 1.0], [0.1, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True
    )
    for s in shapes:
        values = s.line_integrals(o, d)
        assert values[0] == 0.0 and values[2] == 0.0 and values[3] == 0.0
        assert values[1] > 0
        grads = torch.autograd.grad(values.sum(), [o, d, centre, radius, height, angles, axes], allow_unused=True)
        for g in grads:
            assert g is None or bool(torch.isfinite(g).all())
        go, gd = grads[0], grads[1]
        assert float(go[[0, 2, 3]].abs().max()) == 0.0 and float(gd[[0, 2, 3]].abs().max()) == 0.0


def test_gradients_match_finite_differences():
    o = torch.tensor([[3.0, -100.0, 2.0], [-5.0, 4.0, -80.0]], dtype=torch.float64)
    d = torch.tensor([[0.05, 1.0, 0.02], [0.1, -0.05, 1.0]], dtype=torch.float64)

    def ellipsoid(c, a, ang):
        return Ellipsoid(c, a, 0.9, angles=ang).line_integrals(o, d)

    def cylinder(c, ang):
        return Cylinder(c, (14.0, 9.0), 25.0, 1.1, angles=ang).line_integrals(o, d)

    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([15.0, 20.0, 12.0], dtype=torch.float64, requires_grad=True)
    ang = torch.tensor([0.4, 0.3, -0.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ellipsoid, (c, a, ang))
    # both rays cross the side wall of the cylinder away from edges, where the chord is smooth
    assert bool((cylinder(c, ang) > 0).all())
    assert torch.autograd.gradcheck(cylinder, (c, ang))


def _surface_points(shape, n: int = 400) -> torch.Tensor:
    """World points on the boundary where the extremes of a shape lie (dense parametrisation)."""
    phi = torch.linspace(0, 2 * math.pi, n, dtype=torch.float64)
    if isinstance(shape, Cylinder):
        a, b = shape.radii
        rim = torch.stack([a * torch.cos(phi), b * torch.sin(phi), torch.zeros_like(phi)], -1)
        local = torch.cat([rim + torch.tensor([0, 0, z], dtype=torch.float64) for z in (-1, 1)])
        local[:, 2] *= shape.height / 2
    else:
        theta = torch.linspace(0, math.pi, n, dtype=torch.float64)[:, None]
        unit = torch.stack(
            [torch.sin(theta) * torch.cos(phi), torch.sin(theta) * torch.sin(phi), torch.cos(theta).expand(-1, n)], -1
        ).reshape(-1, 3)
        local = unit * shape.semi_axes
    return shape.center + local @ shape.rotation.T


def test_contains_and_bounding_box_are_consistent():
    gen = torch.Generator().manual_seed(6)
    shapes = [
        Ellipsoid((4.0, -3.0, 2.0), (25.0, 10.0, 16.0), angles=(0.7, 1.2, 0.4)),
        Cylinder((4.0, -3.0, 2.0), (12.0, 5.0), 30.0, angles=(0.2, 0.9, 1.3)),
        Cylinder((4.0, -3.0, 2.0), 6.0, 44.0, axis=(1.0, 1.0, 0.0)),
        Sphere((4.0, -3.0, 2.0), 9.0),
    ]
    pts = torch.tensor([4.0, -3.0, 2.0], dtype=torch.float64) + 40 * (
        2 * torch.rand(400_000, 3, generator=gen, dtype=torch.float64) - 1
    )
    for s in shapes:
        inside = pts[s.contains(pts)]
        lo, hi = s.bounding_box()
        assert bool(((inside >= lo) & (inside <= hi)).all())
        # tight: the boundary reaches every face of the box
        surface = _surface_points(s)
        torch.testing.assert_close(surface.amin(0), lo, rtol=0, atol=1e-3)
        torch.testing.assert_close(surface.amax(0), hi, rtol=0, atol=1e-3)
        # the fraction of random points inside estimates the analytic volume
        frac = inside.shape[0] / pts.shape[0]
        assert frac * 80.0**3 == pytest.approx(float(s.volume()), rel=0.03)


def test_interval_matches_path_length():
    gen = torch.Generator().manual_seed(7)
    o, d = random_rays(gen, 200, (0.0, 0.0, 0.0), spread=25.0)
    for s in (
        Ellipsoid((0, 0, 0), (20.0, 12.0, 9.0), angles=(0.1, 0.2, 0.3)),
        Cylinder((0, 0, 0), 10.0, 30.0, axis=(0.0, 1.0, 1.0)),
    ):
        t_in, t_out = s.interval(o, d)
        chord = (t_out - t_in).clamp(min=0) * d.norm(dim=-1)
        torch.testing.assert_close(chord, s.path_lengths(o, d), rtol=1e-9, atol=1e-9)
        hit = t_out > t_in
        assert bool(s.contains(o[hit] + (0.5 * (t_in + t_out))[hit, None] * d[hit]).all())


def test_translated_and_scaled_shapes():
    gen = torch.Generator().manual_seed(8)
    o, d = random_rays(gen, 100, (0.0, 0.0, 0.0), spread=15.0)
    offset = torch.tensor([5.0, -3.0, 8.0], dtype=torch.float64)
    for s in (
        Ellipsoid((0, 0, 0), (20.0, 12.0, 9.0), angles=(0.1, 0.2, 0.3)),
        Cylinder((0, 0, 0), (10.0, 4.0), 30.0, angles=(0.5, 0.5, 0.5)),
        Sphere((1, 2, 3), 7.0),
    ):
        base = s.path_lengths(o, d)
        torch.testing.assert_close(s.translated(offset).path_lengths(o + offset, d), base)
        torch.testing.assert_close(s.scaled(2.5).path_lengths(2.5 * o, d), 2.5 * base)
        assert type(s.scaled(2.0)) is type(s)
        assert s.with_density(3.0).to_dict()["density"] == 3.0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Ellipsoid((0, 0, 0), (1.0, -2.0, 3.0)), r"semi_axes\[1\] must be > 0"),
        (lambda: Ellipsoid((0, 0), (1.0, 2.0, 3.0)), r"center must be 3 numbers"),
        (lambda: Ellipsoid((0, 0, float("nan")), (1.0, 2.0, 3.0)), r"center must be finite"),
        (lambda: Ellipsoid((0, 0, 0), (1, 2, 3), angles=(0, 0, 0), rotation=torch.eye(3)), r"angles or rotation"),
        (lambda: Ellipsoid((0, 0, 0), (1, 2, 3), rotation=2 * torch.eye(3)), r"rotation must be a proper rotation"),
        (lambda: Ellipsoid((0, 0, 0), (1, 2, 3), rotation=-torch.eye(3)), r"rotation must be a proper rotation"),
        (lambda: Sphere((0, 0, 0), 0.0), r"radius must be > 0"),
        (lambda: Cylinder((0, 0, 0), 1.0, -5.0), r"height must be > 0"),
        (lambda: Cylinder((0, 0, 0), (1.0, 0.0), 5.0), r"radius\[1\] must be > 0"),
        (lambda: Cylinder((0, 0, 0), 1.0, 5.0, axis=(0, 0, 0)), r"axis must be a non-zero vector"),
        (lambda: Cylinder((0, 0, 0), (1.0, 2.0), 5.0, axis=(0, 0, 1)), r"elliptic cross-section needs angles"),
        (lambda: Cylinder((0, 0, 0), 1.0, 5.0, axis=(0, 0, 1), angles=(0, 0, 0)), r"one of axis, angles or rotation"),
    ],
)
def test_bad_shape_parameters_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_shape_dict_round_trip():
    shapes = [
        Ellipsoid((1, 2, 3), (4, 5, 6), -0.5, angles=(math.radians(108.0), 0.1, 0.2), label="x"),
        Ellipsoid((1, 2, 3), (4, 5, 6), rotation=euler_zxz_matrix([0.3, 0.2, 0.1])),
        Sphere((0, 0, 1), 2.5, 0.25),
        Cylinder((1, 1, 1), 3.0, 9.0, 1.5, axis=(0, 1, 1)),
        Cylinder((1, 1, 1), (3.0, 2.0), 9.0, 1.5, angles=(0.1, 0.2, 0.3)),
    ]
    gen = torch.Generator().manual_seed(9)
    o, d = random_rays(gen, 50, (1.0, 1.0, 2.0), spread=5.0)
    for s in shapes:
        d1 = s.to_dict()
        again = shape_from_dict(d1)
        assert type(again) is type(s) and again.to_dict() == d1
        torch.testing.assert_close(again.line_integrals(o, d), s.line_integrals(o, d))
    assert shapes[0].to_dict()["angles_deg"][0] == 108.0  # no float noise in files

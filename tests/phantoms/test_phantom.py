"""Phantoms: additivity, rasterisation, line integrals over views, files and validation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import yaml

from tomoprior.geometry.grid import VolumeGrid
from tomoprior.geometry.view import View
from tomoprior.phantoms import Cylinder, Ellipsoid, Phantom, Sphere, available_phantoms, search_path
from tomoprior.phantoms.phantom import ENV_VAR, PACKAGE_PHANTOM_DIR

SHIPPED = ("shepp_logan_3d", "shepp_logan_3d_modified")


class FakeGeometry:
    """Just enough of a Geometry for Phantom.line_integrals: a tuple of views."""

    def __init__(self, views):
        self.views = tuple(views)


def lateral_view(shape=(24, 30), pitch=4.0, name="lateral", shift=(0.0, 0.0)) -> View:
    """Source on the patient's left (+x), detector on the right, rows running inferior."""
    return View(
        source=(600.0, 0.0, 0.0),
        detector_center=(-400.0, shift[0], shift[1]),
        u=(0.0, -pitch, 0.0),
        v=(0.0, 0.0, -pitch),
        shape=shape,
        name=name,
    )


def frontal_view(shape=(20, 26), pitch=5.0) -> View:
    """PA: source anterior (-y), detector posterior; columns run to the patient's right (-x)."""
    return View(
        source=(0.0, -700.0, 10.0),
        detector_center=(5.0, 500.0, 0.0),
        u=(-pitch, 0.0, 0.0),
        v=(0.0, 0.3, -pitch),
        shape=shape,
        name="frontal",
    )


def small_phantom(scale: float = 1.0) -> Phantom:
    return Phantom(
        [
            Ellipsoid((0.0, 0.0, 0.0), (50.0, 65.0, 60.0), 1.0),
            Ellipsoid((5.0, 10.0, -8.0), (20.0, 12.0, 15.0), -0.4, angles=(0.5, 0.3, -0.2)),
            Sphere((-20.0, -15.0, 10.0), 8.0, 0.7),
            Cylinder((15.0, -5.0, 20.0), 6.0, 40.0, 0.3, axis=(0.2, 1.0, 0.4)),
        ],
        name="small",
        density_scale=scale,
    )


# -- additivity and rays ---------------------------------------------------------------------


def test_line_integrals_add_over_shapes_and_scale():
    ph = small_phantom(scale=0.05)
    gen = torch.Generator().manual_seed(10)
    o = 300 * torch.randn(1000, 3, generator=gen, dtype=torch.float64)
    d = 20 * torch.randn(1000, 3, generator=gen, dtype=torch.float64) - o
    total = ph.line_integrals_rays(o, d)
    by_shape = sum(s.line_integrals(o, d) for s in ph.shapes)
    torch.testing.assert_close(total, 0.05 * by_shape)
    assert (total != 0).sum() > 100 and (total == 0).sum() > 10
    # a shape's own line integral is density times chord
    s = ph.shapes[1]
    torch.testing.assert_close(s.line_integrals(o, d), -0.4 * s.path_lengths(o, d))
    # chunking changes nothing; broadcasting one origin against many directions works
    torch.testing.assert_close(ph.line_integrals_rays(o, d, chunk_size=77), total)
    one = ph.line_integrals_rays(o[0], d[:5])
    torch.testing.assert_close(one, ph.line_integrals_rays(o[:1].expand(5, 3), d[:5]))


def test_values_are_sums_of_densities():
    ph = small_phantom(scale=2.0)
    pts = torch.tensor(
        [[-35.0, 0.0, 0.0], [5.0, 10.0, -8.0], [-20.0, -15.0, 10.0], [0.0, 0.0, 100.0]], dtype=torch.float64
    )
    torch.testing.assert_close(ph.values(pts), 2.0 * torch.tensor([1.0, 0.6, 1.7, 0.0], dtype=torch.float64))


def test_missing_rays_are_zero_with_finite_gradients():
    ph = small_phantom()
    o = torch.tensor([[500.0, 500.0, 0.0], [300.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    d = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.01, 0.02]], dtype=torch.float64, requires_grad=True)
    values = ph.line_integrals_rays(o, d)
    assert values[0] == 0.0 and values[1] > 0
    go, gd = torch.autograd.grad(values.sum(), [o, d])
    assert bool(torch.isfinite(go).all() and torch.isfinite(gd).all())
    assert float(go[0].abs().max()) == 0.0 and float(gd[0].abs().max()) == 0.0


# -- line integrals over views ---------------------------------------------------------------


def test_line_integrals_of_a_geometry_sum_the_shapes():
    ph = small_phantom(scale=0.1)
    views = (lateral_view(), frontal_view())
    out = ph.line_integrals(FakeGeometry(views))
    assert isinstance(out, tuple) and [tuple(t.shape) for t in out] == [(24, 30), (20, 26)]
    for view, image in zip(views, out):
        o, d = view.pixel_rays()
        expected = 0.1 * sum(s.line_integrals(o, d) for s in ph.shapes)
        assert image.dtype == torch.float64
        torch.testing.assert_close(image, expected)
        assert float(image.max()) > 5.0  # the rays do cross the phantom
    # the centre pixel of the lateral view runs along x through the main ellipsoid's centre:
    # 100 mm of density 1, the inner ellipsoid's chord along x at (y, z) = (0, 0) is 0
    lat = ph.line_integrals(FakeGeometry([lateral_view(shape=(3, 3))]))
    assert lat.shape == (1, 3, 3)
    chord_inner = ph.shapes[1].path_lengths(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 0.0]))
    assert float(lat[0, 1, 1]) == pytest.approx(0.1 * (100.0 - 0.4 * float(chord_inner)), abs=1e-12)


def test_line_integrals_selection_chunking_and_stacking():
    ph = small_phantom()
    geom = FakeGeometry([lateral_view(), lateral_view(name="shifted", shift=(7.0, -3.0))])
    full = ph.line_integrals(geom)
    assert isinstance(full, torch.Tensor) and full.shape == (2, 24, 30)
    torch.testing.assert_close(ph.line_integrals(geom, chunk_size=31), full)  # uneven row chunks
    torch.testing.assert_close(ph.line_integrals(geom, chunk_size=1), full)
    torch.testing.assert_close(ph.line_integrals(geom, views=[1]), full[1:])
    torch.testing.assert_close(ph.line_integrals(geom, views=1), full[1:])
    torch.testing.assert_close(ph.line_integrals(geom, views=[geom.views[0]]), full[:1])
    assert not torch.equal(full[0], full[1])
    with pytest.raises(ValueError, match="views index 2 is out of range"):
        ph.line_integrals(geom, views=[2])


def test_line_integrals_are_differentiable_in_the_view():
    ph = small_phantom()
    source = torch.tensor([600.0, 3.0, -2.0], dtype=torch.float64, requires_grad=True)
    view = View(source, (-400.0, 0.0, 0.0), (0.0, -4.0, 0.0), (0.0, 0.0, -4.0), (10, 12))
    out = ph.line_integrals(FakeGeometry([view]))
    (g,) = torch.autograd.grad(out.sum(), [source])
    assert bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0


# -- rasterisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        Ellipsoid((3.0, -4.0, 5.0), (40.0, 25.0, 30.0), 0.8, angles=(0.4, 0.9, 0.2)),
        Cylinder((-2.0, 1.0, 0.0), (20.0, 12.0), 50.0, 1.5, angles=(1.1, 0.6, 0.3)),
    ],
)
def test_rasterized_mass_matches_analytic_volume(shape):
    grid = VolumeGrid((64, 64, 64), (1.9, 1.8, 1.7), center=(1.0, -1.0, 2.0))
    vol = Phantom([shape]).rasterize(grid, supersample=3, dtype=torch.float64)
    assert vol.shape == (64, 64, 64)
    voxel = 1.9 * 1.8 * 1.7
    expected = float(shape.volume() * shape.density)
    assert float(vol.sum()) * voxel == pytest.approx(expected, rel=0.01)
    assert float(vol.max()) == pytest.approx(float(shape.density))
    assert float(vol.min()) == 0.0


def test_rasterize_equals_mean_of_contains_over_subsamples():
    ph = Phantom(
        [
            Ellipsoid((3.0, -2.0, 5.0), (20.0, 12.0, 8.0), 1.0, angles=(0.3, 0.7, -0.4)),
            Cylinder((-4.0, 6.0, 2.0), (10.0, 6.0), 30.0, 2.0, angles=(1.0, 0.5, 0.2)),
            Cylinder((0.0, 0.0, 0.0), 5.0, 60.0, -0.5, axis=(1.0, 0.0, 0.0)),
        ],  # axis along the x lines
        density_scale=0.5,
    )
    grid = VolumeGrid((14, 16, 18), (3.5, 3.0, 4.0), center=(1.0, -1.0, 2.0))
    centres = grid.voxel_centers()
    for k in (1, 2, 3):
        fast = ph.rasterize(grid, supersample=k, dtype=torch.float64)
        offsets = (torch.arange(k, dtype=torch.float64) + 0.5) / k - 0.5
        slow = torch.zeros(grid.shape, dtype=torch.float64)
        for dz in offsets:
            for dy in offsets:
                for dx in offsets:
                    step = torch.stack([dx * 4.0, dy * 3.0, dz * 3.5])
                    slow += ph.values(centres + step)
        torch.testing.assert_close(fast, slow / k**3, rtol=0, atol=1e-12)


def test_rasterize_places_voxels_by_the_grid_convention():
    # anisotropic, off-centre grid; a small sphere centred on voxel (k, j, i) = (3, 9, 5)
    grid = VolumeGrid((8, 12, 10), (4.0, 3.0, 2.0), center=(10.0, -20.0, 30.0))
    k, j, i = 3, 9, 5
    x = 10.0 + (i - 4.5) * 2.0
    y = -20.0 + (j - 5.5) * 3.0
    z = 30.0 + (k - 3.5) * 4.0
    vol = Phantom([Sphere((x, y, z), 0.6, 1.0)]).rasterize(grid, supersample=1)
    assert vol.dtype == torch.float32
    assert torch.nonzero(vol).tolist() == [[k, j, i]]
    # with sub-samples, a sphere that fills one voxel spills nothing into its neighbours
    vol3 = Phantom([Sphere((x, y, z), 0.9, 1.0)]).rasterize(grid, supersample=3)
    assert torch.nonzero(vol3).tolist() == [[k, j, i]]


@pytest.mark.parametrize("bad", [0, -2, 1.5, 2.0, True, "2", None])
def test_rasterize_rejects_bad_supersample(bad):
    with pytest.raises(ValueError, match="supersample"):
        small_phantom().rasterize(VolumeGrid((4, 4, 4)), supersample=bad)


def test_rasterized_shepp_logan_has_the_documented_values():
    ph = Phantom.load("shepp_logan_3d_modified")
    grid = VolumeGrid((96, 96, 96), (1.8, 1.8, 1.8))
    vol = ph.rasterize(grid, supersample=3)
    # brain 0.02 /mm, skull 0.1 /mm; nothing below 0 (up to rounding) or above the skull
    assert float(vol.min()) > -1e-9 and float(vol.max()) == pytest.approx(0.1, abs=1e-6)
    assert float(vol[48, 48, 70]) == pytest.approx(0.02, abs=1e-6)
    # skull + brain volume budget: sum * voxel ~ sum_i density_i * volume_i
    expected = sum(float(s.density * s.volume()) for s in ph.shapes) * ph.density_scale
    assert float(vol.double().sum()) * 1.8**3 == pytest.approx(expected, rel=0.01)


# -- geometric helpers -----------------------------------------------------------------------


def test_translated_scaled_and_bounding_box():
    ph = small_phantom(scale=0.2)
    gen = torch.Generator().manual_seed(11)
    o = 300 * torch.randn(200, 3, generator=gen, dtype=torch.float64)
    d = 10 * torch.randn(200, 3, generator=gen, dtype=torch.float64) - o
    base = ph.line_integrals_rays(o, d)
    offset = torch.tensor([4.0, -6.0, 9.0], dtype=torch.float64)
    torch.testing.assert_close(ph.translated(offset).line_integrals_rays(o + offset, d), base)
    torch.testing.assert_close(ph.scaled(1.5).line_integrals_rays(1.5 * o, d), 1.5 * base)
    lo, hi = ph.bounding_box()
    torch.testing.assert_close(lo, torch.tensor([-50.0, -65.0, -60.0], dtype=torch.float64))
    torch.testing.assert_close(hi, torch.tensor([50.0, 65.0, 60.0], dtype=torch.float64))
    lo2, hi2 = ph.translated(offset).bounding_box()
    torch.testing.assert_close(lo2, lo + offset)
    torch.testing.assert_close(hi2, hi + offset)
    assert ph.with_density_scale(0.7).density_scale == 0.7


# -- files -----------------------------------------------------------------------------------


def test_dict_and_yaml_round_trip(tmp_path):
    ph = small_phantom(scale=0.03)
    d = ph.to_dict()
    again = Phantom.from_dict(d)
    assert again.to_dict() == d
    path = ph.save(tmp_path / "small.yaml")
    loaded = Phantom.load(path)
    assert loaded.to_dict() == d
    assert yaml.safe_load(path.read_text())["schema"] == "tomoprior.phantom"
    gen = torch.Generator().manual_seed(12)
    o = 200 * torch.randn(100, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(loaded.line_integrals_rays(o, -o), ph.line_integrals_rays(o, -o))


@pytest.mark.parametrize(
    "name, scale, brain", [("shepp_logan_3d", 0.02, 0.0204), ("shepp_logan_3d_modified", 0.1, 0.02)]
)
def test_shipped_shepp_logan_files(name, scale, brain):
    assert name in available_phantoms()
    ph = Phantom.load(name)
    assert ph.name == name and len(ph) == 10 and ph.density_scale == scale and ph.density_unit == "1/mm"
    assert all(isinstance(s, Ellipsoid) for s in ph.shapes)
    # outer skull = canonical (0.69, 0.92, 0.9) x 85 mm: 117.3 x 156.4 x 153 mm
    lo, hi = ph.bounding_box()
    torch.testing.assert_close(hi - lo, torch.tensor([117.3, 156.4, 153.0], dtype=torch.float64))
    pts = torch.tensor(
        [
            [30.0, 0.0, 20.0],  # brain only
            [0.0, 0.0, 75.0],  # skull shell at the vertex
            [0.0, 0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    skull = 2.0 if name == "shepp_logan_3d" else 1.0
    torch.testing.assert_close(ph.values(pts), torch.tensor([brain, skull * scale, brain], dtype=torch.float64))
    # the ventricle at patient right leans towards the right going posterior (beta = 108 deg)
    c = ph.shapes[2]
    assert float(c.center[0]) == pytest.approx(-18.7) and float(c.center[2]) == pytest.approx(-21.25)
    assert float(c.rotation[0, 0]) == pytest.approx(math.cos(math.radians(108.0)))
    # the modified contrast makes the small features 10x more visible
    assert Phantom.load(name, density_scale=1.0).density_scale == 1.0


def test_both_variants_share_the_geometry():
    a, b = (Phantom.load(n).to_dict()["shapes"] for n in SHIPPED)
    strip = [{k: v for k, v in s.items() if k != "density"} for s in a]
    assert strip == [{k: v for k, v in s.items() if k != "density"} for s in b]
    ratio = [sb["density"] / sa["density"] for sa, sb in zip(a, b)]
    assert ratio[0] == pytest.approx(0.5) and ratio[1] == pytest.approx(0.8 / 0.98)
    assert ratio[2:] == pytest.approx([10.0] * 8)


def test_unknown_name_lists_available_names():
    with pytest.raises(ValueError, match=r"unknown phantom 'no_such_phantom'.*shepp_logan_3d"):
        Phantom.load("no_such_phantom")
    with pytest.raises(ValueError, match="does not exist"):
        Phantom.load("/nonexistent/folder/x.yaml")


def test_environment_path_is_searched(tmp_path, monkeypatch):
    small_phantom().save(tmp_path / "my_head.yaml")
    (tmp_path / "beads.yaml").write_text("schema: tomoprior.bead_phantom\nschema_version: 1\n")
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert search_path()[0] == tmp_path and PACKAGE_PHANTOM_DIR in search_path()
    names = available_phantoms()
    assert "my_head" in names and "beads" not in names and "shepp_logan_3d" in names
    assert Phantom.load("my_head").name == "small"
    with pytest.raises(ValueError, match=r"schema must be 'tomoprior\.phantom'"):
        Phantom.load("beads")


def _valid() -> dict:
    return Phantom.load("shepp_logan_3d_modified").to_dict()


def _set(path, value):
    def edit(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return d

    return edit


_DELETE = object()


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set(["schema"], "tomoprior.geometry"), r"schema must be 'tomoprior.phantom'"),
        (_set(["schema"], _DELETE), r"schema must be 'tomoprior.phantom'"),
        (_set(["schema_version"], 2), r"schema_version 2 is newer"),
        (_set(["schema_version"], "1"), r"schema_version must be a positive integer"),
        (_set(["colour"], "red"), r"unknown key\(s\) \['colour'\]"),
        (_set(["name"], 3), r"name must be a string"),
        (_set(["description"], ["x"]), r"description must be a string"),
        (_set(["units", "length"], "cm"), r"units.length must be 'mm'"),
        (_set(["units", "mass"], "g"), r"units has unknown key"),
        (_set(["density_scale"], 0.0), r"density_scale must be > 0"),
        (_set(["density_scale"], "big"), r"density_scale must be a number"),
        (_set(["shapes"], []), r"shapes must be a non-empty list"),
        (_set(["shapes", 3, "semi_axes", 1], -1.0), r"shapes\[3\]\.semi_axes\[1\] must be > 0"),
        (_set(["shapes", 3, "semi_axes"], [1.0, 2.0]), r"shapes\[3\]\.semi_axes must have 3 entries"),
        (_set(["shapes", 2, "center", 0], float("nan")), r"shapes\[2\]\.center\[0\] must be finite"),
        (_set(["shapes", 2, "center", 0], True), r"shapes\[2\]\.center\[0\] must be a number"),
        (_set(["shapes", 1, "density"], "dense"), r"shapes\[1\]\.density must be a number"),
        (_set(["shapes", 1, "density"], _DELETE), r"shapes\[1\] \(ellipsoid\) is missing \['density'\]"),
        (_set(["shapes", 1, "type"], "torus"), r"shapes\[1\]\.type must be one of"),
        (_set(["shapes", 1, "colour"], "red"), r"shapes\[1\] \(ellipsoid\) has unknown key\(s\) \['colour'\]"),
        (_set(["shapes", 4, "angles_deg"], [1.0, 2.0]), r"shapes\[4\]\.angles_deg must have 3 entries"),
        (_set(["shapes", 4, "rotation"], [[1, 0, 0], [0, 1, 0], [0, 0, 1]]), r"shapes\[4\]: give only one of"),
        (_set(["shapes", 5, "label"], 5), r"shapes\[5\]\.label must be a string"),
        (
            _set(["shapes", 0], {"type": "sphere", "center": [0, 0, 0], "radius": -1, "density": 1}),
            r"shapes\[0\]\.radius must be > 0",
        ),
        (
            _set(["shapes", 0], {"type": "cylinder", "center": [0, 0, 0], "radius": 1, "height": 0, "density": 1}),
            r"shapes\[0\]\.height must be > 0",
        ),
        (
            _set(
                ["shapes", 0],
                {
                    "type": "cylinder",
                    "center": [0, 0, 0],
                    "radius": [1, 2],
                    "height": 3,
                    "density": 1,
                    "axis": [0, 0, 1],
                },
            ),
            r"shapes\[0\]: an elliptic cylinder",
        ),
        (
            _set(
                ["shapes", 0],
                {
                    "type": "ellipsoid",
                    "center": [0, 0, 0],
                    "semi_axes": [1, 1, 1],
                    "density": 1,
                    "rotation": [[1, 0, 0], [0, 1, 0], [0, 0, -1]],
                },
            ),
            r"shapes\[0\]\.rotation must be a proper",
        ),
    ],
)
def test_invalid_files_name_the_field(edit, message):
    d = edit(copy.deepcopy(_valid()))
    with pytest.raises(ValueError, match=message):
        Phantom.from_dict(d)


def test_invalid_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("schema: [unclosed\n")
    with pytest.raises(ValueError, match=r"broken\.yaml is not valid YAML"):
        Phantom.load(bad)
    d = _valid()
    d["shapes"][3]["semi_axes"][1] = 0
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match=r"zero.yaml: shapes\[3\]\.semi_axes\[1\] must be > 0"):
        Phantom.load(tmp_path / "zero.yaml")
    with pytest.raises(ValueError, match="density_scale must be > 0"):
        Phantom.load("shepp_logan_3d", density_scale=-1.0)

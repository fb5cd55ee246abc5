"""Procedural pediatric skull: shape indices per variant, sutures, fontanelles, growth,
determinism, physical values, rasterisation against brute-force supersampling, projections,
presets and parameter validation."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior.geometry.grid import VolumeGrid
from tomoprior.phantoms.skull import (
    LABELS,
    VARIANTS,
    Skull,
    SkullParameters,
    attenuation_to_hu,
    available_presets,
    default_grid,
    hu_to_attenuation,
    linear_attenuation,
    load_preset,
    make_skull,
    measure_shape_indices,
    preset_parameters,
    save_preset,
)
from tomoprior.phantoms.skull.growth import MATERIALS, cephalic_index, vault_thickness_mm
from tomoprior.phantoms.skull.parameters import SIDES, fused_sutures
from tomoprior.phantoms.skull.variants import VARIANT_SHAPES

BONE, SUTURE = LABELS["bone"], LABELS["suture"]


@pytest.fixture(scope="module")
def skulls() -> dict[str, Skull]:
    return {v: make_skull(age_years=1.0, variant=v, seed=0) for v in VARIANTS}


@pytest.fixture(scope="module")
def raster_indices(skulls) -> dict[str, dict]:
    grid = default_grid(64)
    return {v: measure_shape_indices(s.bone_mask(grid), grid) for v, s in skulls.items()}


def test_api_names():
    assert VARIANTS == ("normal", "sagittal", "metopic", "unicoronal", "bicoronal", "lambdoid")
    g = default_grid(shape=64)
    assert isinstance(g, VolumeGrid) and g.shape == (64, 64, 64)
    assert len(set(g.spacing)) == 1 and g.center == (0.0, 0.0, 0.0)
    p = SkullParameters(age_years=1.0, variant="normal", cephalic_index=None, seed=0, side="left")
    a, b = make_skull(p), make_skull(age_years=1.0, variant="normal", seed=0)
    assert a.parameters == b.parameters == p
    json.dumps(a.to_dict())  # plain types only


# -- shape indices on the rasterised bone mask ------------------------------------------------


def test_cephalic_index_moves_the_expected_way(raster_indices, skulls):
    ci = {v: d["cephalic_index"] for v, d in raster_indices.items()}
    assert 74 < ci["normal"] < 85
    assert ci["sagittal"] < 70 and ci["sagittal"] < ci["normal"] - 8  # scaphocephaly: long, narrow
    assert ci["bicoronal"] > 90 and ci["bicoronal"] > ci["normal"] + 8  # brachycephaly: short, wide
    # the raster agrees with the implicit surface within a voxel or so
    for v, s in skulls.items():
        assert abs(ci[v] - s.cephalic_index()) < 3.5, v


def test_plagiocephaly_raises_asymmetry_and_trigonocephaly_narrows_forehead(raster_indices, skulls):
    cvai = {v: d["cvai"] for v, d in raster_indices.items()}
    for v in ("unicoronal", "lambdoid"):
        assert cvai[v] > cvai["normal"] + 3.0, (v, cvai)
        assert skulls[v].shape_indices()["cvai"] > 3.0
    fr = {v: d["frontal_ratio"] for v, d in raster_indices.items()}
    assert fr["metopic"] < fr["normal"] - 0.08, fr
    assert skulls["metopic"].shape_indices()["frontal_ratio"] < skulls["normal"].shape_indices()["frontal_ratio"] - 0.1


def test_unilateral_side_mirrors_the_asymmetry():
    left = make_skull(age_years=1.0, variant="lambdoid", side="left", seed=None)
    right = make_skull(age_years=1.0, variant="lambdoid", side="right", seed=None)
    pts = np.array([[30.0, 60.0, 10.0], [-30.0, 60.0, 10.0], [45.0, 40.0, 0.0]])
    mirrored = pts * np.array([-1.0, 1.0, 1.0])
    assert torch.equal(left.labels(pts), right.labels(mirrored))
    g = default_grid(48)
    lab_l, lab_r = left.label_map(g), right.label_map(g)
    # x -> -x on a grid symmetric about x = 0 (up to float32 rounding at a few boundaries)
    assert float((lab_l != lab_r.flip(-1)).float().mean()) < 1e-3
    assert not torch.equal(lab_l, lab_l.flip(-1))


def test_variant_shapes_are_data_for_every_variant():
    assert tuple(VARIANT_SHAPES) == VARIANTS
    for name, shape in VARIANT_SHAPES.items():
        for side in SIDES:
            # a keel runs along exactly the sutures the variant fuses
            assert sorted(r[0] for r in shape.ridge_list(side)) == sorted(fused_sutures(name, side)), (name, side)
    for name in ("unicoronal", "lambdoid"):  # unilateral: the right side mirrors the left (x -> -x)
        shape = VARIANT_SHAPES[name]
        for get in (shape.bulge_list, shape.plane_list):
            left, right = get("left"), get("right")
            assert left and len(left) == len(right)
            for (dl, *rest_l), (dr, *rest_r) in zip(left, right):
                assert np.array_equal(dr, dl * np.array([-1.0, 1.0, 1.0])) and rest_l == rest_r
    # bilateral and midline variants ignore the side
    for name in ("metopic", "bicoronal", "sagittal"):
        shape = VARIANT_SHAPES[name]
        assert all(np.array_equal(a[0], b[0]) for a, b in zip(shape.bulge_list("left"), shape.bulge_list("right")))


# -- sutures and fontanelles --------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant, suture, age",
    [
        ("sagittal", "sagittal", 1.0),
        ("metopic", "metopic", 0.2),  # the normal metopic suture is open before ~3 months
        ("unicoronal", "coronal_left", 1.0),
        ("bicoronal", "coronal_right", 1.0),
        ("lambdoid", "lambdoid_left", 1.0),
    ],
)
def test_fused_suture_has_bone_where_the_normal_one_has_a_gap(variant, suture, age):
    normal = make_skull(age_years=age, variant="normal", seed=None)
    fused = make_skull(age_years=age, variant=variant, seed=None)
    for skull, expect in ((normal, SUTURE), (fused, BONE)):
        pts = skull.suture_points(suture, n=41, start=0.25, stop=0.7)  # clear of the fontanelles
        lab = skull.labels(pts)
        assert float((lab == expect).float().mean()) > 0.95, (skull, suture, lab.tolist())
    # the same on a rasterised 1 mm patch around the suture midpoint: the gap lowers the
    # mean attenuation along the suture, fusion restores it
    means = []
    for skull in (normal, fused):
        mid = skull.suture_points(suture, n=1, start=0.5, stop=0.5)[0]
        grid = VolumeGrid(shape=(24, 24, 24), spacing=(1.0, 1.0, 1.0), center=tuple(mid))
        vol = skull.rasterize(grid, supersample=3)
        pts = skull.suture_points(suture, n=15, start=0.45, stop=0.55)
        idx = torch.round(grid.world_to_index(pts)).long()
        means.append(float(vol[idx[:, 0], idx[:, 1], idx[:, 2]].mean()))
    assert means[0] < 0.8 * means[1], means
    # the other sutures of the fused skull stay open
    other = "sagittal" if suture != "sagittal" else "coronal_left"
    assert float((fused.labels(fused.suture_points(other, start=0.3, stop=0.8)) == SUTURE).float().mean()) > 0.95


def _fontanelle_area(skull: Skull, landmark: str) -> int:
    """Suture-labelled samples (1 mm apart) at mid-thickness on a 60 mm patch of the vault
    around a landmark, at least 1.6 mm away from every suture plane: the fontanelle only."""
    lm = skull.landmarks
    c = lm["center"]
    d0 = (lm[landmark] - c) / np.linalg.norm(lm[landmark] - c)
    e1 = np.cross(d0, [1.0, 0.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.array([1.0, 0.0, 0.0])
    s = np.linspace(-30, 30, 61)
    a, b = np.meshgrid(s, s, indexing="ij")
    dirs = np.linalg.norm(lm[landmark] - c) * d0 + a.reshape(-1, 1) * e1 + b.reshape(-1, 1) * e2
    pts = skull.vault_points(dirs, depth=0.5)
    keep = np.ones(len(pts), bool)
    for normal, _ in skull.suture_planes.values():
        keep &= np.abs((pts - c) @ normal) > 1.6
    return int((skull.labels(pts[keep]) == SUTURE).sum())


def _bone_thickness(skull: Skull) -> float:
    """Bone length (mm) along a ray from the vault centre through the parietal bone."""
    c = skull.landmarks["center"]
    d = np.array([0.55, 0.15, 0.82])
    d /= np.linalg.norm(d)
    t = np.arange(0.0, 120.0, 0.02)
    return float((skull.labels(c + t[:, None] * d) == BONE).sum()) * 0.02


def test_vault_thickness_grows_with_age():
    ages = [0.0, 0.5, 1.0, 2.0, 4.0, 6.0]
    th = [_bone_thickness(make_skull(age_years=a, seed=None)) for a in ages]
    assert all(b > a for a, b in itertools.pairwise(th)), th
    # the normative parietal thickness (about 1 mm at birth, 2.9 mm at 6 years), a little more
    # along this ray, which crosses the bone obliquely
    norm = [vault_thickness_mm(a) for a in ages]
    assert all(0.95 * n < t < 1.25 * n + 0.05 for t, n in zip(th, norm)), (th, norm)


@pytest.mark.parametrize("variant", ["normal", "metopic", "unicoronal"])
@pytest.mark.parametrize("age", [0.0, 6.0])
def test_anatomy_is_consistent(variant, age):
    skull = make_skull(age_years=age, variant=variant, seed=1)
    lm = skull.landmarks
    c = lm["center"]
    assert int(skull.labels(c[None])[0]) == LABELS["brain_csf"]
    # landmarks lie on the outer table: bone (or suture/fontanelle) just inside, scalp just outside
    for name in ("nasion", "pterion_left", "asterion_right"):
        u = (lm[name] - c) / np.linalg.norm(lm[name] - c)
        inside, outside = skull.labels(np.stack([lm[name] - 0.3 * u, lm[name] + 1.0 * u])).tolist()
        assert inside in (BONE, SUTURE) and outside == LABELS["soft_tissue"], (name, inside, outside)
    # the globes sit in the orbits, below the anterior cranial fossa
    eyes = skull.labels(np.array([c + g for g, _ in skull._face.globes]))
    assert bool((eyes == LABELS["eye"]).all())
    above = np.array([c + g + np.array([0.0, 0.0, r + 1.0]) for g, r in skull._face.globes])
    assert not bool((skull.labels(above) == LABELS["brain_csf"]).any())


# -- determinism and values -----------------------------------------------------------------------


def test_seed_determinism_and_variation():
    g = default_grid(32)
    a = make_skull(seed=5).rasterize(g)
    b = make_skull(seed=5).rasterize(g)
    c = make_skull(seed=6).rasterize(g)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert make_skull(seed=5).to_dict() == make_skull(seed=5).to_dict()
    # seed None: the mean anatomy, hitting the targets exactly
    m = make_skull(age_years=1.0, seed=None)
    ind = m.shape_indices()
    assert abs(ind["cephalic_index"] - cephalic_index(1.0)) < 0.3 and abs(ind["head_circumference_cm"] - 45.5) < 0.1
    assert make_skull(cephalic_index=72.5, seed=3).cephalic_index() == pytest.approx(72.5, abs=0.4)


def test_values_are_finite_and_physical(skulls):
    skull = skulls["normal"]
    grid = default_grid(48)
    threads = torch.get_num_threads()
    vol = skull.rasterize(grid, supersample=2)
    lab = skull.label_map(grid)
    assert vol.dtype == torch.float32 and vol.shape == (48, 48, 48)
    assert torch.get_num_threads() == threads  # evaluation restores torch's thread setting
    assert bool(torch.isfinite(vol).all()) and float(vol.min()) >= 0.0 and float(vol.max()) < 0.07
    assert set(torch.unique(lab).tolist()) <= set(LABELS.values())
    assert torch.equal(skull.bone_mask(grid, supersample=1), lab == BONE)
    # the partial-volume mask (>= 25 % bone) holds nearly all bone centres, and more
    pv = skull.bone_mask(grid)
    assert float(pv[lab == BONE].float().mean()) > 0.9 and int(pv.sum()) > int((lab == BONE).sum())
    mu = skull.attenuation
    assert 0.019 < mu["soft_tissue"] < 0.023 and 0.019 < mu["brain"] < 0.023
    assert 0.038 < mu["cortical_bone"] < 0.06
    # infant bone is less mineralised than older children's
    older = make_skull(age_years=6.0, seed=None).attenuation["cortical_bone"]
    young = make_skull(age_years=0.0, seed=None).attenuation["cortical_bone"]
    assert 0.038 < young < older < 0.06
    # voxel-centre values equal the label's material value (supersample 1)
    v1 = skull.rasterize(grid, supersample=1)
    assert float(v1[lab == LABELS["air"]].abs().max()) == 0.0
    assert float(v1[lab == BONE].min()) > 0.03
    # HU
    hu = skull.rasterize(grid, supersample=1, hu=True)
    assert float(hu[lab == LABELS["air"]].max()) == pytest.approx(-1000.0)
    assert torch.allclose(hu_to_attenuation(hu), v1, atol=1e-6)
    assert attenuation_to_hu(linear_attenuation("water", 60.0)) == pytest.approx(0.0)


def test_attenuation_table_matches_xraylib():
    xrl = pytest.importorskip("xraylib")
    names = {"water": "Water, Liquid", "soft": "Tissue, Soft (ICRP)", "brain": "Brain (ICRP)",
             "adipose": "Adipose Tissue (ICRP)", "bone": "Bone, Cortical (ICRP)"}
    for key, name in names.items():
        c = xrl.GetCompoundDataNISTByName(name)
        rho = MATERIALS[key][1]
        for e in (40.0, 45.0, 60.0, 75.0, 100.0, 137.0):
            mass = sum(c["massFractions"][i] * xrl.CS_Total(c["Elements"][i], e) for i in range(c["nElements"]))
            # the shipped table of tomoprior.units, interpolated log-log between its energies: within 0.1 %
            assert linear_attenuation(key, e) == pytest.approx(rho * mass / 10.0, rel=1e-3), (key, e)


def test_refined_rasterisation_equals_brute_force_supersampling():
    # no seed: the mean anatomy, without the smooth tissue texture (which unrefined voxels take
    # at their centre), so every voxel is exactly the mean of its sub-samples' materials
    skull = make_skull(age_years=1.0, variant="metopic", seed=None)
    grid = VolumeGrid(shape=(20, 22, 18), spacing=(7.5, 7.0, 6.5), center=(2.0, -20.0, 10.0))
    k = 2
    fast = skull.rasterize(grid, supersample=k)
    centres = grid.voxel_centers(dtype=torch.float64)
    sz, sy, sx = grid.spacing
    off = (torch.arange(k, dtype=torch.float64) + 0.5) / k - 0.5
    acc = torch.zeros(grid.shape, dtype=torch.float64)
    for a in off:
        for b in off:
            for c in off:
                acc += skull.values(centres + torch.tensor([c * sx, b * sy, a * sz], dtype=torch.float64)).double()
    brute = (acc / k**3).float()
    diff = (fast - brute).abs()
    assert float((diff > 1e-6).float().mean()) < 0.002, float((diff > 1e-6).float().mean())
    assert float(diff.max()) < 0.01


# -- geometry ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw",
    [
        dict(age_years=6.0, variant="sagittal", cephalic_index=55.0, seed=1, variation=3.0),
        dict(age_years=6.0, variant="bicoronal", cephalic_index=110.0, seed=2, variation=3.0),
        dict(age_years=0.0, variant="lambdoid", side="right", seed=3),
    ],
)
def test_every_skull_fits_the_default_grid(kw):
    skull = make_skull(**kw)
    lo, hi = skull.bounding_box(include_neck=True)
    g_lo, g_hi = default_grid(64).bounds()
    assert np.all(lo > np.array(g_lo) + 3.0) and np.all(hi < np.array(g_hi) - 3.0), (lo, hi)
    # the box is tight: the skin reaches it
    assert (hi - lo).max() < 235.0
    # nothing outside the box (voxel centres of a coarse grid)
    g = default_grid(40)
    lab = skull.label_map(g)
    pts = g.voxel_centers()[lab > 0].numpy()
    assert np.all(pts.min(0) > lo - 7.0) and np.all(pts.max(0) < hi + 7.0)


def test_projections_are_finite_and_see_the_whole_head(skulls):
    grid = default_grid(64)
    vol = skulls["normal"].rasterize(grid, supersample=2)
    geom = tp.BiplanarGeometry.from_parameters(grid=grid, binning=16)
    proj = tp.project(vol, geom, backend="torch")
    assert proj.shape[:1] == (2,) and bool(torch.isfinite(proj).all())
    assert float(proj.min()) >= 0.0 and 2.0 < float(proj.max()) < 8.0  # ~ 0.02/mm x 150 mm + bone
    border = torch.cat([proj[:, 0], proj[:, -1], proj[:, :, 0], proj[:, :, -1]], dim=-1)
    assert float(border.max()) < 1e-3  # the head's shadow is inside both detectors


# -- presets ----------------------------------------------------------------------------------------


def test_presets_one_per_variant(tmp_path):
    names = [n for n in available_presets() if n.startswith("skull_1y_")]
    assert sorted(preset_parameters(n).variant for n in names) == sorted(VARIANTS)
    skull = load_preset("skull_1y_normal")
    assert isinstance(skull, Skull) and skull.parameters.age_years == 1.0
    p = SkullParameters(age_years=2.5, variant="unicoronal", side="right", seed=7)
    path = save_preset(p, tmp_path / "mine.yaml", description="test")
    assert preset_parameters(path) == p
    with pytest.raises(ValueError, match="skull_1y_normal"):
        load_preset("skull_no_such")
    with pytest.raises(ValueError, match="not a skull preset"):
        load_preset("shepp_logan_3d")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: tomoprior.skull\nschema_version: 1\nname: bad\nparameters: {age_years: 9}\n")
    with pytest.raises(ValueError, match="age_years"):
        load_preset(bad)
    bad.write_text("schema: tomoprior.skull\nschema_version: 1\nname: bad\nparameters: {agee: 1}\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_preset(bad)


# -- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(age_years=-0.1), "age_years must be in \\[0, 6\\]"),
        (dict(age_years=6.5), "age_years"),
        (dict(age_years=float("nan")), "age_years"),
        (dict(age_years="one"), "age_years must be a number"),
        (dict(age_years=True), "age_years must be a number"),
        (dict(variant="plagiocephaly"), "'normal', 'sagittal', 'metopic', 'unicoronal', 'bicoronal', 'lambdoid'"),
        (dict(cephalic_index=40.0), "cephalic_index must be in \\[55, 110\\]"),
        (dict(cephalic_index=130.0), "cephalic_index"),
        (dict(side="up"), "side must be 'left' or 'right'"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(variation=-1.0), "variation"),
        (dict(energy_kev=10.0), "energy_kev"),
        (dict(head_circumference_cm=100.0), "head_circumference_cm"),
    ],
)
def test_bad_parameters_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        make_skull(**kw)


def test_bad_calls_raise_clear_errors(skulls):
    skull = skulls["normal"]
    with pytest.raises(ValueError, match="VolumeGrid"):
        skull.rasterize((64, 64, 64))
    with pytest.raises(ValueError, match="supersample"):
        skull.rasterize(default_grid(16), supersample=0)
    with pytest.raises(ValueError, match="shape"):
        default_grid(4)
    with pytest.raises(ValueError, match="points"):
        skull.values(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="finite"):
        skull.values([[math.nan, 0.0, 0.0]])
    with pytest.raises(ValueError, match="unknown suture"):
        skull.suture_points("squamosal")
    with pytest.raises(ValueError, match="not both"):
        make_skull(SkullParameters(), age_years=2.0)
    with pytest.raises(ValueError, match=r"grid\.shape"):
        measure_shape_indices(np.zeros((4, 4, 4), bool), default_grid(16))


def test_anatomy_v2_texture_suture_margins_spine_and_v1_kept():
    """Anatomy v2 adds a smooth, seeded tissue texture (std 1 %, clipped at 3 %), thinned bone at
    open suture margins, the cervical spine and dense petrous pyramids; v1 keeps the first model."""
    import numpy as np

    from tomoprior.phantoms.skull.model import TEXTURE_CLIP

    with pytest.raises(ValueError, match="anatomy must be one of"):
        make_skull(age_years=1.0, anatomy="v3")
    a, b, c = (make_skull(age_years=0.5, seed=s) for s in (3, 3, 4))
    v1 = make_skull(age_years=0.5, seed=3, anatomy="v1")
    assert a.anatomy == "v2" and v1.anatomy == "v1"
    lo, hi = a.bounding_box()
    pts = torch.as_tensor(np.random.default_rng(0).uniform(lo, hi, (20000, 3)))
    labels = a.labels(pts)
    soft = (a._materials_at(pts) == 1)
    rel = a.values(pts)[soft] / a.attenuation["soft_tissue"] - 1.0
    assert 0.004 < float(rel.std()) < 0.02 and float(rel.abs().max()) <= TEXTURE_CLIP + 1e-6
    assert torch.equal(a.values(pts), b.values(pts)) and not torch.equal(a.values(pts), c.values(pts))
    soft1 = v1._materials_at(pts) == 1
    assert torch.all(v1.values(pts)[soft1] == v1.attenuation["soft_tissue"])  # v1: uniform tissues
    # the spine: bone below the foramen magnum on the midline, none in v1
    spine_pts = torch.as_tensor(np.array([p[3] for p in a._spine.parts if p[2] == "ell"]) + a.c0)
    assert bool((a.labels(spine_pts) == 3).all())
    assert v1._spine is None and bool((labels >= 0).all())
    # open sutures: bone within the margin is thinner (fibrous tissue from the inner table out)
    mid = a.suture_points("sagittal", n=9, depth=0.9)
    side = mid + np.array([0.5 * a.suture_width_mm + 0.6, 0.0, 0.0])
    assert int((a.labels(torch.as_tensor(side)) == 4).sum()) >= 6
    assert int((v1.labels(torch.as_tensor(mid + np.array([0.5 * v1.suture_width_mm + 0.6, 0, 0]))) == 4).sum()) == 0


def test_fused_suture_stays_bone_without_thinned_margin():
    """A fused suture (sagittal synostosis) is bone through its gap and its would-be margins."""
    import numpy as np

    s = make_skull(age_years=0.5, variant="sagittal", seed=3)
    assert s.suture_planes["sagittal"][1] == 0.0 and s.suture_planes["coronal_left"][1] > 0
    for depth in (0.5, 0.9):
        mid = s.suture_points("sagittal", n=9, depth=depth)
        beside = mid + np.array([0.5 * s.suture_width_mm + 0.6, 0.0, 0.0])
        assert bool((s.labels(torch.as_tensor(mid)) == 3).all())
        assert bool((s.labels(torch.as_tensor(beside)) == 3).all())

"""Realism for datasets: head pose, motion between the exposures, acquisition physics, their
provenance, and the settings file."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior import data
from tomoprior.data.realism import move_head, posed_geometry
from tomoprior.physics import RadiographSettings, ScatterModel


@pytest.fixture
def geom() -> tp.BiplanarGeometry:
    # frontal: source on +y, detector u = +x; lateral: source on -x, detector u = +y; v = -z for both
    return tp.BiplanarGeometry.from_parameters(binning=32, grid=tp.VolumeGrid((16, 16, 16), (8.0, 8.0, 8.0)))


@pytest.fixture
def volume(geom) -> torch.Tensor:
    ph = tp.phantoms.Phantom([tp.phantoms.Sphere((0, 0, 0), 45.0, 0.02), tp.phantoms.Sphere((15, -10, 5), 12.0, 0.06)],
                             name="head")
    return ph.rasterize(geom.grid, supersample=1).to(torch.float32)


def test_pose_shifts_the_projection_of_a_point_by_the_predicted_amount(geom):
    pitch, magnification = 6.4, 1500.0 / 1000.0
    shift = {"rotation_deg": [0.0, 0.0, 0.0], "translation_mm": [5.0, 0.0, -4.0]}
    posed = posed_geometry(geom, shift)
    before = geom.project_points(torch.zeros(1, 3, dtype=torch.float64))[:, 0]
    after = posed.project_points(torch.zeros(1, 3, dtype=torch.float64))[:, 0]
    d = (after - before).numpy()  # (views, 2) = (col, row) shifts in pixels
    # frontal: x -> columns, z -> rows (v = -z), both magnified 1.5
    np.testing.assert_allclose(d[0], [5.0 * magnification / pitch, 4.0 * magnification / pitch], atol=1e-9)
    # lateral (source at x = -1000): a shift along its central ray does not move the point but
    # brings it 5 mm nearer the detector, so the z shift is magnified 1500 / 1005
    np.testing.assert_allclose(d[1], [0.0, 4.0 * (1500.0 / 1005.0) / pitch], atol=1e-9)
    # any pose: the posed geometry sees a head point where the nominal one sees the moved point
    pose = {"rotation_deg": [2.0, -3.0, 4.0], "translation_mm": [1.0, 2.0, -3.0]}
    pts = torch.tensor([[20.0, -10.0, 5.0], [0.0, 30.0, -25.0]], dtype=torch.float64)
    moved = torch.as_tensor(move_head(pts.numpy(), pose, geom.grid.center))
    torch.testing.assert_close(posed_geometry(geom, pose).project_points(pts), geom.project_points(moved))


def test_rotation_about_z_moves_a_point_as_predicted(geom):
    pose = {"rotation_deg": [0.0, 0.0, 10.0], "translation_mm": [0.0, 0.0, 0.0]}
    p = torch.tensor([[20.0, 0.0, 0.0]], dtype=torch.float64)
    col = float(posed_geometry(geom, pose).project_points(p)[0, 0, 0] - geom.project_points(p)[0, 0, 0])
    x, y = 20.0 * math.cos(math.radians(10)), 20.0 * math.sin(math.radians(10))
    predicted = (x * 1500.0 / (1000.0 - y) - 20.0 * 1.5) / 6.4  # frontal: source at y = +1000
    assert col == pytest.approx(predicted, abs=1e-9)


def test_motion_only_affects_the_second_view(geom, volume):
    plain = data.synthesize(volume, geom, seed=5)
    moved = data.synthesize(volume, geom, seed=5,
                            realism=data.Realism(motion=data.PoseJitter(rotation_deg=2.0, translation_mm=3.0)))
    assert torch.equal(moved.xrays[0], plain.xrays[0])
    assert float((moved.xrays[1] - plain.xrays[1]).abs().max()) > 0.05
    torch.testing.assert_close(moved.geometry.views[0].vector, geom.views[0].vector)
    assert "motion" in moved.augmentation and "pose" not in moved.augmentation
    assert moved.augmentation["motion"]["applies_to_views"] == [1]
    posed = data.synthesize(volume, geom, seed=5, realism=data.Realism(pose=data.PoseJitter(3.0, 5.0)))
    assert all(float((posed.xrays[i] - plain.xrays[i]).abs().max()) > 0.05 for i in range(2))
    # the stored geometry is exact: re-projecting the volume with it gives the X-rays
    torch.testing.assert_close(tp.project(volume, posed.geometry), posed.xrays, rtol=1e-4, atol=1e-4)
    # the nominal geometry is the scanner's
    torch.testing.assert_close(posed.nominal_geometry.vectors, geom.vectors)


def test_physics_line_integrals_are_after_flat_field_and_log(geom, volume):
    clean = data.synthesize(volume, geom, seed=1)
    quiet = data.Realism(radiograph=RadiographSettings(noise=False))
    torch.testing.assert_close(data.synthesize(volume, geom, seed=1, realism=quiet).xrays, clean.xrays,
                               rtol=1e-5, atol=1e-5)
    noisy = data.Realism(radiograph=RadiographSettings(noise=True), photons_per_mm2=1e3 / 6.4 ** 2)
    res = data.synthesize(volume, geom, seed=1, realism=noisy)
    assert res.augmentation["physics"]["photons_per_pixel"] == pytest.approx(1000.0)
    assert res.augmentation["physics"]["stored"] == "-log(raw / flat)"
    err = (res.xrays - clean.xrays).std()
    assert 0.01 < float(err) < 0.2  # about 1/sqrt(1000 e^-p) per pixel
    with_scatter = data.synthesize(volume, geom, seed=1, realism=data.Realism(
        radiograph=RadiographSettings(noise=False, scatter=ScatterModel())))
    assert float(with_scatter.xrays.sum()) < float(clean.xrays.sum())  # scatter lowers -log(raw / flat)
    raw = data.synthesize(volume, geom, seed=1, kind="radiograph", realism=quiet)
    torch.testing.assert_close(raw.xrays, 1000.0 * torch.exp(-clean.xrays), rtol=1e-4, atol=1e-3)


def test_realism_is_recorded_per_sample_and_none_changes_nothing(tmp_path):
    common = {"seed": 3, "grid": 16, "binning": 32, "phantom": "shepp_logan"}
    plain = data.make_specs(2, **common)
    none = data.make_specs(2, realism=data.Realism.preset("none"), **common)
    assert plain == none
    real = data.make_specs(2, realism=data.Realism.preset("realistic"), **common)
    out = data.generate(real, tmp_path / "r.h5")
    with data.DatasetFile(out) as ds:
        assert ds.attrs["realism"] == real[0].realism and ds.attrs["xray_kind"] == "line_integrals"
        for i in range(2):
            aug = ds.provenance(i)["augmentation"]
            assert aug["pose"]["size"] == {"rotation_deg": 3.0, "translation_mm": 5.0}
            assert all(abs(a) <= 3.0 for a in aug["pose"]["drawn"]["rotation_deg"])
            assert all(abs(t) <= 5.0 for t in aug["pose"]["drawn"]["translation_mm"])
            assert aug["motion"]["size"] == {"rotation_deg": 1.0, "translation_mm": 1.0}
            phys = aug["physics"]
            assert phys["heel"] is True and phys["focal_spot_mm"] == 0.6 and phys["scatter"]["spr"] == 1.0
            assert phys["photons_per_pixel"] == pytest.approx(5e4 * 6.4 ** 2)
            assert np.isfinite(ds.xrays(i)).all()
        # the draws differ between samples
        assert ds.provenance(0)["augmentation"]["pose"] != ds.provenance(1)["augmentation"]["pose"]
    # deterministic: the same spec gives the same sample
    a, b = data.generate_sample(real[0]), data.generate_sample(real[0])
    assert torch.equal(torch.as_tensor(a.xrays), torch.as_tensor(b.xrays))


def test_realism_settings_file_and_its_errors(tmp_path):
    r = data.Realism.preset("realistic")
    assert data.Realism.from_json(r.to_json()) == r
    f = tmp_path / "r.yaml"
    f.write_text("preset: realistic\nradiograph: {scatter: {spr: 0.5}, focal_spot_mm: 1.2}\npose: {rotation_deg: 2}\n"
                 "motion: null\n")
    got = data.Realism.parse(str(f))
    assert got.radiograph.scatter.spr == 0.5 and got.radiograph.focal_spot_mm == 1.2
    assert got.radiograph.heel is True and got.pose == data.PoseJitter(2.0, 0.0) and got.motion.is_zero
    assert data.Realism.parse("none").is_none
    for text, match in (("photons_per_mm2: -5\n", "photons_per_mm2"),
                        ("dose: 5\n", r"unknown realism setting\(s\) \['dose'\]"),
                        ("radiograph: {photons: 5}\n", r"unknown radiograph setting\(s\) \['photons'\]"),
                        ("radiograph: {photons_per_pixel: -1}\n", "photons_per_pixel"),
                        ("pose: {rotation_deg: -1}\n", "pose.rotation_deg"),
                        ("pose: {yaw: 1}\n", "unknown pose setting"),
                        ("preset: fancy\n", "unknown realism preset")):
        f.write_text(text)
        with pytest.raises(ValueError, match=match):
            data.Realism.load(f)
    with pytest.raises(ValueError, match="must be one of"):
        data.Realism.parse("realist")
    with pytest.raises(ValueError, match="not both"):
        data.make_specs(1, kind="radiograph", physics={"photons_per_pixel": 5.0}, realism=r, phantom="shepp_logan")


def test_polychromatic_materials_harden_the_beam_and_are_recorded(geom, tmp_path):
    # a bone ball: with the two-material split and a 70 kVp spectrum, -log T per unit of the
    # 60 keV line integral falls with thickness (beam hardening); monochromatic it is constant
    ball = tp.phantoms.Phantom([tp.phantoms.Sphere((0, 0, 0), 50.0, 0.0574)], name="bone ball")
    volume = ball.rasterize(geom.grid, supersample=1).to(torch.float64)
    rad = RadiographSettings(kvp=70.0, filtration={"Al": 2.5}, noise=False, photons_per_pixel=1e4)
    mono = data.synthesize(volume, geom, seed=0, realism=data.Realism(radiograph=rad))
    poly = data.synthesize(volume, geom, seed=0, realism=data.Realism(radiograph=rad, materials=("soft_tissue",
                                                                                                "cortical_bone")))
    exact = tp.project(volume, geom)[0]
    m, p = torch.as_tensor(mono.xrays)[0], torch.as_tensor(poly.xrays)[0]
    thin = (exact > 0.5) & (exact < 1.5)
    thick = exact > 4.0
    assert thin.any() and thick.any()
    torch.testing.assert_close(m[thick] / exact[thick], torch.ones_like(exact[thick]), rtol=1e-3, atol=0)
    per_unit_thin, per_unit_thick = float((p[thin] / exact[thin]).mean()), float((p[thick] / exact[thick]).mean())
    assert per_unit_thick < 0.93 * per_unit_thin  # hardening
    assert per_unit_thin > 1.0  # the 70 kVp beam's mean energy is below 60 keV
    assert poly.augmentation["physics"]["materials"] == ["soft_tissue", "cortical_bone"]
    assert mono.augmentation["physics"]["materials"] is None
    # presets, files and errors
    assert data.Realism.preset("realistic").materials == ("soft_tissue", "cortical_bone")
    assert data.Realism.preset("none").materials is None
    f = tmp_path / "r.yaml"
    f.write_text("preset: realistic\nmaterials: null\n")
    assert data.Realism.load(f).materials is None
    f.write_text("preset: realistic\nmaterials: [water, compact_bone]\n")
    r = data.Realism.load(f)
    assert r.materials == ("water", "compact_bone") and data.Realism.from_json(r.to_json()) == r
    f.write_text("preset: realistic\nradiograph: null\n")
    assert data.Realism.load(f).materials is None  # no radiograph, no polychromatic beam
    for text, match in (("materials: [soft_tissue, cortical_bone]\n", "needs radiograph settings with kvp"),
                        ("preset: realistic\nmaterials: bone\n", "pair"),
                        ("preset: realistic\nmaterials: [soft_tissue, kryptonite]\n", "kryptonite")):
        f.write_text(text)
        with pytest.raises(ValueError, match=match):
            data.Realism.load(f)

"""RTK circular geometry: parameters <-> views, the XML file, and a safe parser."""

import math

import numpy as np
import pytest
import torch

import tomoprior as tp
from tests.conftest import random_geometry
from tomoprior.interop import rtk

# RTK 2.7's ThreeDCircularProjectionGeometry.AddProjection(1000, 1500, 30, 5, -3).GetMatrix(0)
RTK_MATRIX = np.array([[-1301.538105676658, 0.0, 745.6698729810777, 5000.0],
                       [1.4999999999999998, -1500.0, 2.598076211353316, -3000.0],
                       [0.49999999999999994, 0.0, 0.8660254037844387, -1000.0]])


def test_matrix_equals_rtk_s():
    p = rtk.RTKProjection(1000.0, 1500.0, 30.0, 5.0, -3.0)
    assert np.abs(p.matrix() - RTK_MATRIX).max() < 1e-9


def test_view_agrees_with_rtk_matrix_pixels():
    p = rtk.RTKProjection(800.0, 1200.0, 47.0, 4.0, -6.0, 3.0, 358.0, 7.0, -2.0)
    shape, pitch, origin = (30, 40), (0.9, 0.6), (-15.0, -11.0)
    view = rtk.view_from_rtk(p, shape, pitch, origin=origin)
    pts = np.random.default_rng(0).uniform(-60, 60, (40, 3))
    h = np.c_[pts, np.ones(len(pts))] @ p.matrix().T
    assert (h[:, 2] < 0).all()  # RTK's w is negative in front of the source
    col = (h[:, 0] / h[:, 2] - origin[0]) / pitch[1]
    row = (h[:, 1] / h[:, 2] - origin[1]) / pitch[0]
    assert np.abs(view.project_points(pts).numpy() - np.c_[col, row]).max() < 1e-9
    # and the pinhole reader takes RTK's matrix once it maps to pixels, with w_sign=-1
    to_pixels = np.array([[1 / pitch[1], 0, -origin[0] / pitch[1]], [0, 1 / pitch[0], -origin[1] / pitch[0]],
                          [0, 0, 1]])
    again = tp.View.from_projection_matrix(to_pixels @ p.matrix(), shape, pitch, w_sign=-1)
    assert torch.allclose(again.vector, view.vector, atol=1e-8)


def _angle_diff(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.mark.parametrize("seed", range(4))
def test_view_rtk_view_round_trip(seed, small_grid, tmp_path):
    geom = random_geometry(seed, small_grid, shapes=((40, 48), (40, 48)), pitches=((3.0, 2.5), (3.0, 2.5)))
    params = [rtk.rtk_from_view(v) for v in geom.views]
    for v, p in zip(geom.views, params):
        again = rtk.view_from_rtk(p, v.shape, v.pixel_pitch)
        assert float((again.vector - v.vector).abs().max()) < 1e-9  # mm
        assert p.source_to_detector == pytest.approx(float(v.source_to_detector))
    written = rtk.write_rtk_geometry(geom.views, tmp_path / "g.xml", origin=(-50.0, -70.0))
    views = rtk.read_rtk_geometry(tmp_path / "g.xml", (40, 48), (3.0, 2.5), origin=(-50.0, -70.0), names=["a", "b"])
    assert [v.name for v in views] == ["a", "b"]
    for v, w in zip(geom.views, views):
        assert float((v.vector - w.vector).abs().max()) < 1e-9
    assert rtk.parse_rtk_geometry((tmp_path / "g.xml").read_text()) == written


def test_default_biplanar_views_convert_with_their_angles():
    frontal, lateral = tp.BiplanarGeometry.from_parameters(binning=8).views
    pf, pl = rtk.rtk_from_view(frontal), rtk.rtk_from_view(lateral)
    assert pf.source_to_isocenter == pytest.approx(1000.0) and pf.source_to_detector == pytest.approx(1500.0)
    # tomoprior's gantry turns about z, RTK's about y: a PA beam (along -y) is RTK's out-of-plane 90 deg
    assert _angle_diff(pf.out_of_plane_angle, 270.0) == pytest.approx(0.0, abs=1e-9)
    for view, p in ((frontal, pf), (lateral, pl)):
        assert torch.allclose(rtk.view_from_rtk(p, view.shape, view.pixel_pitch).vector, view.vector, atol=1e-9)
    for p in (pf, pl):
        for name in ("projection_offset_x", "projection_offset_y", "source_offset_x", "source_offset_y"):
            assert getattr(p, name) == pytest.approx(0.0, abs=1e-9)


GLOBAL_FILE = """<?xml version="1.0"?>
<!DOCTYPE RTKGEOMETRY>
<RTKThreeDCircularGeometry version="3">
  <SourceToIsocenterDistance>1000</SourceToIsocenterDistance>
  <SourceToDetectorDistance>1536</SourceToDetectorDistance>
  <Projection>
    <GantryAngle>0</GantryAngle>
  </Projection>
  <Projection>
    <GantryAngle>90</GantryAngle>
    <ProjectionOffsetX>12</ProjectionOffsetX>
  </Projection>
  <Projection>
    <Angle>180</Angle>
  </Projection>
</RTKThreeDCircularGeometry>
"""


def test_reads_rtk_global_values_and_carries_values_on_as_rtk_does():
    ps = rtk.parse_rtk_geometry(GLOBAL_FILE)
    assert [p.gantry_angle for p in ps] == [0.0, 90.0, 180.0]
    assert all(p.source_to_isocenter == 1000.0 and p.source_to_detector == 1536.0 for p in ps)
    assert [p.projection_offset_x for p in ps] == [0.0, 12.0, 12.0]
    view0 = rtk.view_from_rtk(ps[0], (3, 3), 1.0)
    assert view0.source.tolist() == pytest.approx([0.0, 0.0, 1000.0])
    assert view0.detector_center.tolist() == pytest.approx([0.0, 0.0, -536.0])
    view1 = rtk.view_from_rtk(ps[1], (3, 3), 1.0)
    assert math.dist(view1.source.tolist(), (0.0, 0.0, 0.0)) == pytest.approx(1000.0)
    assert float(view1.source[1]) == pytest.approx(0.0)  # the gantry turns about y


@pytest.mark.parametrize("text, match", [
    ('<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "xxxxxxxx"><!ENTITY b "&a;&a;&a;&a;">]>'
     '<RTKThreeDCircularGeometry version="3"><SourceToIsocenterDistance>&b;</SourceToIsocenterDistance>'
     '</RTKThreeDCircularGeometry>', "refused"),
    ('<?xml version="1.0"?><!DOCTYPE r SYSTEM "file:///etc/passwd"><RTKThreeDCircularGeometry version="3"/>',
     "refused"),
    ('<RTKThreeDCircularGeometry version="1"><Projection/></RTKThreeDCircularGeometry>', "version"),
    ('<Geometry version="3"/>', "root element"),
    ('<RTKThreeDCircularGeometry version="3"><Projection>', "well-formed"),
    ('<RTKThreeDCircularGeometry version="3"></RTKThreeDCircularGeometry>', "no <Projection>"),
    ('<RTKThreeDCircularGeometry version="3"><Projection><GantryAngle>0</GantryAngle></Projection>'
     '</RTKThreeDCircularGeometry>', "parallel"),
    ('<RTKThreeDCircularGeometry version="3"><RadiusCylindricalDetector>900</RadiusCylindricalDetector>'
     '<Projection/></RTKThreeDCircularGeometry>', "cylindrical"),
    ('<RTKThreeDCircularGeometry version="3"><SourceToDetectorDistance>x</SourceToDetectorDistance>'
     '<Projection/></RTKThreeDCircularGeometry>', "one number"),
    ('<RTKThreeDCircularGeometry version="3"><SourceToIsocenterDistance>1000</SourceToIsocenterDistance>'
     '<SourceToDetectorDistance>1500</SourceToDetectorDistance><Projection><GantryAngle>30</GantryAngle>'
     '<Matrix>1 2 3 4 5 6 7 8 9 10 11 12</Matrix></Projection></RTKThreeDCircularGeometry>', "disagree"),
])
def test_bad_files_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        rtk.parse_rtk_geometry(text)


def test_consistent_matrix_is_accepted_and_missing_file_is_a_clear_error(tmp_path):
    matrix = " ".join(repr(float(x)) for x in rtk.RTKProjection(1000.0, 1536.0, 30.0).matrix().ravel())
    text = GLOBAL_FILE.replace("<GantryAngle>0</GantryAngle>",
                               f"<GantryAngle>30</GantryAngle><Matrix>{matrix}</Matrix>")
    assert rtk.parse_rtk_geometry(text)[0].gantry_angle == 30.0
    with pytest.raises(ValueError, match="cannot read"):
        rtk.read_rtk_geometry(tmp_path / "missing.xml", (3, 3), 1.0)


def test_views_rtk_cannot_hold_are_refused(tmp_path):
    frontal = tp.BiplanarGeometry.from_parameters(binning=8).frontal
    mirrored = tp.View(frontal.source, frontal.detector_center, -frontal.u, frontal.v, frontal.shape)
    with pytest.raises(ValueError, match="mirrored"):
        rtk.rtk_from_view(mirrored)
    skewed = tp.View(frontal.source, frontal.detector_center, frontal.u + 0.1 * frontal.v, frontal.v, frontal.shape)
    with pytest.raises(ValueError, match="perpendicular"):
        rtk.rtk_from_view(skewed)
    other = tp.View(frontal.source, frontal.detector_center, frontal.u, frontal.v, (10, 12))
    with pytest.raises(ValueError, match="one image geometry"):
        rtk.write_rtk_geometry([frontal, other], tmp_path / "g.xml")
    assert not (tmp_path / "g.xml").exists()


@pytest.mark.slow
def test_against_real_rtk(tmp_path):
    """With RTK's Python wheel (itk-rtk) importable: RTK reads our file to the same matrices,
    and we read RTK's file to the same parameters."""
    itk = pytest.importorskip("itk", reason="itk-rtk is not installed (pip install itk-rtk)")
    if not hasattr(itk, "RTK"):
        pytest.skip("ITK is installed without RTK (pip install itk-rtk)")
    g = itk.RTK.ThreeDCircularProjectionGeometry.New()
    rng = np.random.default_rng(3)
    ours = [rtk.RTKProjection(rng.uniform(600, 1000), rng.uniform(1100, 1600), rng.uniform(0, 360),
                              *rng.uniform(-20, 20, 2), rng.uniform(0, 8), rng.uniform(352, 360),
                              *rng.uniform(-10, 10, 2)) for _ in range(5)]
    for p in ours:
        g.AddProjection(*(float(x) for x in vars(p).values()))
    writer = itk.RTK.ThreeDCircularProjectionGeometryXMLFileWriter.New()
    writer.SetFilename(str(tmp_path / "rtk.xml"))
    writer.SetObject(g)
    writer.WriteFile()
    read = rtk.parse_rtk_geometry((tmp_path / "rtk.xml").read_bytes())
    for a, b in zip(ours, read):
        assert np.abs(a.matrix() - b.matrix()).max() < 1e-9
    rtk.write_rtk_geometry([rtk.view_from_rtk(p, (20, 30), 0.5) for p in ours], tmp_path / "ours.xml")
    reader = itk.RTK.ThreeDCircularProjectionGeometryXMLFileReader.New()
    reader.SetFilename(str(tmp_path / "ours.xml"))
    reader.GenerateOutputInformation()
    g2 = reader.GetOutputObject()
    for i in range(len(ours)):
        m1, m2 = g.GetMatrix(i), g2.GetMatrix(i)
        assert max(abs(m1(r, c) - m2(r, c)) for r in range(3) for c in range(4)) < 1e-6

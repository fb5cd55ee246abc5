"""The epipolar consistency check catches the PSCT-Net kind of geometry mismatch.

DRRs are made at 1.0 mm per pixel at the isocenter (256 x 256 pixels of 1.5 mm, source
1000 mm from the isocenter and 1500 mm from the detector) of an off-centre phantom; the
check is run with the true geometry and with back-projector geometries that assume 0.83 mm
(PSCT-Net's public code) and 0.95 mm per pixel. Measured (192^2 images, slabs 6 pixels
wide): true 0.11%, 0.95 mm 0.34%, 0.83 mm 1.12%; lateral detector offset 4 mm off: ~9%.
"""

import pytest
import torch

import tomoprior as tp
from tomoprior.geometry import default_frontal, default_lateral
from tomoprior.phantoms import Cylinder, Ellipsoid, Phantom, Sphere
from tomoprior.refiners import check_prior_consistency

GRID = tp.VolumeGrid((64, 64, 64), (3.0, 3.0, 3.0))
N = 192  # pixels per side; pitch chosen so the detector spans 384 mm (256 mm at the isocenter)


def _geom(iso_pixel_mm: float, **changes) -> tp.Geometry:
    pitch = iso_pixel_mm * 1.5 * 256 / N
    kw = dict(pixel_pitch=pitch, detector_shape=(N, N), **changes)
    return tp.BiplanarGeometry.from_parameters(default_frontal(**kw), default_lateral(**kw), grid=GRID)


@pytest.fixture(scope="module")
def drrs():
    phantom = Phantom([
        Cylinder((40.0, 35.0, 10.0), 18.0, 110.0, 0.02),
        Ellipsoid((-30.0, -40.0, -20.0), (20.0, 25.0, 45.0), 0.03),
        Sphere((-45.0, 45.0, 55.0), 15.0, 0.05),
    ])
    return phantom.line_integrals(_geom(1.0)).float()


def test_true_geometry_is_consistent(drrs):
    rep = check_prior_consistency(drrs, _geom(1.0))
    assert rep.consistent, str(rep)
    assert rep.inconsistency < 0.002
    # the total weighted mass seen by both views agrees (the kappa-integrated condition)
    assert abs(rep.mass_ratio[(0, 1)] - 1) < 0.003
    assert set(rep.to_dict()) == {"pairs", "mass_ratio", "inconsistency", "tolerance", "consistent"}


def test_psctnet_pixel_size_mismatch_is_detected(drrs):
    right = check_prior_consistency(drrs, _geom(1.0)).inconsistency
    slightly = check_prior_consistency(drrs, _geom(0.95)).inconsistency
    psct = check_prior_consistency(drrs, _geom(0.83))
    assert not psct.consistent and "INCONSISTENT" in str(psct)
    assert psct.inconsistency > 5 * right, (right, psct.inconsistency)
    assert right < slightly < psct.inconsistency  # grows with the size of the error


def test_detector_offset_is_detected(drrs):
    right = check_prior_consistency(drrs, _geom(1.0)).inconsistency
    moved = tp.BiplanarGeometry.from_parameters(
        default_frontal(pixel_pitch=1.5 * 256 / N, detector_shape=(N, N)),
        default_lateral(pixel_pitch=1.5 * 256 / N, detector_shape=(N, N), v0=4.0), grid=GRID)
    assert check_prior_consistency(drrs, moved).inconsistency > 4 * right


def test_a_similarity_of_the_whole_setup_is_invisible(drrs):
    """Both sources 830 mm from the isocenter with the same ray directions: the data are
    exactly those of a scaled object, so no projection-consistency test can see it."""
    right = check_prior_consistency(drrs, _geom(1.0)).inconsistency
    scaled = check_prior_consistency(drrs, _geom(1.0, source_to_isocenter=830.0)).inconsistency
    assert abs(scaled - right) < 1e-9


def test_errors(drrs):
    with pytest.raises(ValueError, match="views"):
        check_prior_consistency(drrs[:1], _geom(1.0))
    with pytest.raises(ValueError, match=r"\(V, H, W\)"):
        check_prior_consistency(drrs[0], _geom(1.0))
    with pytest.raises(ValueError, match="all zeros"):
        check_prior_consistency(torch.zeros_like(drrs), _geom(1.0))
    with pytest.raises(ValueError, match="bins"):
        check_prior_consistency(drrs, _geom(1.0), bins=1)

"""HU -> attenuation, NIfTI and DICOM readers: orientation, spacing and bad metadata."""

import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior import data

from .conftest import write_dicom_series


def test_mu_water_matches_xraylib_and_hu_conversion():
    xraylib = pytest.importorskip("xraylib")
    for e in (30.0, 45.0, 60.0, 75.0, 100.0, 140.0):
        ref = xraylib.CS_Total_CP("H2O", e) * 1.0 / 10.0  # cm^2/g * g/cm^3 -> 1/cm -> 1/mm
        assert data.mu_water(e) == pytest.approx(ref, rel=0.01), e
    mw = data.mu_water(60.0)
    hu = torch.tensor([-1000.0, -1200.0, 0.0, 1000.0])
    assert torch.allclose(data.hu_to_mu(hu, 60.0), torch.tensor([0.0, 0.0, mw, 2 * mw]))
    assert data.mu_to_hu(2 * mw, 60.0) == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="keV"):
        data.mu_water(10.0)


def _marked_nifti(path, affine_ras, shape=(10, 12, 14), codes=(1, 1)):
    arr = np.zeros(shape, np.float32)
    arr[2, 3, 4] = 1000.0  # a marker voxel at index (i, j, k) = (2, 3, 4)
    img = nib.Nifti1Image(arr, affine_ras)
    img.set_sform(affine_ras if codes[0] else None, code=codes[0])
    img.set_qform(affine_ras if codes[1] else None, code=codes[1])
    nib.save(img, str(path))
    ras = affine_ras @ [2, 3, 4, 1]
    return np.array([-ras[0], -ras[1], ras[2]])  # the marker's LPS position


@pytest.mark.parametrize("affine", [
    np.diag([1.5, 2.0, 2.5, 1.0]),                                      # RAS
    np.array([[-1.5, 0, 0, 40], [0, 2.0, 0, -10], [0, 0, 2.5, 5], [0, 0, 0, 1.0]]),   # LAS
    np.array([[0, 0, -2.5, 40], [-1.5, 0, 0, 3], [0, 2.0, 0, -7], [0, 0, 0, 1.0]]),   # permuted + flipped
])
def test_nifti_orientation_puts_voxels_at_their_lps_position(tmp_path, affine):
    path = tmp_path / "v.nii.gz"
    want = _marked_nifti(path, affine)
    vol = data.load_nifti(path, units="HU", energy_kev=60.0)
    assert vol.units == "mu_per_mm"
    k, j, i = (int(x) for x in np.argwhere(vol.data.numpy() > 0.03)[0])
    assert np.allclose(vol.grid.voxel_center(k, j, i), want, atol=1e-9)
    assert vol.data.max().item() == pytest.approx(2 * data.mu_water(60.0), rel=1e-6)
    # round trip through our writer
    out = tmp_path / "back.nii.gz"
    data.save_nifti(vol, out)
    again = data.load_nifti(out, units="mu_per_mm")
    assert again.grid == vol.grid and torch.equal(again.data, vol.data)


def test_nifti_bad_metadata(tmp_path):
    no_affine = tmp_path / "noaff.nii"
    _marked_nifti(no_affine, np.diag([1.0, 1.0, 1.0, 1.0]), codes=(0, 0))
    with pytest.raises(ValueError, match="no usable affine"):
        data.load_nifti(no_affine)
    ok = data.load_nifti(no_affine, affine=np.diag([2.0, 2.0, 2.0, 1.0]))
    assert ok.grid.spacing == (2.0, 2.0, 2.0)

    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    oblique = tmp_path / "obl.nii"
    _marked_nifti(oblique, np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
    with pytest.raises(ValueError, match="oblique"):
        data.load_nifti(oblique)
    with pytest.warns(data.VolumeWarning, match="oblique"):
        snapped = data.load_nifti(oblique, oblique="snap")
    assert snapped.grid.shape == (14, 12, 10)

    metres = tmp_path / "m.nii"
    _marked_nifti(metres, np.diag([0.001, 0.001, 0.001, 1.0]))
    with pytest.warns(data.VolumeWarning, match="plausible"):
        data.load_nifti(metres)

    nan = tmp_path / "nan.nii"
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(nan))
    with pytest.raises(ValueError, match="non-finite"):
        data.load_nifti(nan)
    with pytest.raises(ValueError, match="singular"):
        data.volume_from_affine(np.zeros((2, 2, 2)), np.diag([1.0, 0.0, 1.0, 1.0]))
    skew = np.eye(4)
    skew[:3, 1] = [0.9, 0.1, 0.0]  # two voxel axes both closest to x
    with pytest.raises(ValueError, match="same patient axis"):
        data.volume_from_affine(np.zeros((2, 2, 2)), skew)
    four_d = tmp_path / "4d.nii"
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3, 2), np.float32), np.eye(4)), str(four_d))
    with pytest.raises(ValueError, match="expected a 3D volume"):
        data.load_nifti(four_d)
    with pytest.raises(ValueError, match="cannot be read as NIfTI"):
        (tmp_path / "junk.nii").write_bytes(b"junk" * 100)
        data.load_nifti(tmp_path / "junk.nii")


def _hu_block(shape=(6, 8, 9)):
    rng = np.random.default_rng(1)
    return np.round(rng.uniform(-1000, 1500, shape) / 2) * 2  # exactly representable with slope 2


def test_dicom_series_sorted_rescaled_and_placed(tmp_path):
    hu = _hu_block()
    write_dicom_series(tmp_path, hu)
    vol = data.load_dicom_series(tmp_path, energy_kev=70.0)
    assert vol.grid.shape == hu.shape and vol.grid.spacing == pytest.approx((2.5, 0.8, 0.7))
    assert np.allclose(vol.data.numpy(), data.hu_to_mu(hu, 70.0), rtol=1e-6, atol=1e-8)
    # voxel (0, 0, 0) sits at ImagePositionPatient of the first slice
    assert np.allclose(vol.grid.voxel_center(0, 0, 0), (-10.0, -20.0, 30.0))


def test_dicom_series_flipped_stack(tmp_path):
    # rows run toward -y (anterior): the reader flips that axis so spacing stays positive
    hu = _hu_block((4, 5, 6))
    write_dicom_series(tmp_path, hu, orientation=(1, 0, 0, 0, -1, 0))
    vol = data.load_dicom_series(tmp_path)
    assert vol.grid.shape == (4, 5, 6)
    # slice normal = x cross -y = -z: the stack is reversed along z, rows reversed along y
    expected = data.hu_to_mu(hu[::-1, ::-1, :], 60.0)
    assert np.allclose(vol.data.numpy(), expected, rtol=1e-6, atol=1e-8)


def test_dicom_bad_series(tmp_path):
    hu = _hu_block()
    missing = tmp_path / "missing"
    missing.mkdir()
    write_dicom_series(missing, hu, skip=(3,))
    with pytest.raises(ValueError, match=r"slices are missing \(1 after 35.000 mm"):
        data.load_dicom_series(missing)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_dicom_series(mixed, hu, uids=["1.2.3"] * 3 + ["1.2.4"] * 3)
    with pytest.raises(ValueError, match="2 series are mixed"):
        data.load_dicom_series(mixed)
    vol = data.load_dicom_series(mixed, series_uid="1.2.4")
    assert vol.grid.shape[0] == 3
    with pytest.raises(ValueError, match="no DICOM"):
        empty = tmp_path / "empty"
        empty.mkdir()
        data.load_dicom_series(empty)


def test_volume_rejects_non_finite_and_mismatch():
    grid = tp.VolumeGrid((4, 4, 4))
    v = torch.zeros(4, 4, 4)
    v[1, 2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"\(k, j, i\) = \(1, 2, 3\)"):
        data.Volume(v, grid)
    with pytest.raises(ValueError, match=r"grid\.shape"):
        data.Volume(torch.zeros(4, 4, 5), grid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.Volume(torch.zeros(4, 4, 4), grid)


def test_resampled_keeps_values_mass_and_position():
    from tomoprior.data import Volume

    g = tp.VolumeGrid((20, 30, 40), (2.0, 1.0, 0.5), center=(3.0, -2.0, 1.0))
    ball = tp.phantoms.Phantom([tp.phantoms.Sphere((5.0, -2.0, 1.0), 6.0, 1.0)])
    v = Volume(ball.rasterize(g, supersample=2), g)
    torch.testing.assert_close(v.resampled(g, supersample=1).data, v.data, atol=1e-5, rtol=0)
    coarse = tp.VolumeGrid((12, 12, 12), (4.0, 4.0, 4.0), center=(3.0, -2.0, 1.0))
    r = v.resampled(coarse)
    assert r.metadata["resample_supersample"] == 8 and r.grid == coarse
    # the box filter keeps the mass (volume x value), and the centre of mass stays put
    assert float(r.data.sum()) * 64.0 == pytest.approx(float(v.data.sum()) * 1.0, rel=1e-3)
    com = (r.data[..., None] * coarse.voxel_centers().to(torch.float32)).sum((0, 1, 2)) / r.data.sum()
    torch.testing.assert_close(com, torch.tensor([5.0, -2.0, 1.0]), atol=0.05, rtol=0)
    # outside the source box: air in the volume's units
    far = tp.VolumeGrid((4, 4, 4), (1.0, 1.0, 1.0), center=(500.0, 0.0, 0.0))
    assert float(v.resampled(far).data.abs().max()) == 0.0
    hu = Volume(torch.zeros(4, 4, 4), tp.VolumeGrid((4, 4, 4), (1.0, 1.0, 1.0)), units="HU")
    assert float(hu.resampled(far).data.max()) == -1000.0
    with pytest.raises(ValueError, match="supersample"):
        v.resampled(coarse, supersample=0)
    with pytest.raises(TypeError, match="VolumeGrid"):
        v.resampled((12, 12, 12))

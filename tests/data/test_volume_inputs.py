"""Bad and unusual volume files: HU offsets, orientations, missing spacing, obliquity, a CT
without a head. Each is refused or warned about with the file named and the fix stated."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest

from tomoprior import data

from .conftest import write_dicom_series


def _head_like_hu(shape=(12, 14, 16)) -> np.ndarray:
    """A box of air around a water-like block with a bone-valued shell, indexed (i, j, k)."""
    hu = np.full(shape, -1000.0)
    hu[2:-2, 2:-2, 2:-2] = 1500.0  # bone
    hu[3:-3, 3:-3, 3:-3] = 40.0  # soft tissue
    return hu


def _save(path, array, affine_ras, *, dtype=None, sform=1, qform=1):
    img = nib.Nifti1Image(array.astype(dtype or array.dtype), affine_ras)
    img.set_sform(affine_ras if sform else None, code=sform)
    img.set_qform(affine_ras if qform else None, code=qform)
    nib.save(img, str(path))
    return path


def test_detect_hu_offset():
    hu = _head_like_hu()
    assert data.detect_hu_offset(hu)[0] == 0.0
    offset, why = data.detect_hu_offset(hu + 1024)
    assert offset == data.STORED_HU_OFFSET == -1024.0 and "HU + 1024" in why
    # a few positive values are not enough: water with one marker stays as it is
    water = np.zeros((10, 10, 10))
    water[2, 3, 4] = 1000.0
    assert data.detect_hu_offset(water)[0] == 0.0
    assert data.detect_hu_offset(np.full((2, 2, 2), np.nan))[0] == 0.0


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_nifti_stored_with_1024_offset_is_detected_and_said(tmp_path, dtype):
    hu = _head_like_hu()
    path = _save(tmp_path / "offset.nii.gz", hu + 1024, np.eye(4), dtype=dtype)
    with pytest.warns(data.VolumeWarning, match=r"offset\.nii\.gz: .*HU \+ 1024.*Assumed HU = stored value -1024.*"
                                                 r"hu_offset=-1024"):
        auto = data.load_nifti(path, units="HU")
    assert auto.metadata["hu_offset"] == -1024.0
    want = data.hu_to_mu(hu, 60.0).max()
    assert float(auto.data.max()) == pytest.approx(float(want), rel=1e-6)
    assert float(auto.data.min()) == 0.0  # air
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit = data.load_nifti(path, units="HU", hu_offset=-1024)
    assert np.array_equal(explicit.data.numpy(), auto.data.numpy())
    # hu_offset=0 keeps the stored values: air (stored 24) would be as dense as water
    as_stored = data.load_nifti(path, units="HU", hu_offset=0)
    assert float(as_stored.data.min()) > 0.99 * data.mu_water(60.0)


def test_signed_hu_nifti_is_left_alone(tmp_path):
    path = _save(tmp_path / "hu.nii", _head_like_hu(), np.eye(4), dtype=np.int16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = data.read_nifti(path, units="HU")
    assert vol.units == "HU" and vol.metadata["hu_offset"] == 0.0
    assert float(vol.data.min()) == -1000.0 and float(vol.data.max()) == 1500.0


def test_bad_hu_offset_arguments(tmp_path):
    path = _save(tmp_path / "hu.nii", _head_like_hu(), np.eye(4), dtype=np.int16)
    with pytest.raises(ValueError, match="hu_offset must be 'auto' or a number"):
        data.load_nifti(path, hu_offset="guess")
    with pytest.raises(ValueError, match="hu_offset must be finite"):
        data.load_nifti(path, hu_offset=float("nan"))
    with pytest.raises(ValueError, match="applies to units='HU' only"):
        data.load_nifti(path, units="mu_per_mm", hu_offset=-1024)


def test_dicom_series_that_lost_its_intercept(tmp_path):
    hu = np.transpose(_head_like_hu((14, 12, 10)), (2, 1, 0))  # (slices, rows, cols)
    write_dicom_series(tmp_path, hu + 1024, slope=1.0, intercept=0.0)
    with pytest.warns(data.VolumeWarning, match="HU \\+ 1024"):
        vol = data.load_dicom_series(tmp_path)
    assert vol.metadata["hu_offset"] == -1024.0
    assert np.allclose(vol.data.numpy(), data.hu_to_mu(hu, 60.0), rtol=1e-6, atol=1e-8)


def test_the_same_anatomy_in_ras_las_and_lps_files_reads_the_same(tmp_path):
    # one LPS placement, stored three ways: the reader must undo each
    hu = _head_like_hu()
    hu[5, 4, 3] = 3000.0  # an asymmetric marker at LPS index (i, j, k) = (5, 4, 3)
    lps = np.diag([0.8, 0.9, 2.0, 1.0])
    lps[:3, 3] = (-20.0, 35.0, -60.0)
    ras_from_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    n = np.array(hu.shape)
    read = {}
    for code, flips in {"LPS": (), "RAS": (0, 1), "LAS": (1,)}.items():
        arr, aff = hu, lps.copy()
        for ax in flips:  # store axis ax reversed: index i' = n-1-i
            arr = np.flip(arr, axis=ax)
            aff[:3, 3] = aff[:3, 3] + aff[:3, ax] * (n[ax] - 1)
            aff[:3, ax] = -aff[:3, ax]
        ras = ras_from_lps @ aff
        path = _save(tmp_path / f"{code}.nii.gz", np.ascontiguousarray(arr), ras, dtype=np.int16)
        assert "".join(nib.aff2axcodes(ras)) == {"LPS": "LPS", "RAS": "RAS", "LAS": "LAS"}[code]
        read[code] = data.read_nifti(path, units="HU")
    for code, vol in read.items():  # NIfTI affines are float32: positions agree to ~1e-5 mm
        assert vol.grid.shape == read["LPS"].grid.shape, code
        assert np.allclose(vol.grid.spacing, read["LPS"].grid.spacing, atol=1e-5), code
        assert np.allclose(vol.grid.center, read["LPS"].grid.center, atol=1e-4), code
        assert np.array_equal(vol.data.numpy(), read["LPS"].data.numpy()), code
        assert vol.metadata["orientation"] == code
    k, j, i = (int(x) for x in np.argwhere(read["RAS"].data.numpy() == 3000.0)[0])
    assert np.allclose(read["RAS"].grid.voxel_center(k, j, i), (lps @ [5, 4, 3, 1])[:3], atol=1e-4)


def test_oblique_affine_is_refused_with_the_file_and_the_fix(tmp_path):
    c, s = np.cos(np.radians(7)), np.sin(np.radians(7))
    rot = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    path = _save(tmp_path / "tilted.nii.gz", _head_like_hu(), rot, dtype=np.int16)
    with pytest.raises(ValueError, match=r"tilted\.nii\.gz.*oblique .* by up to 7\.000 deg.*Resample.*oblique='snap'"):
        data.load_nifti(path)


def test_missing_spacing_is_refused(tmp_path):
    # a qform-only header with zero voxel sizes: nibabel would silently read 1 mm
    img = nib.Nifti1Image(_head_like_hu().astype(np.int16), None)
    img.header.set_qform(np.eye(4), code=1)
    img.header["pixdim"][1:4] = 0.0
    path = tmp_path / "nospacing.nii"
    nib.save(img, str(path))
    with pytest.raises(ValueError, match=r"nospacing\.nii: the voxel spacing is missing .*pass affine="):
        data.load_nifti(path)
    vol = data.load_nifti(path, affine=np.diag([0.5, 0.5, 1.0, 1.0]))
    assert vol.grid.spacing == (1.0, 0.5, 0.5)
    # with an sform the spacing is there, whatever pixdim says
    img.header.set_sform(np.diag([0.7, 0.7, 1.5, 1.0]), code=1)
    nib.save(img, str(path))
    assert data.load_nifti(path).grid.spacing == pytest.approx((1.5, 0.7, 0.7))
    # a zero column in the affine itself
    flat_img = nib.Nifti1Image(_head_like_hu().astype(np.int16), None)
    flat_img.header.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)
    flat = tmp_path / "flat.nii"
    nib.save(flat_img, str(flat))
    with pytest.raises(ValueError, match=r"flat\.nii.*singular.*affine=\.\.\."):
        data.load_nifti(flat)


def test_a_ct_without_a_head_is_warned_about(tmp_path):
    water = np.zeros((10, 10, 10))
    water[:2] = -1000.0
    path = _save(tmp_path / "water.nii.gz", water, np.eye(4), dtype=np.int16)
    expected = (r"water\.nii\.gz: no voxel reaches bone \(the bone threshold is 7\d\d HU at 60 keV, "
                r"the largest value is 0 HU\)")
    with pytest.warns(data.VolumeWarning, match=expected + ".*not a CT of a head"):
        data.load_nifti(path)
    # attenuation volumes (e.g. reconstructions) are not checked
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data.load_nifti(path, units="mu_per_mm")

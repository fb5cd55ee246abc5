"""Fixtures for the data tests: tiny geometries and a synthetic DICOM series writer."""

from __future__ import annotations

import numpy as np
import pytest

import tomoprior as tp


@pytest.fixture
def tiny_geometry() -> tp.BiplanarGeometry:
    grid = tp.VolumeGrid((32, 32, 32), (6.0, 6.0, 6.0))
    return tp.BiplanarGeometry.from_parameters(grid=grid, binning=32)


def write_dicom_series(folder, hu: np.ndarray, *, spacing=(2.5, 0.8, 0.7), origin=(-10.0, -20.0, 30.0),
                       series_uid="1.2.826.0.1.3680043.8.498.1", slope=2.0, intercept=-1024.0,
                       orientation=(1, 0, 0, 0, 1, 0), skip=(), uids=None):
    """One file per axial slice, in shuffled order. ``hu`` is (slices, rows, cols) in HU; stored
    as int16 (hu - intercept) / slope. The stack direction is the normal row x col."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    rng = np.random.default_rng(0)
    for k in rng.permutation(hu.shape[0]):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.SeriesInstanceUID = uids[k] if uids is not None else series_uid
        ds.ImageOrientationPatient = [float(x) for x in iop]
        ds.ImagePositionPatient = [float(x) for x in np.asarray(origin) + k * spacing[0] * normal]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        stored = np.round((hu[k] - intercept) / slope).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.save_as(str(folder / f"slice_{k:03d}.dcm"), enforce_file_format=True)
    (folder / "README.txt").write_text("not a DICOM file")

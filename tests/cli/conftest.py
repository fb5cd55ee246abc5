"""Shared fixtures of the command-line tests: bead images (DICOM and .npy) of a miscalibrated
bi-planar setup, a beads-only phantom, and a light version of the report's extra checks."""

import numpy as np
import pytest

import tomoprior as tp
from tomoprior.calibration import bead_radiographs
from tomoprior.validation import pipeline as pl


def write_dicom(path, image, *, sdd=1500.0, sod=1000.0, spacing=(0.8, 0.8), primary=0.0, secondary=0.0,
                monochrome="MONOCHROME2", tags=True, modality="DX", angles=True, extra=None):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = monochrome
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if tags:
        ds.DistanceSourceToDetector = f"{sdd:.2f}"
        ds.DistanceSourceToPatient = f"{sod:.2f}"
        ds.ImagerPixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
        if angles:
            ds.PositionerPrimaryAngle = f"{primary:g}"
            ds.PositionerSecondaryAngle = f"{secondary:g}"
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(image.astype(np.uint16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture
def light_checks(monkeypatch):
    """The sensitivity / conditioning / projector-map checks on a tiny grid (they are tested in
    tests/validation; here only the command-line flow matters)."""
    real = pl.add_checks
    monkeypatch.setattr(pl, "add_checks",
                        lambda outcome, **kw: real(outcome, **{**kw, "max_pixels": 48, "grid_size": 24}))


@pytest.fixture(scope="session")
def beads_only(tmp_path_factory):
    """The bead cage without its foam support, as a phantom file: the beads (all calibration
    uses) at a fraction of the simulation cost (the support is evaluated on every pixel)."""
    from tomoprior.phantoms import Phantom, Sphere

    cage = Phantom.load("bead_cage")
    path = tmp_path_factory.mktemp("phantom") / "cage_beads_only.yaml"
    beads = Phantom([s for s in cage.shapes if isinstance(s, Sphere)], name="cage_beads_only",
                    density_scale=cage.density_scale)
    beads.save(path)
    return path


@pytest.fixture(scope="session")
def bead_images(tmp_path_factory, beads_only):
    """Frontal as DICOM (raw counts), lateral as .npy, from a miscalibrated geometry at 384^2 x 0.8 mm."""
    folder = tmp_path_factory.mktemp("beads")
    nominal, true = pl.main_job_geometries(pl.MainJobConfig(binning=4))
    counts = bead_radiographs(tp.phantoms.Phantom.load(beads_only), true, photons_per_pixel=3000.0, seed=1).numpy()
    dcm = folder / "frontal.dcm"
    write_dicom(dcm, counts[0])
    npy = folder / "lateral.npy"
    np.save(npy, counts[1])
    return folder, dcm, npy, nominal, true, counts



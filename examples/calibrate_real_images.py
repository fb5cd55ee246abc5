"""Calibrate a bi-planar geometry from two radiographs of a bead phantom.

With real images, call ``tomoprior calibrate --images frontal.dcm lateral.dcm --phantom
bead_cage``. This script shows the same steps from Python and, so that it runs anywhere,
first WRITES two synthetic radiographs (a DICOM file with the geometry attributes a real
DX/XA image carries, and a NumPy array) of the bead cage through a miscalibrated setup::

    python examples/calibrate_real_images.py --out tomoprior-out/example-calibrate

Replace ``make_demo_images`` by your own files; everything after it is unchanged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from tomoprior.calibration import bead_design, bead_radiographs, calibrate
from tomoprior.cli.calibrate import initial_geometry
from tomoprior.validation import analyse, format_summary, outcome_report, read_radiograph, write_report
from tomoprior.validation.pipeline import MainJobConfig, add_checks, main_job_geometries


def make_demo_images(folder: Path) -> list[Path]:
    """Two raw radiographs (384^2 pixels of 0.8 mm) of the bead cage: frontal.dcm, lateral.npy."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    _, true = main_job_geometries(MainJobConfig(binning=4))
    counts = bead_radiographs("bead_cage", true, photons_per_pixel=3000.0, seed=0).numpy()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("frontal.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "DX"
    ds.Rows, ds.Columns = counts[0].shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    # the nominal geometry as a real system would record it
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = "1500", "1000"
    ds.ImagerPixelSpacing = ["0.8", "0.8"]
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = "0", "0"
    ds.PixelData = counts[0].astype(np.uint16).tobytes()
    ds.save_as(folder / "frontal.dcm", enforce_file_format=True)
    np.save(folder / "lateral.npy", counts[1])
    return [folder / "frontal.dcm", folder / "lateral.npy"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tomoprior-out/example-calibrate", help="report folder")
    args = ap.parse_args()
    out = Path(args.out)

    paths = make_demo_images(out / "images")
    names = ["frontal", "lateral"]
    radiographs = [read_radiograph(p, name=n) for p, n in zip(paths, names)]
    # starting point: DICOM attributes where present, else the built-in setup (or a --initial file)
    start, source = initial_geometry(radiographs, None, names)
    print(f"starting geometry from {source}")

    result = calibrate([r.image for r in radiographs], "bead_cage", start, heldout=0.2, seed=0)
    print(result.summary())

    design = bead_design("bead_cage")
    outcome = analyse([r.image for r in radiographs], result.detections, result, design.positions, names,
                      initial=start, design_ids=design.ids)
    add_checks(outcome)
    report, extra = outcome_report(outcome, title="example: calibration from two radiographs")
    html = write_report(report, out / "report", extra_files=extra)
    print(format_summary(outcome))
    print(f"calibrated geometry: {out / 'report' / 'geometry.yaml'}; report: {html}")


if __name__ == "__main__":
    main()

"""Convert the two shipped real head CTs to compressed NIfTI, once, with provenance.

Inputs (public, redistributable; see each folder's licence file):

- ``cthead``: the "Chapel Hill Volume Rendering Test Data Set, Volume II" CT of a cadaver head
  (GE CT scanner, North Carolina Memorial Hospital), as one gzipped headerless big-endian int16
  stream ``CThead_int16be_113x256x256.raw.gz``, array order (slice, row, column) =
  (113, 256, 256). Public copies: the slices from yangrc1234/UnityIsoSurfaceVolumeRenderer
  (commit c7481a81), ``Announcement.txt`` and ``CThead.info`` from FreddyFunk/Volume-Data-Archive
  (commit 476a15f7).
- ``headsq``: VTK's "headsq" CT as the MetaImage ``head.mha`` of TomographicImaging/CIL-Data
  (commit 5affe9b1; the same data as VTKData ``Data/headsq``, BSD-3-Clause ``Copyright.txt``).

Both are read by SimpleITK (the headerless cthead through a MetaImage header written for it,
which states its size, element type, byte order and spacing), and written by nibabel with an
index -> RAS affine derived from the LPS placement below, sform and qform code 1. The stored
values are the source's integers, unchanged; the NIfTI intercept ``scl_inter = -1024`` makes
every NIfTI reader return Hounsfield units (``HU = stored - 1024``).

Placement (LPS millimetres: x to the patient's left, y posterior, z superior), from the images,
because neither source states its orientation:

- cthead: columns run toward the patient's left (assumed: the radiological convention; a head
  is too symmetric to tell left from right), rows toward posterior (the face is at row 0),
  slices toward inferior (slice 1 is the vertex). Spacing 1 x 1 x 2 mm is an assumption: the
  source gives only the voxel shape 1:1:2; a 256-pixel field of 256 mm and a 226-mm stack fit
  an adult head. No position is given either: the grid is centred on the origin.
- headsq: the file's direction is the identity and its ``AnatomicalOrientation`` is ``???``.
  The images show the face toward increasing rows and the skull base toward slice 0: columns
  run toward the left (assumed, as above), rows toward anterior, slices toward inferior.
  Spacing 3.2 x 3.2 x 1.5 mm from the file. Voxel (0, 0, 0) stays at the file's ``Offset``
  (0, 0, 0) mm, so the volume sits off-centre, as real CTs do in scanner coordinates.

Outputs, per data set in ``--out`` (default ``tomoprior/data/real_ct``): ``<name>.nii.gz`` and
``provenance.yaml`` (source, sha256 of input and output, date, tool, assumptions). The licence
files are copied beside them.

Usage::

    pip install SimpleITK            # only this tool needs it; the library reads the NIfTI with nibabel
    PYTHONPATH=. python tools/make_real_cts.py --cthead DIR --headsq DIR [--out tomoprior/data/real_ct]

``DIR`` holds the source files named above.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import shutil
import tempfile
from pathlib import Path

import numpy as np

from tomoprior._atomic import atomic_path, write_bytes_atomic, write_text_atomic

#: Stored value = HU + 1024 in both data sets (soft tissue near 1024-1080, air near 0-25).
HU_OFFSET = 1024
CTHEAD_SHAPE_ZYX = (113, 256, 256)
#: Assumed cthead spacing (z, y, x) mm: the source gives only the voxel shape 1:1:2.
CTHEAD_SPACING_ZYX = (2.0, 1.0, 1.0)
RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_cthead(raw_gz: Path):
    """The cthead stream through SimpleITK: decompress, describe it with a MetaImage header."""
    import SimpleITK

    expected = int(np.prod(CTHEAD_SHAPE_ZYX)) * 2
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "cthead.raw"
        with gzip.open(raw_gz, "rb") as src, open(raw, "wb") as dst:
            shutil.copyfileobj(src, dst)
        if raw.stat().st_size != expected:
            raise SystemExit(f"{raw_gz}: {raw.stat().st_size} bytes after decompression, expected {expected} "
                             f"(int16 x {CTHEAD_SHAPE_ZYX})")
        nz, ny, nx = CTHEAD_SHAPE_ZYX
        sz, sy, sx = CTHEAD_SPACING_ZYX
        header = Path(tmp) / "cthead.mhd"
        header.write_text(
            "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = True\n"
            f"DimSize = {nx} {ny} {nz}\nElementSpacing = {sx} {sy} {sz}\nElementType = MET_SHORT\n"
            "ElementDataFile = cthead.raw\n"
        )
        image = SimpleITK.ReadImage(str(header))
        array = SimpleITK.GetArrayFromImage(image)  # (z, y, x)
    if array.shape != CTHEAD_SHAPE_ZYX or array.dtype != np.int16:
        raise SystemExit(f"{raw_gz}: read {array.shape} {array.dtype}, expected {CTHEAD_SHAPE_ZYX} int16")
    # index (i, j, k) -> LPS: i toward +x (left), j toward +y (posterior), k toward -z (inferior)
    lps = np.diag([CTHEAD_SPACING_ZYX[2], CTHEAD_SPACING_ZYX[1], -CTHEAD_SPACING_ZYX[0], 1.0])
    centre_index = (np.array([nx, ny, nz], dtype=np.float64) - 1) / 2
    lps[:3, 3] = -lps[:3, :3] @ centre_index  # grid centre at the origin
    return array, lps


def read_headsq(mha: Path):
    import SimpleITK

    image = SimpleITK.ReadImage(str(mha))
    array = SimpleITK.GetArrayFromImage(image)  # (z, y, x)
    if array.ndim != 3 or array.dtype != np.uint16:
        raise SystemExit(f"{mha}: expected a 3D uint16 image, got {array.shape} {array.dtype}")
    if not np.allclose(image.GetDirection(), np.eye(3).ravel()):
        raise SystemExit(f"{mha}: direction {image.GetDirection()} is not the identity this tool was written for")
    sx, sy, sz = image.GetSpacing()
    # from the anatomy (see the module docstring): i -> left, j -> anterior (-y), k -> inferior (-z)
    lps = np.diag([sx, -sy, -sz, 1.0])
    lps[:3, 3] = image.GetOrigin()
    return array, lps


def write_nifti(array_zyx: np.ndarray, lps: np.ndarray, path: Path, description: str) -> None:
    import nibabel as nib

    ras = RAS_FROM_LPS @ lps
    img = nib.Nifti1Image(np.ascontiguousarray(array_zyx.transpose(2, 1, 0)), ras)  # nibabel order (i, j, k)
    img.set_sform(ras, code=1)
    img.set_qform(ras, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(1.0, -float(HU_OFFSET))
    img.header["descrip"] = description[:79].encode("ascii")
    with atomic_path(path, suffix=".nii.gz") as tmp:
        nib.save(img, str(tmp))


def provenance_yaml(name: str, fields: dict) -> str:
    import yaml

    return "# written by tools/make_real_cts.py; do not edit by hand\n" + yaml.safe_dump(
        {"name": name, **fields}, sort_keys=False, width=100, default_flow_style=None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cthead", type=Path, required=True, help="folder with CThead_int16be_113x256x256.raw.gz, "
                        "Announcement.txt, CThead.info")
    parser.add_argument("--headsq", type=Path, required=True, help="folder with head.mha and Copyright.txt")
    parser.add_argument("--out", type=Path, default=Path("tomoprior/data/real_ct"))
    args = parser.parse_args(argv)
    import SimpleITK

    today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    common = {"tool": "tools/make_real_cts.py", "date": today,
              "reader": f"SimpleITK {SimpleITK.Version.VersionString()}",
              "stored": "source integers unchanged; NIfTI scl_slope 1, scl_inter -1024, so readers return HU",
              "hu_offset": -HU_OFFSET}
    jobs = [
        ("cthead", args.cthead / "CThead_int16be_113x256x256.raw.gz", read_cthead, ["Announcement.txt", "CThead.info"],
         {"source": "Chapel Hill Volume Rendering Test Data Set, Volume II: CT of a cadaver head, GE CT scanner, "
                    "North Carolina Memorial Hospital",
          "copies": "slices: yangrc1234/UnityIsoSurfaceVolumeRenderer c7481a81; Announcement.txt and CThead.info: "
                    "FreddyFunk/Volume-Data-Archive 476a15f7",
          "spacing_mm_zyx": list(CTHEAD_SPACING_ZYX),
          "spacing_note": "assumed: the source gives only the voxel shape x:y:z = 1:1:2",
          "orientation": "columns -> left (assumed), rows -> posterior, slices -> inferior (from the images)",
          "position": "not given by the source: grid centred on the origin"}),
        ("headsq", args.headsq / "head.mha", read_headsq, ["Copyright.txt"],
         {"source": "VTK headsq CT (neck, jaw, skull base), VTKData Data/headsq, BSD-3-Clause",
          "copies": "TomographicImaging/CIL-Data head.mha 5affe9b1",
          "spacing_mm_zyx": [1.5, 3.2, 3.2],
          "spacing_note": "from the file (ElementSpacing 3.2 3.2 1.5)",
          "orientation": "columns -> left (assumed), rows -> anterior, slices -> inferior (from the images; the "
                         "file says ???)",
          "position": "voxel (0, 0, 0) at the file's Offset (0, 0, 0) mm: off-centre"}),
    ]
    for name, source, reader, licences, fields in jobs:
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        array, lps = reader(source)
        out = folder / f"{name}.nii.gz"
        write_nifti(array, lps, out, f"tomoprior {name}: HU = stored - 1024; see provenance.yaml")
        for lic in licences:
            write_bytes_atomic(folder / lic, (source.parent / lic).read_bytes())
        doc = {**fields, **common, "input": source.name, "input_sha256": sha256(source),
               "output": out.name, "output_sha256": sha256(out), "shape_zyx": list(array.shape),
               "dtype": str(array.dtype), "stored_range": [int(array.min()), int(array.max())],
               "index_to_lps": np.round(lps, 6).tolist()}
        write_text_atomic(folder / "provenance.yaml", provenance_yaml(name, doc))
        print(f"{out}: {out.stat().st_size / 1e6:.2f} MB, shape {array.shape}, {array.dtype}, "
              f"values {array.min()}..{array.max()}")


if __name__ == "__main__":
    main()

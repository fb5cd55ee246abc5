"""Reading radiographs for calibration: PNG/TIFF (8/16-bit), NumPy ``.npy`` and DICOM.

DICOM radiographs (DX, CR, XA, RF) carry the acquisition geometry; :func:`dicom_view_parameters`
turns the standard attributes into an initial :class:`~tomoprior.geometry.ViewParameters`:

============================  ===========  =====================================
attribute                     tag          becomes
============================  ===========  =====================================
Distance Source to Detector   (0018,1110)  ``source_to_detector`` (mm)
Distance Source to Patient    (0018,1111)  ``source_to_isocenter`` (mm) [#]_
Imager Pixel Spacing          (0018,1164)  ``pixel_pitch`` (row, col) (mm)
Positioner Primary Angle      (0018,1510)  ``primary_angle`` (deg in the file)
Positioner Secondary Angle    (0018,1511)  ``secondary_angle`` (deg in the file)
Rows, Columns                 (0028,0010/0011)  ``detector_shape``
============================  ===========  =====================================

.. [#] The standard defines it to the patient surface; angiography systems write the
   distance to the isocenter there. It is only a starting point: calibration fits it.

Missing attributes fall back to the nominal value (a warning lists them).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..geometry.parameters import ViewParameters

__all__ = ["IMAGE_SUFFIXES", "Radiograph", "dicom_view_parameters", "read_radiograph"]

#: File suffixes understood by :func:`read_radiograph` (case-insensitive).
IMAGE_SUFFIXES = (".npy", ".png", ".tif", ".tiff", ".dcm", ".dicom")

_DICOM_FIELDS = {
    "DistanceSourceToDetector": "(0018,1110)",
    "DistanceSourceToPatient": "(0018,1111)",
    "ImagerPixelSpacing": "(0018,1164)",
    "PositionerPrimaryAngle": "(0018,1510)",
    "PositionerSecondaryAngle": "(0018,1511)",
}


@dataclass
class Radiograph:
    """One radiograph read from a file.

    Attributes
    ----------
    image : ndarray ``(rows, cols)``, float64
        Pixel values as stored (raw counts or detector units; higher = more X-rays, after
        undoing DICOM MONOCHROME1 inversion).
    path : str
    parameters : ViewParameters or None
        Initial view parameters from DICOM attributes (None for other formats).
    missing_tags : list of str
        DICOM attributes that were absent (nominal values used instead).
    """

    image: np.ndarray
    path: str
    parameters: ViewParameters | None = None
    missing_tags: tuple = ()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape)


def _check_pixels(img: np.ndarray, path: str) -> np.ndarray:
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        # colour PNG of a grey radiograph: channels must agree, else refuse
        if not np.allclose(img[..., 0], img[..., 1]) or not np.allclose(img[..., 0], img[..., 2]):
            raise ValueError(f"{path}: a colour image ({img.shape}); give a single-channel (grey) radiograph")
        img = img[..., 0]
    if img.ndim != 2:
        raise ValueError(f"{path}: a radiograph must be a 2D (rows, cols) image, got shape {img.shape}")
    if min(img.shape) < 8:
        raise ValueError(f"{path}: image of shape {img.shape} is too small to hold calibration beads")
    if not np.issubdtype(img.dtype, np.number) or np.issubdtype(img.dtype, np.complexfloating):
        raise ValueError(f"{path}: pixel type {img.dtype} is not a real number type")
    img = img.astype(np.float64)
    bad = ~np.isfinite(img)
    if bad.any():
        rr, cc = np.nonzero(bad)
        raise ValueError(
            f"{path}: {int(bad.sum())} non-finite (NaN/inf) pixel(s), e.g. at (row, col) "
            f"{[(int(r), int(c)) for r, c in zip(rr[:5], cc[:5])]}; fix or mask them (e.g. replace by the "
            "median of their neighbours) before calibration"
        )
    if float(img.max()) == float(img.min()):
        raise ValueError(f"{path}: the image is constant ({float(img.min())}); it cannot show beads")
    return img


def read_radiograph(path, *, name: str | None = None) -> Radiograph:
    """Read one radiograph.

    Parameters
    ----------
    path : str or Path
        ``.npy`` (2D array), ``.png`` / ``.tif`` / ``.tiff`` (8- or 16-bit grey, or float
        TIFF), ``.dcm`` / ``.dicom`` or any file that pydicom can read.
    name : str, optional
        View name given to the DICOM-derived parameters.

    Returns
    -------
    Radiograph

    Raises
    ------
    ValueError
        Missing or unreadable file, unknown format, not 2D, too small, constant, or
        non-finite pixels (the message gives how many and where).
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"image file {p} does not exist")
    if p.is_dir():
        raise ValueError(f"{p} is a folder; give an image file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            img = np.load(p, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            img = tifffile.imread(p)
        elif suffix == ".png":
            from PIL import Image

            with Image.open(p) as im:
                img = np.asarray(im)
        elif suffix in (".dcm", ".dicom") or _looks_like_dicom(p):
            return _read_dicom(p, name)
        else:
            raise ValueError(f"{p}: unknown image format {suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    except ValueError as exc:
        if str(p) in str(exc):
            raise
        raise ValueError(f"{p}: cannot read the image ({exc})") from exc
    except Exception as exc:  # readers raise many types for corrupt files
        raise ValueError(f"{p}: cannot read the image ({type(exc).__name__}: {exc})") from exc
    return Radiograph(_check_pixels(np.asarray(img), str(p)), str(p))


def _looks_like_dicom(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom(p: Path, name: str | None) -> Radiograph:
    import pydicom

    try:
        ds = pydicom.dcmread(p)
        img = ds.pixel_array
    except Exception as exc:
        raise ValueError(f"{p}: cannot read the DICOM pixel data ({type(exc).__name__}: {exc})") from exc
    img = _check_pixels(np.asarray(img), str(p))
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    img = img * slope + intercept
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        img = img.max() + img.min() - img  # MONOCHROME1: high values are dark; make high = bright
    params, missing = dicom_view_parameters(ds, name=name or p.stem, shape=img.shape)
    return Radiograph(img, str(p), params, tuple(missing))


def _ds_number(ds, keyword: str, where: str):
    val = getattr(ds, keyword, None)
    if val is None or val == "":
        return None
    try:
        if keyword == "ImagerPixelSpacing":
            vals = [float(x) for x in val]
            if len(vals) != 2:
                raise ValueError
            out = tuple(vals)
            ok = all(math.isfinite(x) and x > 0 for x in out)
        else:
            out = float(val)
            ok = math.isfinite(out)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: DICOM {keyword} {_DICOM_FIELDS[keyword]} is not a valid number: {val!r}") from exc
    if not ok:
        raise ValueError(f"{where}: DICOM {keyword} {_DICOM_FIELDS[keyword]} has an invalid value {val!r}")
    return out


def dicom_view_parameters(ds, *, name: str = "view", shape=None, nominal: ViewParameters | None = None):
    """Initial view parameters from a DICOM dataset's geometry attributes.

    Parameters
    ----------
    ds : pydicom.Dataset
    name : str
        View name.
    shape : (rows, cols), optional
        Detector shape; default the dataset's Rows/Columns.
    nominal : ViewParameters, optional
        Values for missing attributes (default: ``ViewParameters()`` defaults).

    Returns
    -------
    (ViewParameters, list of str)
        The parameters and the keywords of the attributes that were missing.

    Examples
    --------
    >>> from pydicom.dataset import Dataset
    >>> ds = Dataset(); ds.Rows, ds.Columns = 512, 640
    >>> ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = 1450.0, 980.0
    >>> ds.ImagerPixelSpacing = [0.15, 0.16]; ds.PositionerPrimaryAngle = 90.0; ds.PositionerSecondaryAngle = 0.0
    >>> p, missing = dicom_view_parameters(ds, name="lateral")
    >>> p.source_to_detector, p.pixel_pitch, p.detector_shape, round(math.degrees(p.primary_angle), 6), missing
    (1450.0, (0.15, 0.16), (512, 640), 90.0, [])
    """
    nominal = nominal or ViewParameters(name=name)
    where = f"DICOM view {name!r}"
    vals = {k: _ds_number(ds, k, where) for k in _DICOM_FIELDS}
    missing = [k for k, v in vals.items() if v is None]
    if shape is None:
        rows, cols = getattr(ds, "Rows", None), getattr(ds, "Columns", None)
        shape = (int(rows), int(cols)) if rows and cols else nominal.detector_shape
    changes = {"name": name, "detector_shape": tuple(int(x) for x in shape)}
    if vals["DistanceSourceToDetector"] is not None:
        changes["source_to_detector"] = vals["DistanceSourceToDetector"]
    if vals["DistanceSourceToPatient"] is not None:
        changes["source_to_isocenter"] = vals["DistanceSourceToPatient"]
    if vals["ImagerPixelSpacing"] is not None:
        changes["pixel_pitch"] = vals["ImagerPixelSpacing"]
    if vals["PositionerPrimaryAngle"] is not None:
        changes["primary_angle"] = math.radians(vals["PositionerPrimaryAngle"])
    if vals["PositionerSecondaryAngle"] is not None:
        changes["secondary_angle"] = math.radians(vals["PositionerSecondaryAngle"])
    sod = changes.get("source_to_isocenter", nominal.source_to_isocenter)
    sdd = changes.get("source_to_detector", nominal.source_to_detector)
    if float(sod) >= float(sdd):
        raise ValueError(
            f"{where}: source-to-patient {float(sod)} mm is not smaller than source-to-detector {float(sdd)} mm; "
            "check DistanceSourceToPatient (0018,1111) and DistanceSourceToDetector (0018,1110)"
        )
    if missing:
        warnings.warn(
            f"{where}: DICOM attribute(s) {', '.join(f'{k} {_DICOM_FIELDS[k]}' for k in missing)} missing; "
            "using nominal values as the starting point", UserWarning, stacklevel=2,
        )
    return nominal.replace(**changes), missing

"""Reading radiographs for calibration: PNG/TIFF (8/16-bit), NumPy ``.npy`` and DICOM.

DICOM radiographs carry the acquisition geometry; :func:`dicom_geometry` turns the standard
attributes into a starting :class:`~tomoprior.geometry.ViewParameters` and records which
attributes it used. Each attribute is read as its IOD defines it:

============================  ===========  ==============================================
attribute                     tag          becomes
============================  ===========  ==============================================
Distance Source to Detector   (0018,1110)  ``source_to_detector`` (mm), every modality
Distance Source to Isocenter  (0018,9402)  ``source_to_isocenter`` (mm) where present
Distance Source to Patient    (0018,1111)  ``source_to_isocenter`` only for XA and RF, whose
                                           IODs define it as the distance to the isocenter.
                                           In DX, CR, MG, IO it is the distance to the patient
                                           support or entrance surface: NOT used
Estimated Radiographic        (0018,1114)  DX/CR: ``source_to_isocenter = source_to_detector /
Magnification Factor                       factor`` (the magnification at the object)
Imager Pixel Spacing          (0018,1164)  ``pixel_pitch`` (row, col) at the detector (mm)
Positioner Primary Angle      (0018,1510)  ``primary_angle`` (deg in the file)
Positioner Secondary Angle    (0018,1511)  ``secondary_angle`` (deg in the file)
Rows, Columns                 (0028,0010/0011)  ``detector_shape``
============================  ===========  ==============================================

Missing attributes fall back to the nominal value; :attr:`Radiograph.missing_tags` lists
them and :attr:`Radiograph.tags_used` says where each starting value came from (the QA
report prints both). Missing positioner angles are not guessed by ``tomoprior calibrate``:
it refuses and asks for ``--initial`` or the angle flags. The report's sign-off fields
(site, system, serial number, operator, acquisition date, kVp) are read from the usual
attributes where present (:data:`SIGNOFF_TAGS`).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..geometry.parameters import ViewParameters

__all__ = ["IMAGE_SUFFIXES", "SIGNOFF_TAGS", "Radiograph", "dicom_geometry", "dicom_view_parameters", "file_sha256",
           "read_radiograph"]

#: File suffixes understood by :func:`read_radiograph` (case-insensitive).
IMAGE_SUFFIXES = (".npy", ".png", ".tif", ".tiff", ".dcm", ".dicom")

_DICOM_FIELDS = {
    "DistanceSourceToDetector": "(0018,1110)",
    "DistanceSourceToPatient": "(0018,1111)",
    "ImagerPixelSpacing": "(0018,1164)",
    "PositionerPrimaryAngle": "(0018,1510)",
    "PositionerSecondaryAngle": "(0018,1511)",
}
#: Optional geometry attributes (read when present, never reported missing).
_OPTIONAL_FIELDS = {
    "DistanceSourceToIsocenter": "(0018,9402)",
    "EstimatedRadiographicMagnificationFactor": "(0018,1114)",
}
#: Modalities whose IOD defines Distance Source to Patient as the distance to the isocenter.
ISOCENTRIC_MODALITIES = ("XA", "RF")

#: Report sign-off field -> DICOM keywords tried in order (tag in the comment).
SIGNOFF_TAGS = {
    "site": ("InstitutionName",),  # (0008,0080)
    "system": ("ManufacturerModelName", "StationName"),  # (0008,1090), (0008,1010)
    "manufacturer": ("Manufacturer",),  # (0008,0070)
    "serial": ("DeviceSerialNumber",),  # (0018,1000)
    "operator": ("OperatorsName",),  # (0008,1070)
    "acquisition_date": ("AcquisitionDate", "ContentDate", "StudyDate"),  # (0008,0022/0023/0020)
    "kvp": ("KVP",),  # (0018,0060)
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
    missing_tags : tuple of str
        DICOM attributes that were absent (nominal values used instead).
    modality : str or None
        DICOM Modality (0008,0060), e.g. ``"DX"``, ``"XA"``.
    tags_used : tuple of str
        One line per starting parameter: its value and the attribute (or default) it came from.
    signoff : dict
        Sign-off fields found in the DICOM header (keys of :data:`SIGNOFF_TAGS`).
    sha256 : str
        SHA-256 of the file (hex), for the report's record of its inputs.
    """

    image: np.ndarray
    path: str
    parameters: ViewParameters | None = None
    missing_tags: tuple = ()
    modality: str | None = None
    tags_used: tuple = ()
    signoff: dict = field(default_factory=dict)
    sha256: str = ""

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
    return Radiograph(_check_pixels(np.asarray(img), str(p)), str(p), sha256=file_sha256(p))


def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's bytes; ``""`` if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return ""
    return h.hexdigest()


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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing attributes are reported below, by file name
        geo = dicom_geometry(ds, name=name or p.stem, shape=img.shape)
    if geo["missing"]:
        warnings.warn(
            f"{p}: DICOM attribute(s) {', '.join(f'{k} {_DICOM_FIELDS[k]}' for k in geo['missing'])} missing; "
            "using nominal values as the starting point", UserWarning, stacklevel=2,
        )
    return Radiograph(img, str(p), geo["parameters"], tuple(geo["missing"]), geo["modality"], tuple(geo["used"]),
                      geo["signoff"], file_sha256(p))


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
        raise ValueError(f"{where}: DICOM {keyword} {_tag(keyword)} is not a valid number: {str(val)[:60]!r}") from exc
    if not ok:
        raise ValueError(f"{where}: DICOM {keyword} {_tag(keyword)} has an invalid value {str(val)[:60]!r}")
    if keyword.startswith("Distance") and out <= 0:
        raise ValueError(f"{where}: DICOM {keyword} {_tag(keyword)} is {out:g} mm; a source distance must be > 0 mm "
                         "(fix or remove the attribute to use the nominal value)")
    return out


def _tag(keyword: str) -> str:
    return _DICOM_FIELDS.get(keyword) or _OPTIONAL_FIELDS.get(keyword, "")


def _text(ds, keyword: str) -> str | None:
    val = getattr(ds, keyword, None)
    if val is None or str(val).strip() == "":
        return None
    return str(val).strip()[:120]


def dicom_geometry(ds, *, name: str = "view", shape=None, nominal: ViewParameters | None = None) -> dict:
    """Starting view parameters from a DICOM dataset, read per its modality, and their provenance.

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
    dict
        ``parameters`` (ViewParameters), ``missing`` (list of attribute keywords that were
        absent), ``used`` (list of str: each starting value and its source), ``modality``
        (str or None) and ``signoff`` (dict of the fields of :data:`SIGNOFF_TAGS` found).

    Raises
    ------
    ValueError
        An attribute that is not a valid number, or a source-to-isocenter distance that is
        not smaller than the source-to-detector distance.
    """
    nominal = nominal or ViewParameters(name=name)
    where = f"DICOM view {name!r}"
    modality = _text(ds, "Modality")
    modality = modality.upper() if modality else None
    vals = {k: _ds_number(ds, k, where) for k in (*_DICOM_FIELDS, *_OPTIONAL_FIELDS)}
    missing = [k for k in _DICOM_FIELDS if vals[k] is None]
    used = []
    if shape is None:
        rows, cols = getattr(ds, "Rows", None), getattr(ds, "Columns", None)
        shape = (int(rows), int(cols)) if rows and cols else nominal.detector_shape
    changes = {"name": name, "detector_shape": tuple(int(x) for x in shape)}
    used.append(f"detector_shape {changes['detector_shape'][0]} x {changes['detector_shape'][1]}: Rows, Columns "
                "(0028,0010/0011)")
    sdd = vals["DistanceSourceToDetector"]
    if sdd is not None:
        changes["source_to_detector"] = sdd
        used.append(f"source_to_detector {sdd:g} mm: DistanceSourceToDetector (0018,1110)")
    else:
        used.append(f"source_to_detector {float(nominal.source_to_detector):g} mm: nominal (attribute missing)")
    sdd_now = float(changes.get("source_to_detector", nominal.source_to_detector))
    dsp = vals["DistanceSourceToPatient"]
    if vals["DistanceSourceToIsocenter"] is not None:
        changes["source_to_isocenter"] = vals["DistanceSourceToIsocenter"]
        used.append(f"source_to_isocenter {vals['DistanceSourceToIsocenter']:g} mm: DistanceSourceToIsocenter "
                    "(0018,9402)")
    elif dsp is not None and modality in ISOCENTRIC_MODALITIES:
        changes["source_to_isocenter"] = dsp
        used.append(f"source_to_isocenter {dsp:g} mm: DistanceSourceToPatient (0018,1111), the isocenter "
                    f"distance in {modality}")
    elif vals["EstimatedRadiographicMagnificationFactor"] is not None and \
            vals["EstimatedRadiographicMagnificationFactor"] > 1.0:
        emf = vals["EstimatedRadiographicMagnificationFactor"]
        changes["source_to_isocenter"] = sdd_now / emf
        used.append(f"source_to_isocenter {sdd_now / emf:.1f} mm: source_to_detector / "
                    f"EstimatedRadiographicMagnificationFactor (0018,1114) = {emf:g}")
    else:
        why = ("DistanceSourceToPatient (0018,1111) is the distance to the patient support or surface in "
               f"{modality or 'this modality'}, not to the isocenter") if dsp is not None else "no attribute gives it"
        used.append(f"source_to_isocenter {float(nominal.source_to_isocenter):g} mm: nominal ({why})")
    if vals["ImagerPixelSpacing"] is not None:
        changes["pixel_pitch"] = vals["ImagerPixelSpacing"]
        used.append(f"pixel_pitch {vals['ImagerPixelSpacing'][0]:g} x {vals['ImagerPixelSpacing'][1]:g} mm: "
                    "ImagerPixelSpacing (0018,1164)")
    else:
        used.append("pixel_pitch: nominal (ImagerPixelSpacing (0018,1164) missing)")
    for key, fld in (("PositionerPrimaryAngle", "primary_angle"), ("PositionerSecondaryAngle", "secondary_angle")):
        if vals[key] is not None:
            changes[fld] = math.radians(vals[key])
            used.append(f"{fld} {vals[key]:g} deg: {key} {_DICOM_FIELDS[key]}")
        else:
            used.append(f"{fld}: MISSING ({key} {_DICOM_FIELDS[key]} absent)")
    sod = changes.get("source_to_isocenter", nominal.source_to_isocenter)
    if float(sod) >= sdd_now:
        raise ValueError(
            f"{where}: source-to-isocenter {float(sod):g} mm is not smaller than source-to-detector {sdd_now:g} mm; "
            "check DistanceSourceToPatient (0018,1111) / DistanceSourceToIsocenter (0018,9402) and "
            "DistanceSourceToDetector (0018,1110)"
        )
    signoff = {}
    for fld, keywords in SIGNOFF_TAGS.items():
        for kw in keywords:
            t = _text(ds, kw)
            if t is not None:
                signoff[fld] = t
                break
    if missing:
        warnings.warn(
            f"{where}: DICOM attribute(s) {', '.join(f'{k} {_DICOM_FIELDS[k]}' for k in missing)} missing; "
            "using nominal values as the starting point", UserWarning, stacklevel=2,
        )
    return {"parameters": nominal.replace(**changes), "missing": missing, "used": used, "modality": modality,
            "signoff": signoff}


def dicom_view_parameters(ds, *, name: str = "view", shape=None, nominal: ViewParameters | None = None):
    """Initial view parameters from a DICOM dataset's geometry attributes.

    The short form of :func:`dicom_geometry`: ``(ViewParameters, list of missing keywords)``.

    Examples
    --------
    >>> from pydicom.dataset import Dataset
    >>> ds = Dataset(); ds.Rows, ds.Columns = 512, 640; ds.Modality = "XA"
    >>> ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = 1450.0, 980.0
    >>> ds.ImagerPixelSpacing = [0.15, 0.16]; ds.PositionerPrimaryAngle = 90.0; ds.PositionerSecondaryAngle = 0.0
    >>> p, missing = dicom_view_parameters(ds, name="lateral")
    >>> p.source_to_detector, p.source_to_isocenter, p.pixel_pitch, p.detector_shape, missing
    (1450.0, 980.0, (0.15, 0.16), (512, 640), [])
    """
    geo = dicom_geometry(ds, name=name, shape=shape, nominal=nominal)
    return geo["parameters"], geo["missing"]

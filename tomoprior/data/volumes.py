"""Volumes on a :class:`~tomoprior.geometry.VolumeGrid`: from arrays, NIfTI files and DICOM CT
series, with Hounsfield units converted to linear attenuation.

Every reader returns a :class:`Volume` whose array is ``(nz, ny, nx)`` in the LPS world frame
with positive spacings, i.e. axis-aligned with :class:`~tomoprior.geometry.VolumeGrid` (voxel
``(k, j, i)`` at ``center + ((i - (nx-1)/2) sx, (j - (ny-1)/2) sy, (k - (nz-1)/2) sz)``). Files whose
voxel axes are not aligned with the patient axes (oblique acquisitions) are rejected by
default (``oblique="error"``); ``oblique="snap"`` keeps the voxels, assigns each array axis to
the nearest patient axis and warns with the angle that was ignored. Resample an oblique
volume first (e.g. ``nibabel.processing.resample_from_to``) when the angle matters.

HU -> linear attenuation at an effective energy ``E``::

    mu = mu_water(E) * (1 + HU / 1000)          (clipped at 0 below air, HU < -1000)

with ``mu_water(E)`` the NIST total attenuation of liquid water (density 1.0 g/cm^3,
coherent scattering included) from the shipped table of :mod:`tomoprior.units`, where
``hu_to_mu``, ``mu_to_hu`` and ``mu_water`` live (re-exported by :mod:`tomoprior.data`).
This is the usual effective-energy approximation: it treats every tissue as water of a
different density, so bone is somewhat under-attenuating at low energies; state the energy
with every result.

Stored values that are not HU: CTs kept as unsigned integers store ``HU + 1024`` and need
their rescale intercept; files that lost it have no value below 0 (air, near -1000 HU, is
stored near 0) and soft tissue near 1024. With ``hu_offset="auto"`` (the default) the readers
recognise that (:func:`detect_hu_offset`), subtract 1024 and warn saying so; pass the offset
to be explicit (``hu_offset=-1024``, or ``0`` for values that already are HU). A CT in HU
without a single bone-valued voxel (above the bone threshold of :mod:`tomoprior.units`) is
read but warned about: it is not a head, or its values are not HU.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..geometry import VolumeGrid
from ..units import BONE_THRESHOLD_MU, DEFAULT_ENERGY_KEV, hu_to_mu, mu_to_hu, mu_water

#: Spacings outside this range (mm) are almost certainly wrong metadata (e.g. metres or um).
PLAUSIBLE_SPACING_MM = (0.01, 20.0)
#: Tolerance on the cosine between a voxel axis and a patient axis to call it aligned.
_ALIGNED_COS = 1.0 - 1e-4
#: Offset of the usual unsigned CT storage: stored value = HU + 1024 (DICOM rescale intercept -1024).
STORED_HU_OFFSET = -1024.0
#: Stored values with the 1024 offset: soft tissue (about -100..+176 HU) falls in this range.
_OFFSET_TISSUE_RANGE = (900.0, 1200.0)
#: Fraction of voxels in that range above which offset storage is assumed (a head CT has 15-30%).
_OFFSET_TISSUE_FRACTION = 0.05


class VolumeWarning(UserWarning):
    """A volume that was read but whose metadata looks suspicious."""


@dataclass
class Volume:
    """A scalar volume on a grid.

    Attributes
    ----------
    data : Tensor, shape ``(nz, ny, nx)``, float32
        Values in ``units``.
    grid : VolumeGrid
        Where the voxels are (LPS, mm).
    units : str
        ``"mu_per_mm"`` (linear attenuation, what the projectors expect) or ``"HU"``.
    metadata : dict
        Where the volume came from (file, orientation code, energy, ...).
    """

    data: torch.Tensor
    grid: VolumeGrid
    units: str = "mu_per_mm"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.data = check_volume(self.data, self.grid)
        if self.units not in ("mu_per_mm", "HU"):
            raise ValueError(f"units must be 'mu_per_mm' or 'HU', got {self.units!r}")

    def to_mu(self, energy_kev: float = DEFAULT_ENERGY_KEV) -> Volume:
        """The volume as linear attenuation per mm (HU converted at ``energy_kev``)."""
        if self.units == "mu_per_mm":
            return self
        meta = dict(self.metadata, energy_kev=float(energy_kev), mu_water_per_mm=mu_water(energy_kev))
        return Volume(hu_to_mu(self.data, energy_kev).to(torch.float32), self.grid, "mu_per_mm", meta)

    def resampled(self, grid: VolumeGrid, *, supersample: int | None = None, fill: float | None = None) -> Volume:
        """The volume on another grid (e.g. a real CT on a refiner's reconstruction grid).

        Each target voxel is the mean of ``supersample^3`` trilinear samples spread evenly
        over it (a box filter: going to coarser voxels averages instead of aliasing). Points
        outside this volume's box take ``fill``.

        Parameters
        ----------
        grid : VolumeGrid
            The target grid (LPS mm); any shape, spacing and centre.
        supersample : int, optional
            Samples per target voxel and axis; default: enough to cover this volume's finest
            voxels (``ceil(target spacing / source spacing)``, at least 1, at most 8).
        fill : float, optional
            Value outside the source box; default air: 0 for attenuation, -1000 for HU.

        Returns
        -------
        Volume on ``grid``, same units; ``metadata["resampled_from"]`` records the source grid.
        """
        if not isinstance(grid, VolumeGrid):
            raise TypeError(f"grid must be a tomoprior VolumeGrid, got {type(grid).__name__}")
        if supersample is None:
            ratio = max(t / s for t, s in zip(grid.spacing, self.grid.spacing))
            supersample = int(min(8, max(1, math.ceil(ratio - 1e-9))))
        if isinstance(supersample, bool) or not isinstance(supersample, int) or not 1 <= supersample <= 16:
            raise ValueError(f"supersample must be an integer in [1, 16], got {supersample!r}")
        if fill is None:
            fill = -1000.0 if self.units == "HU" else 0.0
        if not math.isfinite(float(fill)):
            raise ValueError(f"fill must be a finite number, got {fill!r}")
        ss = supersample
        src = (self.data.to(torch.float32) - float(fill))[None, None]  # fill -> 0 so zero padding means fill
        n_src = torch.tensor(self.grid.shape_xyz, dtype=torch.float64)
        offsets = (torch.arange(ss, dtype=torch.float64) + 0.5) / ss - 0.5  # in target voxels
        x, y, z = grid.axis_coordinates()
        acc = torch.zeros(grid.shape, dtype=torch.float32)
        for oz in offsets:  # one slab of sub-samples at a time keeps memory at one target volume
            zz = z + oz * grid.spacing[0]
            for oy in offsets:
                yy = y + oy * grid.spacing[1]
                for ox in offsets:
                    xx = x + ox * grid.spacing[2]
                    pz, py, px = torch.meshgrid(zz, yy, xx, indexing="ij")
                    ijk = self.grid.world_to_index(torch.stack((px, py, pz), dim=-1)).flip(-1)  # (i, j, k)
                    norm = (2 * ijk / (n_src - 1).clamp(min=1) - 1).to(torch.float32)
                    acc += torch.nn.functional.grid_sample(src, norm[None], mode="bilinear", padding_mode="zeros",
                                                           align_corners=True)[0, 0]
        data = acc / ss ** 3 + float(fill)
        meta = dict(self.metadata, resampled_from=self.grid.to_dict(), resample_supersample=ss)
        return Volume(data, grid, self.units, meta)


def check_volume(data, grid: VolumeGrid | None = None, name: str = "volume") -> torch.Tensor:
    """A finite float32 ``(nz, ny, nx)`` tensor matching ``grid`` (if given), or a clear error."""
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(data).__name__}")
    if data.ndim != 3:
        raise ValueError(f"{name} must be 3D (nz, ny, nx), got shape {tuple(data.shape)}")
    if not (data.dtype.is_floating_point or data.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                            torch.uint8)):
        raise TypeError(f"{name} must hold numbers, got {data.dtype}")
    data = data.detach().to(torch.float32)
    bad = ~torch.isfinite(data)
    if bool(bad.any()):
        k = int(bad.sum())
        first = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{name} has {k} non-finite voxel(s) (NaN or inf), the first at index (k, j, i) = {first}; "
                         "replace them (e.g. torch.nan_to_num) before making X-rays")
    if grid is not None:
        if not isinstance(grid, VolumeGrid):
            raise TypeError(f"grid must be a VolumeGrid, got {type(grid).__name__}")
        if tuple(data.shape) != tuple(grid.shape):
            raise ValueError(f"{name} has shape {tuple(data.shape)} but grid.shape is {grid.shape}")
    return data.contiguous()


# -- orientation -------------------------------------------------------------------------

def volume_from_affine(array: np.ndarray, index_to_lps: np.ndarray, *, oblique: str = "error",
                       source: str = "volume") -> tuple[np.ndarray, VolumeGrid, dict]:
    """Reorient an array with an index -> LPS affine onto an axis-aligned :class:`VolumeGrid`.

    Parameters
    ----------
    array : ndarray, 3D
        Indexed ``array[a0, a1, a2]``; column ``m`` of ``index_to_lps[:3, :3]`` is the world step
        (mm, LPS) of array axis ``m``.
    index_to_lps : (4, 4) ndarray
    oblique : {"error", "snap"}
        What to do when an array axis is not parallel to a patient axis.

    Returns
    -------
    data : ndarray ``(nz, ny, nx)``, grid : VolumeGrid, info : dict
        ``info`` holds ``orientation`` (e.g. ``"LPS"``: the direction each original array axis
        points to), ``obliquity_deg`` and the ``permutation``/``flips`` applied.
    """
    a = np.asarray(index_to_lps, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise ValueError(f"{source}: the affine must be a finite 4x4 matrix, got {a.tolist()!r}")
    if array.ndim != 3:
        raise ValueError(f"{source}: expected a 3D volume, got shape {array.shape}")
    m = a[:3, :3]
    steps = np.linalg.norm(m, axis=0)
    if not np.all(steps > 0) or abs(np.linalg.det(m)) < 1e-12 * max(steps.prod(), 1e-300):
        raise ValueError(f"{source}: the affine is singular (a voxel axis has zero length or two axes are "
                         f"parallel): {m.tolist()}; the orientation/spacing metadata is unusable: give the affine "
                         "explicitly (load_nifti(path, affine=...), index -> RAS mm)")
    dirs = m / steps
    world_axis = np.argmax(np.abs(dirs), axis=0)  # for each array axis, its patient axis
    if len(set(world_axis.tolist())) != 3:
        raise ValueError(f"{source}: two voxel axes point along the same patient axis ({dirs.round(3).tolist()}); "
                         "the orientation metadata is inconsistent")
    cosines = np.abs(dirs[world_axis, [0, 1, 2]])
    obliquity = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
    if cosines.min() < _ALIGNED_COS:
        if oblique == "error":
            raise ValueError(
                f"{source}: the voxel axes are oblique to the patient axes by up to {obliquity:.3f} deg; tomoprior "
                "grids are axis-aligned. Resample the volume to an axis-aligned grid first, or pass "
                "oblique='snap' to ignore the rotation (with a warning)"
            )
        if oblique != "snap":
            raise ValueError(f"oblique must be 'error' or 'snap', got {oblique!r}")
        warnings.warn(f"{source}: oblique by {obliquity:.3f} deg; snapped each voxel axis to the nearest patient "
                      "axis (positions are off by up to that angle)", VolumeWarning, stacklevel=3)
    signs = np.sign(dirs[world_axis, [0, 1, 2]])
    letters = np.array([["R", "L"], ["A", "P"], ["I", "S"]])
    orientation = "".join(letters[w, int(s > 0)] for w, s in zip(world_axis, signs))
    # flip axes that run against the patient axis, then order the array axes as (z, y, x)
    flips = [ax for ax in range(3) if signs[ax] < 0]
    data = np.flip(array, axis=flips) if flips else array
    perm = [int(np.where(world_axis == w)[0][0]) for w in (2, 1, 0)]
    data = np.ascontiguousarray(np.transpose(data, perm))
    spacing_zyx = tuple(float(steps[p]) for p in perm)
    _check_spacing(spacing_zyx, source)
    n = np.asarray(array.shape, dtype=np.float64)
    center = a @ np.append((n - 1) / 2, 1.0)
    grid = VolumeGrid(shape=data.shape, spacing=spacing_zyx, center=tuple(center[:3]))
    return data, grid, {"orientation": orientation, "obliquity_deg": obliquity, "permutation": perm, "flips": flips}


def _check_spacing(spacing, source: str) -> None:
    lo, hi = PLAUSIBLE_SPACING_MM
    for s in spacing:
        if not (lo <= s <= hi):
            warnings.warn(f"{source}: voxel spacing {tuple(round(x, 6) for x in spacing)} mm is outside the "
                          f"plausible range [{lo}, {hi}] mm; check the units of the spacing metadata", VolumeWarning,
                          stacklevel=4)
            return


# -- value checks ---------------------------------------------------------------------------

def detect_hu_offset(values) -> tuple[float, str]:
    """The offset to add to stored CT values to get HU, guessed from the values alone.

    A CT in HU has air near -1000. Values with none below 0 and at least 5% of the voxels
    between 900 and 1200 (soft tissue stored as HU + 1024) are unsigned storage whose rescale
    intercept was dropped: the offset is then :data:`STORED_HU_OFFSET` (-1024). Whether the
    scanner used 1000 or 1024 cannot be told from the values (air is noisy); -1024 is the
    DICOM convention.

    Returns
    -------
    offset : float
        ``0.0`` (the values look like HU, or nothing can be said) or ``-1024.0``.
    reason : str
        Why, in words, for messages.
    """
    v = np.asarray(values)
    v = v[np.isfinite(v)]  # non-finite voxels are refused later, with their index
    if v.size == 0:
        return 0.0, "the volume is empty"
    vmin, vmax = float(v.min()), float(v.max())
    if vmin < 0:
        return 0.0, f"the values reach {vmin:.0f} (below 0, as HU do for air)"
    lo, hi = _OFFSET_TISSUE_RANGE
    frac = float(np.count_nonzero((v >= lo) & (v < hi))) / v.size
    if frac >= _OFFSET_TISSUE_FRACTION:
        return STORED_HU_OFFSET, (f"the values run from {vmin:.0f} to {vmax:.0f}, none below 0, and {frac:.0%} of the "
                                  f"voxels lie between {lo:.0f} and {hi:.0f}: that is HU + 1024 storage (air near 0, "
                                  "soft tissue near 1024), not HU (air would be near -1000)")
    return 0.0, f"no value below 0 but only {frac:.1%} of the voxels near 1024: not recognisably offset"


def _apply_hu_offset(hu: np.ndarray, hu_offset, source: str) -> tuple[np.ndarray, float]:
    """Add the stored-value offset (``"auto"``: :func:`detect_hu_offset`, with a warning)."""
    if isinstance(hu_offset, str):
        if hu_offset != "auto":
            raise ValueError(f"hu_offset must be 'auto' or a number of HU to add, got {hu_offset!r}")
        offset, reason = detect_hu_offset(hu)
        if offset != 0.0:
            warnings.warn(f"{source}: {reason}. Assumed HU = stored value {offset:+.0f}; pass hu_offset={offset:.0f} "
                          "to say so (no warning), hu_offset=0 if the values already are HU, or the offset your "
                          "scanner used", VolumeWarning, stacklevel=4)
    else:
        try:
            offset = float(hu_offset)
        except (TypeError, ValueError):
            raise ValueError(f"hu_offset must be 'auto' or a number of HU to add, got {hu_offset!r}") from None
        if not np.isfinite(offset):
            raise ValueError(f"hu_offset must be finite, got {hu_offset!r}")
    return (hu + offset if offset != 0.0 else hu), offset


def _check_head_values(hu: np.ndarray, energy_kev: float, source: str) -> None:
    """Warn when a CT in HU has no bone-valued voxel (not a head, or not HU)."""
    if hu.size == 0 or not np.isfinite(hu).all():  # refused later, with the index of the bad voxel
        return
    bone_hu = float(mu_to_hu(BONE_THRESHOLD_MU, energy_kev))
    top = float(np.max(hu))
    if not top >= bone_hu:
        warnings.warn(f"{source}: no voxel reaches bone (the bone threshold is {bone_hu:.0f} HU at {energy_kev:g} keV, "
                      f"the largest value is {top:.0f} HU): this is not a CT of a head, or its values are not HU. "
                      "Check the file, units= ('HU' or 'mu_per_mm') and hu_offset=", VolumeWarning, stacklevel=4)


# -- NIfTI ---------------------------------------------------------------------------------

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def load_nifti(path, *, units: str = "HU", energy_kev: float = DEFAULT_ENERGY_KEV, affine=None,
               oblique: str = "error", hu_offset: float | str = "auto") -> Volume:
    """Read a 3D NIfTI-1/2 volume (nibabel) onto an LPS :class:`VolumeGrid`.

    NIfTI affines map voxel indices to RAS+ millimetres; this converts them to LPS
    (x -> -x, y -> -y) and reorients the array to ``(nz, ny, nx)``.

    Parameters
    ----------
    path : str or Path
    units : {"HU", "mu_per_mm"}
        What the stored values (after nibabel's scl_slope/scl_inter scaling) are. HU volumes
        are converted to attenuation at ``energy_kev``.
    affine : (4, 4) array, optional
        Index -> RAS affine to use instead of the file's; required when the file has neither
        an sform nor a qform (codes 0), because then its orientation is unknown.
    oblique : {"error", "snap"}
        See the module docstring.
    hu_offset : "auto" or float
        HU added to the stored values (after nibabel's scaling) when ``units="HU"``. ``"auto"``
        recognises HU + 1024 storage, subtracts 1024 and warns (see :func:`detect_hu_offset`).

    Returns
    -------
    Volume in ``mu_per_mm``; ``metadata`` records the file, orientation, energy and the HU
    offset applied.

    Raises
    ------
    ValueError
        No affine (sform and qform codes 0) and none given; a qform-only header with zero
        voxel sizes (the spacing is missing); oblique axes (with ``oblique="error"``); a
        non-3D or unreadable file; non-finite voxels.

    Warns
    -----
    VolumeWarning
        Implausible spacing (metres or micrometres?), values taken as HU + 1024, an HU volume
        without a bone-valued voxel.
    """
    return read_nifti(path, units=units, affine=affine, oblique=oblique, hu_offset=hu_offset,
                      energy_kev=energy_kev).to_mu(energy_kev)


def read_nifti(path, *, units: str = "HU", affine=None, oblique: str = "error", hu_offset: float | str = "auto",
               energy_kev: float = DEFAULT_ENERGY_KEV) -> Volume:
    """:func:`load_nifti` without the conversion: the :class:`Volume` in the file's ``units``
    (HU stay HU; ``energy_kev`` only sets the bone threshold of the head check)."""
    import nibabel as nib

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"NIfTI file {path} does not exist")
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as NIfTI ({exc})") from exc
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {img.shape}")
    if affine is None:
        hdr = img.header
        _, scode = hdr.get_sform(coded=True)
        _, qcode = hdr.get_qform(coded=True)
        if int(scode) == 0 and int(qcode) == 0:
            raise ValueError(
                f"{path}: the header has no usable affine (sform_code and qform_code are both 0), so the "
                "orientation and position are unknown; pass affine=... (index -> RAS mm) explicitly"
            )
        if int(scode) == 0:
            _check_qform_spacing(img, path)
        ras = np.asarray(img.affine, dtype=np.float64)
        where = "the header affine"
    else:
        ras = np.asarray(affine, dtype=np.float64)
        where = "the affine argument"
    try:
        array = np.asarray(img.dataobj, dtype=np.float64).reshape(shape)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read the voxel data ({exc}); is the file truncated?") from exc
    units = _units(units)
    offset = 0.0
    if units == "HU":
        array, offset = _apply_hu_offset(array, hu_offset, str(path))
    elif hu_offset not in ("auto", 0, 0.0):
        raise ValueError(f"hu_offset={hu_offset!r} applies to units='HU' only; {path} is read as {units}")
    data, grid, info = volume_from_affine(array, _RAS_TO_LPS @ ras, oblique=oblique, source=f"{path} ({where})")
    if units == "HU":
        _check_head_values(data, energy_kev, str(path))
    return Volume(torch.from_numpy(data), grid, units, {"source": str(path), "format": "nifti", "hu_offset": offset,
                                                         **info})


def _check_qform_spacing(img, path: Path) -> None:
    """A qform-only header takes its voxel sizes from ``pixdim``, which nibabel silently sets to 1
    where the file has 0: read the file's own values and refuse a missing spacing."""
    try:
        from nibabel.openers import ImageOpener

        holder = img.file_map.get("header") or img.file_map["image"]  # a .hdr/.img pair or one .nii
        with ImageOpener(holder.filename) as f:
            pixdim = type(img.header).from_fileobj(f, check=False)["pixdim"][1:4]
    except Exception:  # an unusual container: keep nibabel's reading
        return
    if not np.all(np.asarray(pixdim, dtype=np.float64) > 0):
        raise ValueError(f"{path}: the voxel spacing is missing (pixdim[1:4] = {[float(x) for x in pixdim]}, the "
                         "header has a qform but no sform); pass affine=... (index -> RAS mm) with the real spacing")


def _units(units: str) -> str:
    if units not in ("HU", "mu_per_mm"):
        raise ValueError(f"units must be 'HU' or 'mu_per_mm', got {units!r}")
    return units


def save_nifti(volume: Volume, path) -> None:
    """Write a :class:`Volume` as NIfTI (RAS affine, sform and qform code 1 'scanner'), atomically."""
    import nibabel as nib

    from .._atomic import atomic_path

    # array (nz, ny, nx) -> nibabel index order (i, j, k) = (x, y, z)
    arr = volume.data.numpy().transpose(2, 1, 0)
    ras = np.linalg.inv(_RAS_TO_LPS) @ volume.grid.affine()
    img = nib.Nifti1Image(arr.astype(np.float32), ras)
    img.set_sform(ras, code=1)
    img.set_qform(ras, code=1)
    suffix = ".nii.gz" if str(path).endswith(".nii.gz") else ".nii"
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, str(tmp))


# -- DICOM ---------------------------------------------------------------------------------

def load_dicom_series(folder, *, series_uid: str | None = None, energy_kev: float = DEFAULT_ENERGY_KEV,
                      oblique: str = "error", spacing_tolerance: float = 0.01,
                      hu_offset: float | str = "auto") -> Volume:
    """Read a DICOM CT series (one folder of single-slice files) onto an LPS grid.

    Slices are sorted by their position along the slice normal (``ImagePositionPatient``
    projected on ``row x column`` of ``ImageOrientationPatient``), checked for uniform spacing
    (relative ``spacing_tolerance``), missing slices, duplicates and a single
    ``SeriesInstanceUID``, and rescaled with ``RescaleSlope``/``RescaleIntercept`` to HU, then
    converted to attenuation at ``energy_kev``.

    Parameters
    ----------
    folder : str or Path
        Folder holding the files (non-DICOM files and DICOM files without pixel data are
        skipped).
    series_uid : str, optional
        Pick one series when the folder holds several.
    hu_offset : "auto" or float
        HU added after the rescale, for series whose ``RescaleIntercept`` was lost (see
        :func:`detect_hu_offset`); ``"auto"`` subtracts 1024 from HU + 1024 values and warns.

    Raises
    ------
    ValueError
        Mixed series (lists them), missing or duplicated slices (names the positions), non-
        uniform spacing, inconsistent orientation or pixel spacing, no slices.
    """
    import pydicom

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass the folder that holds the DICOM series")
    slices = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=False)
        except Exception:  # not DICOM: skip (folders often hold a DICOMDIR or notes)
            continue
        if "PixelData" not in ds:
            continue
        slices.append((f, ds))
    if not slices:
        raise ValueError(f"{folder}: no DICOM image files found")
    uids: dict[str, int] = {}
    for _, ds in slices:
        uids[str(ds.get("SeriesInstanceUID", "?"))] = uids.get(str(ds.get("SeriesInstanceUID", "?")), 0) + 1
    if series_uid is not None:
        slices = [(f, ds) for f, ds in slices if str(ds.get("SeriesInstanceUID", "?")) == series_uid]
        if not slices:
            raise ValueError(f"{folder}: no slice has SeriesInstanceUID {series_uid}; found {sorted(uids)}")
    elif len(uids) > 1:
        listing = ", ".join(f"{u} ({n} files)" for u, n in uids.items())
        raise ValueError(f"{folder}: files of {len(uids)} series are mixed: {listing}; pass series_uid=... to pick one")
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        missing = [f.name for f, ds in slices if tag not in ds]
        if missing:
            raise ValueError(f"{folder}: {len(missing)} file(s) lack {tag} (e.g. {missing[0]}); cannot place the "
                             "slices")
    iop = np.array([float(x) for x in slices[0][1].ImageOrientationPatient])
    for f, ds in slices:
        if not np.allclose([float(x) for x in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise ValueError(f"{folder}: {f.name} has a different ImageOrientationPatient than the other slices")
    row_dir, col_dir = iop[:3], iop[3:]
    norms = (np.linalg.norm(row_dir), np.linalg.norm(col_dir))
    if abs(norms[0] - 1) > 1e-3 or abs(norms[1] - 1) > 1e-3 or abs(row_dir @ col_dir) > 1e-3:
        raise ValueError(f"{folder}: ImageOrientationPatient {iop.tolist()} is not two orthonormal directions")
    normal = np.cross(row_dir, col_dir)
    pixel_spacing = np.array([float(x) for x in slices[0][1].PixelSpacing])  # (row spacing, column spacing)
    shape2d = (int(slices[0][1].Rows), int(slices[0][1].Columns))
    for f, ds in slices:
        same_matrix = (int(ds.Rows), int(ds.Columns)) == shape2d
        if not np.allclose([float(x) for x in ds.PixelSpacing], pixel_spacing) or not same_matrix:
            raise ValueError(f"{folder}: {f.name} has a different PixelSpacing or matrix size than the other slices")
    pos = np.array([[float(x) for x in ds.ImagePositionPatient] for _, ds in slices])
    depth = pos @ normal
    order = np.argsort(depth)
    depth, pos = depth[order], pos[order]
    slices = [slices[i] for i in order]
    if len(slices) < 2:
        raise ValueError(f"{folder}: a series needs at least 2 slices to know the slice spacing, got 1")
    gaps = np.diff(depth)
    dup = np.where(gaps < 1e-3)[0]
    if dup.size:
        raise ValueError(f"{folder}: slices {slices[dup[0]][0].name} and {slices[dup[0] + 1][0].name} are at the same "
                         f"position {depth[dup[0]]:.3f} mm along the slice normal (duplicates)")
    step = float(np.median(gaps))
    if np.any(np.abs(gaps - step) > spacing_tolerance * step):
        ratio = gaps / step
        near_int = np.abs(ratio - np.round(ratio)) < spacing_tolerance * 2
        missing = [(float(depth[i]), round(ratio[i]) - 1) for i in range(len(gaps))
                   if near_int[i] and round(ratio[i]) >= 2]
        if missing:
            text = ", ".join(f"{n} after {d:.3f} mm" for d, n in missing)
            raise ValueError(f"{folder}: slice spacing is {step:.4g} mm but slices are missing ({text} along the "
                             "slice normal); export the complete series")
        raise ValueError(f"{folder}: slice positions are not uniformly spaced (gaps "
                         f"{np.unique(gaps.round(4)).tolist()} mm); resample the series first")
    # in-plane offsets must not drift (a gantry tilt gives a sheared stack)
    inplane = pos - np.outer(depth, normal)
    if np.abs(inplane - inplane[0]).max() > 1e-2 * min(pixel_spacing):
        raise ValueError(f"{folder}: slice origins drift in-plane (gantry tilt or sheared stack); resample the series "
                         "onto a regular grid first")
    stack = []
    for f, ds in slices:
        try:
            px = ds.pixel_array.astype(np.float64)
        except Exception as exc:
            raise ValueError(f"{folder}: cannot decode the pixels of {f.name} ({exc})") from exc
        slope = float(ds.get("RescaleSlope", 1.0))
        intercept = float(ds.get("RescaleIntercept", 0.0))
        stack.append(px * slope + intercept)
    array = np.stack(stack)  # (slice, row, column)
    array, offset = _apply_hu_offset(array, hu_offset, str(folder))
    _check_head_values(array, energy_kev, str(folder))
    affine = np.eye(4)
    affine[:3, 0] = normal * step
    affine[:3, 1] = col_dir * pixel_spacing[0]  # moving down a column = next row
    affine[:3, 2] = row_dir * pixel_spacing[1]  # moving along a row = next column
    affine[:3, 3] = pos[0]
    data, grid, info = volume_from_affine(array, affine, oblique=oblique, source=str(folder))
    meta = {"source": str(folder), "format": "dicom", "series_uid": str(slices[0][1].get("SeriesInstanceUID", "")),
            "num_slices": len(slices), "hu_offset": offset, **info}
    return Volume(torch.from_numpy(data), grid, "HU", meta).to_mu(energy_kev)

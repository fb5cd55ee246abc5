"""Real head CTs shipped with tomoprior: anatomy the library did not make itself.

Two small, openly redistributable CTs ship as package data (``tomoprior/data/real_ct/<name>/``,
each beside its licence or acknowledgement files and a ``provenance.yaml``):

``cthead``
    The "Chapel Hill Volume Rendering Test Data Set, Volume II" CT of an adult cadaver head
    (GE CT scanner, North Carolina Memorial Hospital): 256 x 256 x 113 voxels covering vault,
    face, jaw and upper cervical spine; dental fillings give metal streaks. Redistributed
    with full acknowledgement of the source (``Announcement.txt``, ``CThead.info``). The
    spacing, **1 x 1 x 2 mm (x, y, z), is assumed**: the source states only the voxel shape
    1:1:2 (a 256-mm field fits an adult head). The source gives no position: the grid is
    centred on the origin.
``headsq``
    VTK's "headsq" CT (BSD-3-Clause, ``Copyright.txt``): neck, jaw and skull base, 64 x 64 x
    93 voxels of 3.2 x 3.2 x 1.5 mm, placed where its file puts it, about (101, -101, -69) mm:
    off-centre, as real CTs are in scanner coordinates. Aim a geometry at it
    (``BiplanarGeometry.from_parameters(grid=vol.grid, isocenter="volume")``).

Both store ``HU + 1024`` as in their sources; the files' NIfTI intercept makes every reader
return HU. Orientation was read from the anatomy (face, vertex); that columns run toward the
patient's left is assumed (the radiological convention: a head is too symmetric to tell).

Examples
--------
>>> from tomoprior.data import real_ct, real_cts
>>> real_cts()
('cthead', 'headsq')
>>> vol = real_ct("headsq")
>>> vol.grid.shape, vol.grid.spacing, vol.units
((93, 64, 64), (1.5, 3.2, 3.2), 'mu_per_mm')
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .._yaml import load_yaml
from ..geometry import VolumeGrid
from ..units import DEFAULT_ENERGY_KEV
from .volumes import Volume, read_nifti

#: Folder of the shipped real CTs (package data), one sub-folder per data set.
REAL_CT_DIR = Path(str(resources.files(__package__).joinpath("real_ct")))

__all__ = ["REAL_CT_DIR", "real_ct", "real_cts"]


def real_cts() -> tuple[str, ...]:
    """Names of the shipped real CTs, sorted: ``("cthead", "headsq")``."""
    if not REAL_CT_DIR.is_dir():
        return ()
    return tuple(sorted(p.name for p in REAL_CT_DIR.iterdir() if (p / f"{p.name}.nii.gz").is_file()))


def real_ct(name: str, *, units: str = "mu_per_mm", energy_kev: float = DEFAULT_ENERGY_KEV) -> Volume:
    """A shipped real head CT on its LPS millimetre grid.

    Parameters
    ----------
    name : str
        One of :func:`real_cts` (``"cthead"``, ``"headsq"``).
    units : {"mu_per_mm", "HU"}
        ``"mu_per_mm"`` (default): linear attenuation in 1/mm at ``energy_kev``, what the
        projectors take (``mu = mu_water(E) (1 + HU/1000)``, 0 below air). ``"HU"``: the
        Hounsfield units as stored.
    energy_kev : float
        Effective energy of the conversion, keV (default 60).

    Returns
    -------
    Volume
        ``data`` ``(nz, ny, nx)`` float32, ``grid`` (LPS mm, positive spacings; see
        :attr:`Volume.grid`), ``units``, and ``metadata`` with the file, the licence files
        (``licence_files``) and the ``provenance`` (source, sha256, assumptions).

    Raises
    ------
    ValueError
        An unknown name (the message lists the shipped ones), a bad ``units``, or a broken
        installation (the files are missing).
    """
    if units not in ("mu_per_mm", "HU"):
        raise ValueError(f"units must be 'mu_per_mm' or 'HU', got {units!r}")
    names = real_cts()
    if not isinstance(name, str) or name not in names:
        if not names:
            raise ValueError(f"no real CT is installed ({REAL_CT_DIR} is missing or empty): reinstall tomoprior")
        raise ValueError(f"unknown real CT {name!r}; the shipped ones are {', '.join(names)}")
    folder = REAL_CT_DIR / name
    # the files store HU + 1024 with a NIfTI intercept of -1024: nibabel returns HU already
    vol = read_nifti(folder / f"{name}.nii.gz", units="HU", hu_offset=0.0, energy_kev=energy_kev)
    # NIfTI keeps the affine in float32 (3.2 mm reads back as 3.2000000477): round to 0.1 um
    grid = vol.grid
    vol.grid = VolumeGrid(grid.shape, tuple(round(x, 4) for x in grid.spacing), tuple(round(x, 4) for x in grid.center))
    provenance = {}
    if (folder / "provenance.yaml").is_file():
        provenance = load_yaml(folder / "provenance.yaml", what=f"provenance of the real CT {name!r}") or {}
    licences = sorted(str(p) for p in folder.iterdir() if p.suffix in (".txt", ".info"))
    vol.metadata.update(name=name, licence_files=licences, provenance=provenance)
    return vol if units == "HU" else vol.to_mu(energy_kev)

"""Projector versus exact analytic line integrals of a phantom under a geometry."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from ..geometry.geometry import Geometry
from ..projectors import project

#: Rays whose exact integral exceeds this fraction of the view's maximum count as crossing the object.
CROSSING_FRACTION = 1e-6


@dataclass
class ProjectorComparison:
    """Agreement of ``project(rasterize(phantom))`` with the phantom's exact line integrals.

    Attributes
    ----------
    backend : dict
        Backend name and settings.
    median_relative_error : float
        Median over rays crossing the object of ``|P x - a| / a``.
    p95_relative_error : float
        95th percentile of the same.
    relative_l2_error : float
        ``||P x - a|| / ||a||`` over all pixels of all views.
    per_view : list of dict
        The same numbers per view, with the view name.
    projection_seconds : float
        Wall time of the projection.
    """

    backend: dict
    median_relative_error: float
    p95_relative_error: float
    relative_l2_error: float
    per_view: list = field(default_factory=list)
    projection_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _stats(p: torch.Tensor, a: torch.Tensor, crossing_fraction: float = CROSSING_FRACTION) -> dict:
    p, a = p.double().flatten(), a.double().flatten()
    crossing = a > crossing_fraction * a.abs().max()
    if not bool(crossing.any()):
        raise ValueError("no ray of this view crosses the phantom; check the geometry")
    rel = (p[crossing] - a[crossing]).abs() / a[crossing]
    return {
        "median_relative_error": float(rel.median()),
        "p95_relative_error": float(torch.quantile(rel, 0.95)),
        "relative_l2_error": float(torch.linalg.norm(p - a) / torch.linalg.norm(a)),
        "rays_crossing": int(crossing.sum()),
    }


def compare_to_analytic(phantom, geometry: Geometry, backend="auto", *, volume: torch.Tensor | None = None,
                        analytic=None, projections=None, supersample: int = 2, progress: bool = False,
                        crossing_fraction: float = CROSSING_FRACTION, **options) -> ProjectorComparison:
    """Compare a projector with exact line integrals.

    Parameters
    ----------
    phantom : tomoprior.phantoms.Phantom
        Analytic phantom (exact ``line_integrals`` and ``rasterize``).
    geometry : Geometry
    backend : str or Backend
    volume : Tensor ``(nz, ny, nx)``, optional
        The rasterised phantom on ``geometry.grid`` (computed with ``supersample`` if omitted).
    analytic : Tensor ``(views, rows, cols)`` or tuple, optional
        Precomputed exact line integrals.
    projections : Tensor ``(views, rows, cols)`` or tuple, optional
        Precomputed ``project(volume, geometry, backend)`` (then no projection is timed).
    supersample : int
        Sub-samples per voxel and axis for rasterisation.
    crossing_fraction : float
        Rays whose exact integral exceeds this fraction of the view's maximum enter the
        relative-error statistics (default: every ray crossing the object; 0.05 keeps the
        chords through the object and leaves out grazing rays, whose relative error measures
        the voxelised edge rather than the projector).
    **options
        Backend options.

    Returns
    -------
    ProjectorComparison
    """
    if volume is None:
        volume = phantom.rasterize(geometry.grid, supersample=supersample, dtype=torch.float64)
    if analytic is None:
        analytic = phantom.line_integrals(geometry)
    t0 = time.perf_counter()
    if projections is None:
        with torch.no_grad():
            proj = project(volume, geometry, backend, progress=progress, **options)
    else:
        proj = projections
    seconds = time.perf_counter() - t0 if projections is None else float("nan")
    if isinstance(proj, torch.Tensor):
        proj = tuple(proj)
    if isinstance(analytic, torch.Tensor):
        analytic = tuple(analytic)
    per_view = []
    for view, p, a in zip(geometry.views, proj, analytic):
        per_view.append({"view": view.name, **_stats(p, a.to(p.device), crossing_fraction)})
    allp = torch.cat([p.double().flatten() for p in proj])
    alla = torch.cat([a.double().flatten().to(allp.device) for a in analytic])
    total = _stats(allp, alla, crossing_fraction)
    from ..projectors import get_backend

    be = get_backend(backend, volume.device, **options) if isinstance(backend, str) else backend
    return ProjectorComparison(
        backend=be.describe(),
        median_relative_error=total["median_relative_error"],
        p95_relative_error=total["p95_relative_error"],
        relative_l2_error=total["relative_l2_error"],
        per_view=per_view,
        projection_seconds=seconds,
    )

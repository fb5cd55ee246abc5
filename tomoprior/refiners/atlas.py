"""Built-in refiner ``atlas``: a population atlas of the training volumes, the baseline that
asks what a reconstruction gains from the X-rays at all.

Two modes (``AtlasConfig.mode``):

``"mean"``
    The voxel-wise mean of the training volumes, the same for every case. It ignores the
    X-rays and the geometry prior entirely; any refiner that does not beat it has not used
    its input.
``"nearest"``
    The training volume whose *descriptor* is nearest to the test case's (or the mean of
    the ``k`` nearest). The descriptor is the geometry prior averaged over ``d^3`` blocks
    (``descriptor="prior"``) or each X-ray averaged over ``d x d`` blocks
    (``descriptor="xrays"``); the distance is the root-mean-square difference of the two
    descriptors, in the units of the X-rays (line integrals, attenuation x mm). This is
    retrieval, not reconstruction: it can only return (means of) training anatomy.

"Training" is one pass over the training split (:meth:`Atlas.fit_closed_form`, used by
``tomoprior train``): the mean is accumulated in float64 one batch at a time (memory: one
volume), and ``"nearest"`` keeps every training volume with its descriptor (memory: ``N``
volumes, 4 bytes per voxel: 8 MiB per case at 128^3, 1 MiB at 64^3). What was learned lives
in buffers (``mean_volume``, ``case_volumes``, ``case_descriptors``, ``case_index``), so the
checkpoint is an ordinary refiner checkpoint (format 2, SHA-256 of weights and config); the
sizes of those buffers are in the config (``volume_shape``, ``num_cases``,
``descriptor_dim``), which the fit fills in.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own idiom

from .base import Refiner, _geometry_list, check_config_types
from .registry import _builtin

_MODES = ("mean", "nearest")
_DESCRIPTORS = ("prior", "xrays")


@dataclass
class AtlasConfig:
    """Configuration of ``atlas``.

    Attributes
    ----------
    mode : {"mean", "nearest"}
        ``"mean"``: the voxel-wise mean of the training volumes (ignores the X-rays).
        ``"nearest"``: the mean of the ``k`` training volumes whose descriptors are nearest.
    k : int
        Number of nearest training volumes averaged (``"nearest"`` only; at least 1). A ``k``
        larger than the number of training cases averages all of them.
    descriptor : {"prior", "xrays"}
        What ``"nearest"`` compares: the geometry prior (``build_prior``, on the volume grid)
        averaged over blocks to ``descriptor_size^3`` values, or every X-ray averaged to
        ``descriptor_size x descriptor_size`` (all cases must then share the detector set-up).
    descriptor_size : int
        ``d`` above (at least 1).
    volume_shape : (nz, ny, nx) or None
        Grid of the training volumes; set by the fit (``tomoprior train`` sets it from the
        data). None: not fitted yet.
    spacing_mm : (sz, sy, sx) or None
        Voxel size of the training volumes in mm; set by the fit.
    num_cases : int
        Training volumes accumulated; set by the fit. 0: the empty atlas, whose output is the
        zero volume (air) on any grid.
    descriptor_dim : int
        Length of one stored descriptor (``"nearest"``); set by the fit.
    """

    mode: str = "mean"
    k: int = 1
    descriptor: str = "prior"
    descriptor_size: int = 8
    volume_shape: tuple[int, int, int] | None = None
    spacing_mm: tuple[float, float, float] | None = None
    num_cases: int = 0
    descriptor_dim: int = 0

    def __post_init__(self):
        check_config_types(self)
        if self.mode not in _MODES:
            raise ValueError(f"AtlasConfig.mode must be one of {_MODES}, got {self.mode!r}")
        if self.descriptor not in _DESCRIPTORS:
            raise ValueError(f"AtlasConfig.descriptor must be one of {_DESCRIPTORS}, got {self.descriptor!r}")
        for key in ("k", "descriptor_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"AtlasConfig.{key} must be at least 1, got {getattr(self, key)!r}")
        for key in ("num_cases", "descriptor_dim"):
            if getattr(self, key) < 0:
                raise ValueError(f"AtlasConfig.{key} must be >= 0 (it is set by the fit), got {getattr(self, key)!r}")
        if self.volume_shape is not None:
            self.volume_shape = tuple(int(n) for n in self.volume_shape)
            if len(self.volume_shape) != 3 or min(self.volume_shape) < 1:
                raise ValueError(f"AtlasConfig.volume_shape must be three positive integers (nz, ny, nx) or None, "
                                 f"got {self.volume_shape!r}")
        if self.spacing_mm is not None:
            self.spacing_mm = tuple(float(s) for s in self.spacing_mm)
            if len(self.spacing_mm) != 3 or not all(math.isfinite(s) and s > 0 for s in self.spacing_mm):
                raise ValueError(f"AtlasConfig.spacing_mm must be three positive voxel sizes in mm or None, "
                                 f"got {self.spacing_mm!r}")
        if self.num_cases > 0 and self.volume_shape is None:
            raise ValueError("AtlasConfig.num_cases > 0 needs volume_shape (both are set by the fit)")


@_builtin
class Atlas(Refiner):
    """``atlas``: the mean training volume, or the nearest training volume(s) (see
    :class:`AtlasConfig` and the module docstring).

    Shapes: xrays ``(B, V, H, W)`` or ``(B, V, C, H, W)``; prior ``(B, 1, nz, ny, nx)``;
    returns ``(B, 1, nz, ny, nx)`` in the units of the training volumes (1/mm for tomoprior
    datasets), dtype of the X-rays. No trainable parameters: fit it with
    :meth:`fit_closed_form` (``tomoprior train --refiner atlas``).

    Examples
    --------
    >>> import torch
    >>> from tomoprior.refiners import load
    >>> from tomoprior.refiners.testing import tiny_geometry
    >>> geom = tiny_geometry(n=8)
    >>> vols = torch.rand(3, 1, 8, 8, 8)
    >>> xrays = torch.zeros(3, 2, 48, 48)
    >>> atlas = load("atlas")
    >>> atlas.fit_closed_form([(xrays, geom, vols)])["cases"]
    3
    >>> bool(torch.allclose(atlas.reconstruct(xrays[0], geom)[0], vols.mean(0)[0]))
    True
    """

    name = "atlas"
    config_class = AtlasConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        self._warned_empty = False
        self._allocate()

    def _allocate(self) -> None:
        """(Re)create the buffers at the sizes the config names (zeros)."""
        c = self.config
        shape = tuple(c.volume_shape) if c.volume_shape is not None else (0, 0, 0)
        stored = c.num_cases if c.mode == "nearest" else 0
        self.register_buffer("mean_volume", torch.zeros(shape))
        self.register_buffer("case_volumes", torch.zeros(stored, *shape))
        self.register_buffer("case_descriptors", torch.zeros(stored, c.descriptor_dim if stored else 0))
        self.register_buffer("case_index", torch.zeros(stored, dtype=torch.int64))

    # -- inference ------------------------------------------------------------------------
    def forward(self, xrays, geometry, prior):
        b, _ = self.check_inputs(xrays, geometry, prior)
        grid = self._check_grid(geometry, b)
        c = self.config
        if c.num_cases == 0:  # the empty atlas: the mean of no volume is taken as air
            if not self._warned_empty:
                self._warned_empty = True
                warnings.warn("the atlas is empty (not fitted): its output is the zero volume (air). Fit it with "
                              "`tomoprior train --refiner atlas` and load the run's best.pt, or with "
                              "Atlas.fit_closed_form", UserWarning, stacklevel=2)
            out = torch.zeros(b, *grid.shape, dtype=xrays.dtype, device=xrays.device)
        elif c.mode == "mean":
            out = self.mean_volume.to(device=xrays.device, dtype=xrays.dtype).expand(b, *grid.shape).clone()
        else:
            idx, _ = self.nearest(xrays, prior)
            out = self.case_volumes[idx.to(self.case_volumes.device)].mean(1)
            out = out.to(device=xrays.device, dtype=xrays.dtype)
        return out[:, None]

    def _check_grid(self, geometry, batch: int):
        """The geometry's grid; ValueError when the atlas was built on another grid."""
        grids = [g.grid for g in _geometry_list(geometry, batch)]
        c = self.config
        for i, grid in enumerate(grids):
            if c.volume_shape is not None and tuple(grid.shape) != tuple(c.volume_shape):
                raise ValueError(f"this atlas was built from volumes of shape {tuple(c.volume_shape)} but the grid "
                                 f"of geometry {i} has shape {tuple(grid.shape)}; fit an atlas on data of that grid")
            if c.spacing_mm is not None and not all(math.isclose(a, b, rel_tol=1e-5)
                                                    for a, b in zip(grid.spacing, c.spacing_mm)):
                raise ValueError(f"this atlas was built from volumes with voxels of {tuple(c.spacing_mm)} mm but the "
                                 f"geometry's grid has {tuple(grid.spacing)} mm; fit an atlas on data of that grid")
        return grids[0]

    def descriptors(self, xrays: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """The retrieval descriptors of a batch, ``(B, D)`` float32.

        ``descriptor="prior"``: ``prior`` ``(B, 1, nz, ny, nx)`` averaged over blocks to
        ``d^3`` values (``adaptive_avg_pool3d``). ``"xrays"``: ``xrays`` ``(B, V, H, W)`` or
        ``(B, V, C, H, W)`` averaged to ``d x d`` per image, views (and channels) in order.
        Units of the X-rays.
        """
        d = self.config.descriptor_size
        if self.config.descriptor == "prior":
            pooled = F.adaptive_avg_pool3d(prior.detach().float(), d)
        else:
            x = xrays.detach().float()
            pooled = F.adaptive_avg_pool2d(x.reshape(x.shape[0], -1, *x.shape[-2:]), d)
        return pooled.flatten(1)

    @torch.no_grad()
    def nearest(self, xrays: torch.Tensor, prior: torch.Tensor, k: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` (default ``config.k``, at most ``num_cases``) stored training cases
        nearest to each case of the batch.

        Returns
        -------
        positions : ``(B, k)`` int64
            Rows of ``case_volumes``, nearest first (ties: the earlier training case);
            ``case_index[positions]`` are the rows of the training split in its dataset file.
        distances : ``(B, k)`` float64
            Root-mean-square descriptor differences, units of the X-rays.

        Raises
        ------
        ValueError
            The atlas is not in ``"nearest"`` mode or holds no case, or descriptors of
            another length than the stored ones (another detector set-up for ``"xrays"``).
        """
        c = self.config
        if c.mode != "nearest" or c.num_cases == 0:
            raise ValueError(f"nearest() needs a fitted atlas in mode 'nearest' (this one: mode {c.mode!r}, "
                             f"{c.num_cases} cases)")
        k = c.k if k is None else int(k)
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = self.descriptors(xrays, prior).to(device=self.case_descriptors.device, dtype=torch.float64)
        if q.shape[1] != self.case_descriptors.shape[1]:
            raise ValueError(f"the test case's descriptor has {q.shape[1]} values but the atlas stores "
                             f"{self.case_descriptors.shape[1]} ({c.descriptor!r} descriptors; with 'xrays' every "
                             "case needs the same number of views)")
        ref = self.case_descriptors.to(torch.float64)
        dist = ((q[:, None, :] - ref[None]) ** 2).mean(-1).sqrt()  # (B, N)
        order = torch.sort(dist, dim=1, stable=True).indices[:, :min(k, c.num_cases)]
        return order, torch.gather(dist, 1, order)

    # -- fitting --------------------------------------------------------------------------
    @torch.no_grad()
    def fit_closed_form(self, samples: Iterable) -> dict:
        """Build the atlas in one pass over training samples (replacing any earlier fit).

        Parameters
        ----------
        samples : iterable
            Each item a training batch: an object with attributes ``xrays``, ``geometry``,
            ``prior``, ``target`` and optionally ``index`` (the training loop's
            :class:`~tomoprior.refiners.hooks.Batch`), or a tuple ``(xrays, geometry,
            targets)`` or ``(xrays, geometry, prior, targets)``. ``xrays`` ``(B, V, H, W)``;
            ``targets`` ``(B, 1, nz, ny, nx)`` or ``(B, nz, ny, nx)`` on ``geometry.grid``
            (1/mm). The prior is built with ``build_prior`` when missing and needed.

        Returns
        -------
        dict
            ``cases`` (number of training volumes), ``mode`` and ``mean_mu`` (mean voxel of
            the mean volume), for the training record.

        Raises
        ------
        ValueError
            No samples, volumes of different shapes or not on the geometry's grid,
            non-finite voxels (the sample is named).
        """
        from .prior import build_prior

        c = self.config
        keep = c.mode == "nearest"
        total = None
        n = 0
        vols, descs, rows = [], [], []
        shape = spacing = None
        for item in samples:
            xrays, geometry, prior, target, index = _unpack(item)
            target = torch.as_tensor(target)
            if target.ndim == 5 and target.shape[1] == 1:
                target = target[:, 0]
            if target.ndim != 4:
                raise ValueError(f"targets must be (B, 1, nz, ny, nx) or (B, nz, ny, nx), got {tuple(target.shape)} "
                                 f"(training sample {n})")
            b = target.shape[0]
            grid = _geometry_list(geometry, b)[0].grid
            if tuple(target.shape[1:]) != tuple(grid.shape):
                raise ValueError(f"training sample {n}: volume of shape {tuple(target.shape[1:])} is not on the "
                                 f"geometry's grid {tuple(grid.shape)}")
            if shape is None:
                shape, spacing = tuple(grid.shape), tuple(float(s) for s in grid.spacing)
                if c.volume_shape is not None and shape != tuple(c.volume_shape):
                    raise ValueError(f"the atlas is configured for volumes {tuple(c.volume_shape)} but the training "
                                     f"volumes are {shape}; drop volume_shape (it is taken from the data)")
                total = torch.zeros(shape, dtype=torch.float64, device=target.device)
            elif tuple(target.shape[1:]) != shape or not all(math.isclose(a, s, rel_tol=1e-5)
                                                              for a, s in zip(grid.spacing, spacing)):
                raise ValueError(f"training sample {n}: volumes of shape {tuple(target.shape[1:])} with voxels of "
                                 f"{tuple(grid.spacing)} mm after {shape} with {spacing} mm; an atlas needs one grid")
            bad = ~torch.isfinite(target.reshape(b, -1)).all(1)
            if bool(bad.any()):
                first = int(bad.nonzero()[0])
                raise ValueError(f"training sample {n + first} (row {index[first] if index else n + first}) holds NaN "
                                 "or infinite voxels")
            total += target.to(total.device, torch.float64).sum(0)
            if keep:
                xr = torch.as_tensor(xrays)
                if c.descriptor == "prior" and prior is None:
                    prior = build_prior(xr.float(), geometry)
                descs.append(self.descriptors(xr, prior).cpu())
                vols.append(target.detach().to("cpu", torch.float32))
                rows.extend(index if index is not None else range(n, n + b))
            n += b
        if n == 0:
            raise ValueError("the atlas got no training samples")
        dev = self.mean_volume.device
        self.config = dataclasses.replace(c, volume_shape=shape, spacing_mm=spacing, num_cases=n,
                                          descriptor_dim=int(descs[0].shape[1]) if keep else 0)
        self._allocate()
        self.mean_volume = (total / n).to(device=dev, dtype=torch.float32)
        if keep:
            self.case_volumes = torch.cat(vols).to(dev)
            self.case_descriptors = torch.cat(descs).to(dev)
            self.case_index = torch.as_tensor(rows, dtype=torch.int64, device=dev)
        return {"cases": n, "mode": c.mode, "mean_mu": float(self.mean_volume.double().mean())}


def _unpack(item):
    """``(xrays, geometry, prior or None, target, index or None)`` of one training batch."""
    if hasattr(item, "target") and hasattr(item, "xrays"):
        return item.xrays, item.geometry, getattr(item, "prior", None), item.target, \
            [int(i) for i in item.index] if getattr(item, "index", None) is not None else None
    if isinstance(item, (tuple, list)) and len(item) in (3, 4):
        if len(item) == 3:
            return item[0], item[1], None, item[2], None
        return item[0], item[1], item[2], item[3], None
    raise ValueError("each training sample must be a Batch (xrays, geometry, prior, target) or a tuple "
                     f"(xrays, geometry, targets) / (xrays, geometry, prior, targets), got {type(item).__name__}")

"""The :class:`Refiner` contract: a ``torch.nn.Module`` that turns X-rays, their exact
geometry and the geometry prior into a volume, with one config dataclass and checkpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from .._atomic import atomic_path
from .._version import __version__
from ..geometry.geometry import Geometry

#: Written into every checkpoint; bump when the layout of the checkpoint dict changes.
CHECKPOINT_FORMAT = "tomoprior-refiner"
CHECKPOINT_VERSION = 1


@dataclasses.dataclass
class RefinerConfig:
    """Base class of refiner configs (hyper-parameters in one dataclass). Empty on purpose:
    subclass it (``@dataclass class MyConfig(RefinerConfig): width: int = 32``)."""


class Refiner(torch.nn.Module):
    """Base class of every refiner (built-in or plugin).

    Subclasses set two class attributes and implement :meth:`forward`:

    ``name``
        The registry name, e.g. ``"psctnet"`` (lower case, digits, ``-`` and ``_``).
    ``config_class``
        A dataclass type holding every hyper-parameter; the instance lives at ``self.config``.

    Parameters
    ----------
    config : config_class instance, optional
        The full configuration. If omitted it is built from ``**overrides``.
    **overrides
        Config fields, e.g. ``Refiner(width=16)``; with ``config`` given they replace its
        fields (``dataclasses.replace``).

    Raises
    ------
    TypeError
        ``config`` is not an instance of ``config_class``.
    ValueError
        An override names no field of ``config_class`` (the message lists the fields).

    Notes
    -----
    Shapes of :meth:`forward` (B = batch, V = views):

    - ``xrays``: ``(B, V, H, W)`` or ``(B, V, C, H, W)``, line integrals (attenuation x mm)
      or whatever image the refiner was trained on, one detector image per view.
    - ``geometry``: one :class:`~tomoprior.Geometry` shared by the batch, or a list of B.
    - ``prior``: ``(B, 1, nz, ny, nx)`` from :func:`~tomoprior.refiners.build_prior` on
      ``geometry.grid``.
    - returns ``(B, 1, nz, ny, nx)`` on ``geometry.grid``.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = RefinerConfig

    def __init__(self, config: Any = None, **overrides):
        super().__init__()
        cls = type(self)
        if not (isinstance(cls.config_class, type) and dataclasses.is_dataclass(cls.config_class)):
            raise TypeError(f"{cls.__name__}.config_class must be a dataclass type, got {cls.config_class!r}")
        fields = [f.name for f in dataclasses.fields(cls.config_class)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ValueError(
                f"{cls.__name__} ({cls.name!r}) has no config field(s) {unknown}; "
                f"{cls.config_class.__name__} fields are {fields}"
            )
        if config is None:
            config = cls.config_class(**overrides)
        elif isinstance(config, dict):
            config = _config_from_dict(cls, config)
            config = dataclasses.replace(config, **overrides) if overrides else config
        elif isinstance(config, cls.config_class):
            config = dataclasses.replace(config, **overrides) if overrides else config
        else:
            raise TypeError(
                f"config must be a {cls.config_class.__name__} (or a dict of its fields), got {type(config).__name__}"
            )
        self.config = config

    # -- the contract ---------------------------------------------------------------------
    def forward(self, xrays: torch.Tensor, geometry, prior: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__} must implement forward(xrays, geometry, prior)")

    def reconstruct(self, xrays: torch.Tensor, geometry, *, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Build the geometry prior (unless given) and run :meth:`forward`.

        ``xrays`` may also be unbatched ``(V, H, W)``; the result is then ``(1, nz, ny, nx)``.
        """
        from .prior import build_prior

        unbatched = isinstance(xrays, torch.Tensor) and xrays.ndim == 3
        x = xrays[None] if unbatched else xrays
        if prior is None:
            prior = build_prior(x, geometry)
        out = self(x, geometry, prior)
        return out[0] if unbatched else out

    @staticmethod
    def check_inputs(xrays, geometry, prior) -> tuple[int, int]:
        """Validate the shapes of :meth:`forward` inputs; return ``(B, V)``.

        Raises ``ValueError`` naming the argument and the expected shape.
        """
        if not isinstance(xrays, torch.Tensor) or xrays.ndim not in (4, 5):
            got = tuple(xrays.shape) if isinstance(xrays, torch.Tensor) else type(xrays).__name__
            raise ValueError(f"xrays must be a tensor (B, V, H, W) or (B, V, C, H, W), got {got}")
        b, v = xrays.shape[:2]
        geoms = _geometry_list(geometry, b)
        for i, g in enumerate(geoms):
            if g.num_views != v:
                raise ValueError(f"geometry[{i}] has {g.num_views} views but xrays have V={v}")
        grid = geoms[0].grid
        want = (b, 1, *grid.shape)
        if not isinstance(prior, torch.Tensor) or tuple(prior.shape) != want:
            got = tuple(prior.shape) if isinstance(prior, torch.Tensor) else type(prior).__name__
            raise ValueError(f"prior must have shape {want} (B, 1, nz, ny, nx) on geometry.grid, got {got}")
        return b, v

    # -- checkpoints ----------------------------------------------------------------------
    def checkpoint_dict(self, **extra) -> dict:
        """The dict :meth:`save_checkpoint` writes (name, config, state_dict, versions, extra)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "name": type(self).name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": dataclasses.asdict(self.config),
            "state_dict": self.state_dict(),
            "tomoprior_version": __version__,
            "extra": dict(extra),
        }

    def save_checkpoint(self, path, **extra) -> Path:
        """Write ``name``, ``config``, ``state_dict``, the tomoprior version and ``extra``
        (e.g. ``epoch=3, optimizer=opt.state_dict()``) to ``path`` atomically (torch.save).
        ``extra`` must hold tensors, numbers, strings and containers of them (checkpoints are
        read back with ``weights_only=True``). Returns the path."""
        path = Path(path)
        payload = self.checkpoint_dict(**extra)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path

    @classmethod
    def demo_checkpoint(cls) -> Path | None:
        """Path of small pretrained weights shipped with the refiner's package for demos
        (``tomoprior reconstruct --demo``, ``--checkpoint demo``), or None (the default:
        no shipped weights). A plugin overrides this to point at its package data."""
        return None

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu", *, strict: bool = True) -> Refiner:
        """Rebuild a refiner from :meth:`save_checkpoint` output.

        On the base class the refiner type is looked up by the stored ``name`` in the
        registry (built-ins, :func:`register` ed and installed plugins); on a subclass the
        stored name must match ``cls.name``. The checkpoint's ``extra`` dict is attached as
        ``refiner.checkpoint_extra``.
        """
        ckpt = read_checkpoint(path, map_location=map_location)
        name = ckpt["name"]
        if cls is Refiner:
            from .registry import get_class

            target = get_class(name)
        else:
            if name != cls.name:
                raise ValueError(f"{path} holds a {name!r} refiner, not {cls.name!r}; use Refiner.from_checkpoint")
            target = cls
        model = target(_config_from_dict(target, ckpt["config"], where=str(path)))
        model.load_state_dict(ckpt["state_dict"], strict=strict)
        model.checkpoint_extra = ckpt.get("extra", {})
        return model

    def extra_repr(self) -> str:
        return f"name={type(self).name!r}, config={self.config!r}"


def read_checkpoint(path, map_location="cpu") -> dict:
    """Load and validate a refiner checkpoint dict (see :meth:`Refiner.save_checkpoint`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist or is not a file")
    try:
        # weights_only: a checkpoint is data (tensors, numbers, strings, containers), never code
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which
        raise ValueError(
            f"{path} is not a readable torch checkpoint (loaded with weights_only=True): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a tomoprior refiner checkpoint (no format={CHECKPOINT_FORMAT!r} entry)")
    if ckpt.get("format_version", 0) > CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {ckpt['format_version']}, newer than this tomoprior "
            f"({__version__}) reads ({CHECKPOINT_VERSION}); upgrade tomoprior"
        )
    for key in ("name", "config", "state_dict"):
        if key not in ckpt:
            raise ValueError(f"{path} is missing the {key!r} entry")
    return ckpt


def _config_from_dict(cls, d: dict, where: str = "config"):
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(
            f"{where}: {cls.config_class.__name__} has no field(s) {unknown} (fields: {sorted(fields)}); "
            "was it written by another version of the refiner?"
        )
    return cls.config_class(**d)


def _geometry_list(geometry, batch: int) -> list[Geometry]:
    """One Geometry shared by the batch, or a sequence of ``batch`` Geometries -> list."""
    if isinstance(geometry, Geometry):
        return [geometry] * batch
    if isinstance(geometry, Sequence) and not isinstance(geometry, (str, bytes)):
        geoms = list(geometry)
        if len(geoms) != batch:
            raise ValueError(f"geometry is a list of {len(geoms)} Geometries but the batch has B={batch}")
        for i, g in enumerate(geoms):
            if not isinstance(g, Geometry):
                raise TypeError(f"geometry[{i}] must be a tomoprior Geometry, got {type(g).__name__}")
        return geoms
    raise TypeError(f"geometry must be a tomoprior Geometry or a list of B Geometries, got {type(geometry).__name__}")

"""The refiner contract as a test a plugin author runs: :func:`check_refiner`.

It builds the refiner (through the registry when given a name), makes a tiny bi-planar
geometry, a smooth volume, its X-rays and their geometry prior, and checks every promise
of the contract in ``docs/refiners.md`` on them: the refiner is a ``torch.nn.Module`` whose
``forward(xrays, geometry, prior)`` returns finite ``(B, 1, nz, ny, nx)`` values of the
X-rays' dtype and device, leaves its inputs alone, takes a list of B geometries, is
deterministic in eval mode, refuses wrongly shaped input and unknown config fields with a
clear error, passes gradients to its parameters, and comes back identical from its config and
from a checkpoint (format 2, checksums verified).

    from tomoprior.refiners.testing import check_refiner

    report = check_refiner("my-refiner")            # raises RefinerContractError on a failure
    print(report)                                   # one line per check
    check_refiner("my-refiner", overrides={"width": 4}, raise_on_failure=False).passed

The test suite runs it over every installed refiner (``tests/refiners/test_contract.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..geometry.geometry import BiplanarGeometry, Geometry
from ..geometry.grid import VolumeGrid
from ..projectors.api import project
from .base import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    Refiner,
    check_config_types,
    read_checkpoint,
    resolve_device,
)
from .prior import build_prior
from .registry import available_refiners, get_class, load

__all__ = ["CHECKS", "CheckResult", "ContractReport", "RefinerContractError", "check_refiner", "tiny_geometry"]

PASS, FAIL, SKIP = "pass", "fail", "skip"
#: The checks of :func:`check_refiner`, in the order they run and are reported.
CHECKS = ("loads", "module", "unknown_config_field", "forward", "inputs_unchanged", "deterministic_eval",
          "geometry_list", "reconstruct", "rejects_bad_input", "gradients", "config_round_trip",
          "checkpoint_round_trip", "demo_checkpoint")
#: The ``extra`` written into the test checkpoint (it must come back as ``checkpoint_extra``).
_EXTRA = {"epoch": 3, "note": "check_refiner"}


@dataclass
class CheckResult:
    """One check: its name, ``"pass"``, ``"fail"`` or ``"skip"``, what was seen, and seconds."""

    name: str
    status: str
    message: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True unless the check failed (a skipped check does not fail)."""
        return self.status != FAIL


@dataclass
class ContractReport:
    """What :func:`check_refiner` found: one :class:`CheckResult` per check, in order."""

    refiner: str
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """True when no check failed."""
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.status == FAIL]

    def __getitem__(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {[c.name for c in self.checks]}")

    def to_dict(self) -> dict:
        """JSON-ready: ``refiner``, ``passed`` and the list of checks."""
        return {"refiner": self.refiner, "passed": self.passed, "checks": [dataclasses.asdict(c) for c in self.checks]}

    def __str__(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in (PASS, FAIL, SKIP)}
        lines = [f"refiner contract of {self.refiner!r}: {counts[PASS]} passed, {counts[FAIL]} failed, "
                 f"{counts[SKIP]} skipped"]
        width = max((len(c.name) for c in self.checks), default=0)
        for c in self.checks:
            lines.append(f"  {c.status.upper():4}  {c.name:{width}}  {c.message}")
        return "\n".join(lines)

    def raise_for_failures(self) -> ContractReport:
        """Raise :class:`RefinerContractError` if a check failed; return self otherwise."""
        if not self.passed:
            raise RefinerContractError(self)
        return self


class RefinerContractError(AssertionError):
    """A refiner breaks its contract. ``.report`` is the :class:`ContractReport`; the message
    lists every check (an ``AssertionError``, so test runners show it as a test failure)."""

    def __init__(self, report: ContractReport):
        self.report = report
        failed = ", ".join(c.name for c in report.failures)
        super().__init__(f"refiner {report.refiner!r} fails check(s) {failed}\n{report}")


def tiny_geometry(n: int = 16, binning: int = 32) -> BiplanarGeometry:
    """The default geometry of :func:`check_refiner`: the default bi-planar set-up (PA frontal
    and lateral, detectors binned ``binning`` x: 48 x 48 pixels at 32) over an ``n^3`` grid of
    192 mm (``192 / n`` mm voxels) at the isocenter."""
    return BiplanarGeometry.from_parameters(grid=VolumeGrid((n, n, n), (192.0 / n,) * 3), binning=binning)


def _smooth_volumes(grid: VolumeGrid, batch: int, gen: torch.Generator) -> torch.Tensor:
    """``(B, nz, ny, nx)`` float32: a few Gaussian blobs per sample (attenuation about 0.02/mm)."""
    c = grid.voxel_centers(dtype=torch.float32)  # (nz, ny, nx, 3) as (x, y, z) mm
    half = torch.tensor([n * s / 2 for n, s in zip(grid.shape_xyz, grid.spacing_xyz)])
    out = torch.zeros(batch, *grid.shape)
    for b in range(batch):
        for _ in range(3):
            center = torch.tensor(grid.center, dtype=torch.float32) + (torch.rand(3, generator=gen) - 0.5) * half
            radius = (0.15 + 0.2 * torch.rand(3, generator=gen)) * half
            r2 = (((c - center) / radius) ** 2).sum(-1)
            out[b] += 0.02 * (0.5 + torch.rand((), generator=gen)) * torch.exp(-r2)
    return out


class _Run:
    """Runs the checks in order, timing each and turning exceptions into failures."""

    def __init__(self, report: ContractReport):
        self.report = report

    def check(self, name: str, fn: Callable[[], str | tuple[str, str]], *, needs: bool = True,
              why: str = "an earlier check failed") -> bool:
        if not needs:
            self.report.checks.append(CheckResult(name, SKIP, f"not run: {why}"))
            return False
        t0 = time.perf_counter()
        try:
            result = fn()
        except _CheckFailedError as exc:
            status, message = FAIL, str(exc)
        except Exception as exc:  # the refiner under test may raise anything: that is the finding
            status, message = FAIL, f"raised {type(exc).__name__}: {_short(exc)}"
        else:
            status, message = (result if isinstance(result, tuple) else (PASS, result))
        self.report.checks.append(CheckResult(name, status, message, round(time.perf_counter() - t0, 3)))
        return status == PASS


class _CheckFailedError(Exception):
    """A check's own finding (its message is the report line)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _CheckFailedError(message)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _is_registered(cls: type) -> bool:
    """Whether the registry's name ``cls.name`` leads to ``cls`` itself."""
    try:
        return cls.name in available_refiners() and get_class(cls.name) is cls
    except (ImportError, ValueError, TypeError):  # e.g. a broken installed plugin of that name
        return False


def _describe_input(refiner) -> str:
    if isinstance(refiner, str):
        return refiner
    cls = refiner if isinstance(refiner, type) else type(refiner)
    return getattr(cls, "name", "") or cls.__name__


def check_refiner(refiner: str | type[Refiner] | Refiner, *, geometry: Geometry | None = None,
                  overrides: dict | None = None, batch: int = 2, device="cpu", seed: int = 0,
                  raise_on_failure: bool = True) -> ContractReport:
    """Check a refiner against the :class:`~tomoprior.refiners.Refiner` contract.

    Parameters
    ----------
    refiner : str, Refiner subclass or Refiner instance
        A registry name (checked through :func:`~tomoprior.refiners.load`, as users get
        it), a class (built with ``overrides``) or a built instance (checked on a copy, so
        it is left untouched; ``overrides`` must then be None).
    geometry : Geometry, optional
        Geometry of the test; its views must share one detector shape. Default
        :func:`tiny_geometry` (16^3 voxels of 12 mm, two 48 x 48 views). A refiner built for
        one grid (e.g. PSCT-Net's ``volume_shape``) needs ``overrides`` or a geometry to match.
    overrides : dict, optional
        Keyword arguments for building the refiner (config fields; for PSCT-Net also
        ``preset``), e.g. a small width so the checks run in seconds.
    batch : int
        Batch size B of the test inputs (at least 2, so per-sample geometry lists are tested).
    device : str or torch.device
        Where the refiner and the inputs live (``"cpu"`` default, ``"cuda"``, ...).
    seed : int
        Seed of the test data and of the refiner's initialisation (the caller's random state
        is restored afterwards).
    raise_on_failure : bool
        Raise :class:`RefinerContractError` when a check fails (default); otherwise only
        return the report.

    Returns
    -------
    ContractReport
        One :class:`CheckResult` per name of :data:`CHECKS`, in that order. Each is
        ``"pass"``, ``"fail"`` (with what was seen) or ``"skip"`` (with why).

    Raises
    ------
    RefinerContractError (an AssertionError)
        A check failed and ``raise_on_failure`` is True; ``.report`` holds the report.
    ValueError
        Bad arguments of this function (not findings about the refiner): a geometry with
        views of different detector shapes, ``batch < 2``, overrides with an instance, a
        device that does not exist here.

    Examples
    --------
    >>> from tomoprior.refiners.testing import check_refiner
    >>> report = check_refiner("bp-prior")
    >>> report.passed, report["forward"].status
    (True, 'pass')
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 2:
        raise ValueError(f"batch must be an integer >= 2, got {batch!r}")
    if overrides is not None and isinstance(refiner, torch.nn.Module):
        raise ValueError("overrides build a refiner: pass them with a name or a class, not with an instance")
    dev = resolve_device(device, option="device")
    geom = tiny_geometry() if geometry is None else geometry
    if not isinstance(geom, Geometry):
        raise ValueError(f"geometry must be a tomoprior Geometry, got {type(geom).__name__}")
    if not geom.uniform_detector:
        raise ValueError(f"the views of geometry must share one detector shape, got {geom.detector_shapes}")
    report = ContractReport(_describe_input(refiner))
    forked = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        _check(report, refiner, geom, dict(overrides or {}), batch, dev, seed)
    if raise_on_failure:
        report.raise_for_failures()
    return report


def _check(report: ContractReport, refiner, geom: Geometry, overrides: dict, batch: int, dev: torch.device,
           seed: int) -> None:
    run = _Run(report)
    state: dict = {}

    # -- build -------------------------------------------------------------------------------
    def loads():
        if isinstance(refiner, str):
            names = available_refiners()
            _require(refiner in names, f"{refiner!r} is not in tomoprior.refiners.available_refiners() {names}")
            cls = get_class(refiner)
            _require(cls.name == refiner, f"{cls.__name__}.name is {cls.name!r}, registered as {refiner!r}")
            state["model"], state["registered"] = load(refiner, **overrides), True
            return f"load({refiner!r}) built a {cls.__module__}.{cls.__qualname__}"
        if isinstance(refiner, type):
            cls = refiner
            _require(issubclass(cls, Refiner), f"{cls!r} is not a subclass of tomoprior.refiners.Refiner")
            state["model"] = cls(**overrides)
        else:
            _require(isinstance(refiner, Refiner), f"{type(refiner).__name__} is not a tomoprior.refiners.Refiner")
            cls = type(refiner)
            state["model"] = copy.deepcopy(refiner)
        registered = _is_registered(cls)
        state["registered"] = registered
        how = (f"registered as {cls.name!r}" if registered else
               f"not registered: Refiner.from_checkpoint finds it by name only once it is installed or "
               f"register()ed (checked with {cls.__name__}.from_checkpoint here)")
        return f"built a {cls.__qualname__}; {how}"

    if not run.check("loads", loads):
        for name in CHECKS[1:]:
            run.check(name, lambda: "", needs=False, why="the refiner could not be built")
        return
    model: Refiner = state["model"]
    cls = type(model)
    report.refiner = cls.name or report.refiner

    def module():
        _require(isinstance(model, torch.nn.Module), f"{cls.__name__} is not a torch.nn.Module")
        from .registry import _validate_class

        _validate_class(cls, None, cls.__name__)  # name and config_class as the registry wants them
        _require(isinstance(model.config, cls.config_class),
                 f"self.config is a {type(model.config).__name__}, not its config_class {cls.config_class.__name__}")
        check_config_types(model.config)
        n = sum(p.numel() for p in model.parameters())
        return f"nn.Module, config {cls.config_class.__name__}, {n:,} parameters"

    run.check("module", module)

    def unknown_config_field():
        bad = "no_such_config_field"
        try:
            if isinstance(refiner, str):
                load(refiner, **overrides, **{bad: 1})
            elif isinstance(refiner, type):
                cls(**overrides, **{bad: 1})
            else:
                cls(model.config, **{bad: 1})
        except ValueError as exc:
            _require(bad in str(exc), f"refused with a ValueError that does not name the field: {_short(exc)}")
            return "an unknown config field is refused with a ValueError naming it"
        raise _CheckFailedError(f"building with {bad}=1 was accepted; unknown config fields must raise ValueError "
                                "(pass **overrides on to Refiner.__init__)")

    run.check("unknown_config_field", unknown_config_field)
    model.to(dev)

    # -- inputs ------------------------------------------------------------------------------
    gen = torch.Generator().manual_seed(seed)
    grid = geom.grid
    volumes = _smooth_volumes(grid, batch, gen)
    xrays = project(volumes, geom).to(torch.float32)  # (B, V, H, W) line integrals
    prior = build_prior(xrays, geom)
    xrays, prior = xrays.to(dev), prior.to(dev)
    want = (batch, 1, *grid.shape)

    def run_eval(g=geom, m=None):
        """An eval-mode forward on fresh copies of the inputs (a refiner that writes into its
        inputs fails ``inputs_unchanged`` only, not every later check)."""
        m = model if m is None else m
        m.eval()
        with torch.no_grad():
            return m(xrays.clone(), g, prior.clone())

    # -- forward -----------------------------------------------------------------------------
    def forward():
        x, p = xrays.clone(), prior.clone()
        model.eval()
        with torch.no_grad():
            out = model(x, geom, p)
        state["inputs_unchanged"] = torch.equal(x, xrays) and torch.equal(p, prior)
        _require(isinstance(out, torch.Tensor), f"forward returned a {type(out).__name__}, not a tensor")
        _require(tuple(out.shape) == want, f"output shape {tuple(out.shape)}, expected (B, 1, nz, ny, nx) = {want}")
        _require(out.dtype == xrays.dtype, f"output dtype {out.dtype}, expected the X-rays' {xrays.dtype}")
        _require(out.device == xrays.device, f"output on {out.device}, expected the X-rays' device {xrays.device}")
        _require(bool(torch.isfinite(out).all()), "output holds NaN or infinite values")
        state["out"] = out
        return f"{tuple(out.shape)} {str(out.dtype).replace('torch.', '')} on {out.device}, finite"

    ok = run.check("forward", forward)

    def inputs_unchanged():
        _require(state["inputs_unchanged"], "forward changed xrays or prior in place")
        return "xrays and prior untouched"

    run.check("inputs_unchanged", inputs_unchanged, needs=ok, why="forward failed")

    def deterministic_eval():
        again = run_eval()
        _require(torch.equal(again, state["out"]),
                 f"two eval-mode calls differ by up to {_max_diff(again, state['out']):.3g}")
        return "two eval-mode calls are bitwise equal"

    run.check("deterministic_eval", deterministic_eval, needs=ok, why="forward failed")

    def geometry_list():
        listed = run_eval(g=[geom] * batch)
        diff = _max_diff(listed, state["out"])
        _require(tuple(listed.shape) == want and torch.allclose(listed, state["out"], rtol=1e-5, atol=1e-6),
                 f"a list of B geometries gives another result than one shared geometry (max diff {diff:.3g})")
        return f"a list of {batch} geometries gives the shared geometry's result (max diff {diff:.2g})"

    run.check("geometry_list", geometry_list, needs=ok, why="forward failed")

    def reconstruct():
        model.eval()
        with torch.no_grad():
            single = model.reconstruct(xrays[0].clone(), geom)
            direct = model(xrays[:1].clone(), geom, build_prior(xrays[:1], geom))[0]
        _require(tuple(single.shape) == (1, *grid.shape),
                 f"reconstruct of unbatched X-rays (V, H, W) gave {tuple(single.shape)}, expected {(1, *grid.shape)}")
        diff = _max_diff(single, direct)
        _require(torch.allclose(single, direct, rtol=1e-5, atol=1e-6),
                 f"reconstruct differs from forward with build_prior by up to {diff:.3g}")
        return "unbatched reconstruct equals forward with build_prior"

    run.check("reconstruct", reconstruct, needs=ok, why="forward failed")

    # -- bad input ---------------------------------------------------------------------------
    def rejects_bad_input():
        nz, ny, nx = grid.shape
        cases = {
            "xrays without the batch axis (V, H, W)": (xrays[0].clone(), geom, prior[:1].clone()),
            "xrays with one view fewer than the geometry": (xrays[:, :-1].clone(), geom, prior.clone()),
            f"a prior of shape {(batch, 1, nz + 1, ny, nx)}": (xrays.clone(), geom,
                                                               prior.new_zeros(batch, 1, nz + 1, ny, nx)),
        }
        model.eval()
        bad = []
        for what, args in cases.items():
            try:
                with torch.no_grad():
                    model(*args)
            except (ValueError, TypeError) as exc:
                if not str(exc).strip():
                    bad.append(f"{what}: {type(exc).__name__} without a message")
            except Exception as exc:
                bad.append(f"{what}: raised {type(exc).__name__} ({_short(exc, 120)}), not a ValueError/TypeError "
                           "naming the argument")
            else:
                bad.append(f"{what}: accepted")
        _require(not bad, "; ".join(bad) + " (check_inputs(xrays, geometry, prior) does this)")
        return f"{len(cases)} wrongly shaped inputs refused with a ValueError/TypeError"

    run.check("rejects_bad_input", rejects_bad_input)

    # -- gradients ---------------------------------------------------------------------------
    def gradients():
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not params:
            return PASS, "no trainable parameters (nothing to reach)"
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(xrays.clone(), geom, prior.clone())
        _require(out.requires_grad, "the output of a train-mode forward does not require grad")
        weights = torch.randn(out.shape, generator=gen).to(dev)
        (out.float() * weights).sum().backward()
        got = [n for n, p in params if p.grad is not None and bool((p.grad != 0).any())]
        nonfinite = [n for n, p in params if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        model.zero_grad(set_to_none=True)
        _require(not nonfinite, f"non-finite gradients in {nonfinite[:5]}")
        _require(bool(got), f"no parameter got a gradient (of {len(params)} trainable tensors)")
        missing = [n for n, _ in params if n not in got]
        note = f"; without a gradient from forward: {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing \
            else ""
        return f"{len(got)} of {len(params)} trainable tensors got finite, non-zero gradients{note}"

    run.check("gradients", gradients)

    # the round trips must carry the weights, not only rebuild the initialisation
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(0.01 * torch.randn(p.shape, generator=gen).to(p))
    ref = run_eval() if ok else None

    def config_round_trip():
        as_dict = dataclasses.asdict(model.config)
        twin = load(cls.name, as_dict) if state["registered"] else cls(as_dict)
        _require(type(twin) is cls, f"the config dict built a {type(twin).__name__}, not a {cls.__name__}")
        _require(twin.config == model.config, f"config -> dict -> config changed it: {twin.config!r}")
        twin.load_state_dict(model.state_dict())
        twin.to(dev)
        out = run_eval(m=twin)
        _require(torch.equal(out, ref), f"a twin built from the config dict with the same weights differs by up "
                                        f"to {_max_diff(out, ref):.3g}")
        return "config -> dict -> refiner with the same weights gives a bitwise equal output"

    run.check("config_round_trip", config_round_trip, needs=ok, why="forward failed")

    def checkpoint_round_trip():
        with tempfile.TemporaryDirectory(prefix="check_refiner_") as tmp:
            path = Path(tmp) / "refiner.pt"
            model.save_checkpoint(path, **_EXTRA)
            ckpt = read_checkpoint(path)  # verifies CRCs and both checksums
            _require(ckpt["format"] == CHECKPOINT_FORMAT and ckpt["format_version"] == CHECKPOINT_VERSION,
                     f"checkpoint format {ckpt['format']!r} version {ckpt['format_version']!r}, expected "
                     f"{CHECKPOINT_FORMAT!r} version {CHECKPOINT_VERSION}")
            _require(ckpt["name"] == cls.name, f"checkpoint names {ckpt['name']!r}, not {cls.name!r}")
            loader = Refiner if state["registered"] else cls
            back = loader.from_checkpoint(path)
        _require(type(back) is cls, f"from_checkpoint built a {type(back).__name__}, not a {cls.__name__}")
        _require(back.config == model.config, f"the checkpoint's config differs: {back.config!r}")
        _require(back.checkpoint_extra == _EXTRA, f"checkpoint_extra is {back.checkpoint_extra!r}, saved {_EXTRA!r}")
        back.to(dev)
        out = run_eval(m=back)
        _require(torch.equal(out, ref), f"the reloaded refiner differs by up to {_max_diff(out, ref):.3g}")
        how = "Refiner.from_checkpoint (by name)" if state["registered"] else f"{cls.__name__}.from_checkpoint"
        return (f"format {CHECKPOINT_VERSION} with checksums; {how} gives a bitwise equal output and the same "
                "config and extra")

    run.check("checkpoint_round_trip", checkpoint_round_trip, needs=ok, why="forward failed")

    def demo_checkpoint():
        path = cls.demo_checkpoint()
        if path is None:
            return PASS, "none shipped (demo_checkpoint() is None)"
        _require(Path(path).is_file(), f"demo_checkpoint() returns {path}, which is not a file")
        loader = Refiner if state["registered"] else cls
        demo = loader.from_checkpoint(path)
        _require(type(demo) is cls, f"the demo checkpoint builds a {type(demo).__name__}, not a {cls.__name__}")
        return f"{Path(path).name} loads (config and weights verified)"

    run.check("demo_checkpoint", demo_checkpoint)

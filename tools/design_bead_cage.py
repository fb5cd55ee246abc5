"""Design the bead layout of ``phantoms/bead_cage.yaml`` by optimising its Cramer-Rao bound.

The calibration (:mod:`tomoprior.calibration`, default ``gauge="phantom"``) fits the 9
:class:`~tomoprior.geometry.ViewParameters` of each view with the phantom's design frame as
the world frame, so the views are independent and the Fisher information of view ``v`` is::

    F_v = sum_i J_vi^T J_vi / sigma^2         J_vi = d (col, row)_i / d (9 parameters), (2, 9)

with ``J`` the exact Jacobian of :meth:`tomoprior.calibration.FitProblem.jacobian` (closed form
through the projection matrix, autograd through ``ViewParameters.to_view``) at the nominal
frontal and lateral views. ``F_v^-1`` is the Cramer-Rao covariance; it is additive over beads,
so a layout is chosen from a grid of candidate points by a Fedorov-style exchange algorithm:
starting from a random feasible layout, each bead in turn is replaced by the feasible
candidate that lowers the criterion most, until a full sweep changes nothing; several seeded
restarts, the best is kept.

Criterion (weighted A-optimality on the distances, in mm^2)::

    sum over views of var(source_to_detector) + var(source_to_isocenter)
    + 1e3 * sum over the other parameters of max(0, sd / limit - 1)^2

with limits (1 sigma, sigma = 0.1 px, the training beads only, i.e. 80 % of them) well inside
the calibration targets: detector offset 0.05 px (target 0.2 px), in-plane rotation
0.003 deg (0.01 deg), tilts 0.05 deg (0.1 deg). The source angles (primary, secondary)
have no target and no limit.

Physical constraints (hard): bead centres (radius 0.75 mm) inside a cylinder of radius 89 mm
and the box ``|x|, |y|, |z| <= 79`` mm (every bead with its radius within +-80 mm, inside the
default 128^3 x 1.5 mm grid; a real cage 180 mm across the diagonals and 160 mm high);
projections inside both nominal detectors with 10 mm margin and inside a 25 cm
(832 x 0.3 mm) detector with 5 mm margin; 3D spacing >= ``--spacing``
(12 mm); shadow centres >= ``--shadow-radii`` (6) shadow radii apart on each detector in the
nominal frontal and lateral views (shadow radius = bead radius x 1.6). Asymmetry: under
every symmetry of the support cylinder (rotations by 90/180/270 deg about z, mirrors in x, y,
the diagonals and z, and their products) at most ``--max-symmetric`` beads land within 4 mm
of a bead, so no flipped or rotated correspondence can look the same.

Usage::

    PYTHONPATH=. python tools/design_bead_cage.py [--seed 0] [--restarts 4] [--write]

prints the criterion and per-parameter bounds of the current and the new layout; with
``--write`` rewrites the bead lines of ``phantoms/bead_cage.yaml`` (atomically), keeping its
header comments, support body and bead size/material. Deterministic for a given seed (about
3-5 minutes on one core).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import numpy as np
import torch

import tomoprior as tp
from tomoprior._atomic import write_text_atomic
from tomoprior.calibration import FitProblem, bead_design
from tomoprior.geometry import ViewParameters

FIELDS = ViewParameters.SCALAR_FIELDS
SDD, SOD = FIELDS.index("source_to_detector"), FIELDS.index("source_to_isocenter")
BEAD_RADIUS = 0.75
SHADOW_MAG = 1.6          # largest magnification of a bead inside the cage (1500 / (1000 - 79) = 1.63)
SIGMA_PX = 0.1
TRAIN_FRACTION = 0.8      # calibrate() holds out 20 % by default
PIXEL = 0.2
#: 1-sigma design limits (fit on the training beads) for the non-distance parameters.
LIMITS = {
    "u0": 0.05 * PIXEL, "v0": 0.05 * PIXEL,                         # mm (0.05 px)
    "detector_rotation": math.radians(0.003),
    "detector_tilt_u": math.radians(0.05), "detector_tilt_v": math.radians(0.05),
}
BOX = 79.0
CYL_RADIUS = 89.0
FOV_MARGIN_MM = 10.0
#: Smallest detector the cage must fit (mm, square): the 832^2 x 0.3 mm panel of the
#: end-to-end tests (a 25 cm detector), smaller than the default 1536^2 x 0.2 mm one.
MIN_DETECTOR_MM = 832 * 0.3


def nominal_views() -> list:
    """The default bi-planar views (PA frontal, left lateral) the cage is designed for."""
    return [tp.geometry.default_frontal(), tp.geometry.default_lateral()]


def bead_jacobians(points: np.ndarray, views=None) -> np.ndarray:
    """Per-bead Jacobians ``(n_views, n, 2, 9)`` of pixel ``(col, row)`` w.r.t. the 9 view
    parameters (``ViewParameters.SCALAR_FIELDS`` order; mm and rad), at the nominal views,
    phantom gauge; computed by :meth:`FitProblem.jacobian` (the calibration's own Jacobian)."""
    views = nominal_views() if views is None else views
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    obs = [(np.arange(n), np.zeros((n, 2)))] * len(views)
    prob = FitProblem.build(views, points, obs, gauge="phantom")
    j = prob.jacobian(prob.x0())                        # (n_views * 2n, 9 n_views), block diagonal
    out = np.empty((len(views), n, 2, 9))
    for v in range(len(views)):
        out[v] = j[v * 2 * n:(v + 1) * 2 * n, v * 9:(v + 1) * 9].reshape(n, 2, 9)
    return out


def fisher(jac: np.ndarray, sigma_px: float = SIGMA_PX) -> np.ndarray:
    """Fisher information ``(n_views, 9, 9)`` from per-bead Jacobians ``(n_views, n, 2, 9)``."""
    return np.einsum("vnai,vnaj->vij", jac, jac) / sigma_px**2


def crlb(points: np.ndarray, sigma_px: float = SIGMA_PX, fraction: float = 1.0) -> np.ndarray:
    """Cramer-Rao 1-sigma ``(n_views, 9)`` (mm, rad) of the 9 parameters of each nominal view
    for beads at ``points`` ``(n, 3)`` mm, centroid noise ``sigma_px`` per axis, when a
    ``fraction`` of the beads enters the fit (the bound scales as ``1 / sqrt(fraction)``)."""
    f = fisher(bead_jacobians(points), sigma_px) * fraction
    return np.sqrt(np.diagonal(np.linalg.inv(f), axis1=-2, axis2=-1))


def _limit_vector() -> np.ndarray:
    return np.array([LIMITS.get(f, np.inf) for f in FIELDS])


def criterion_from_cov(cov: np.ndarray) -> np.ndarray:
    """Criterion for covariances ``(..., n_views, 9, 9)`` of the training fit -> ``(...)``."""
    var = np.diagonal(cov, axis1=-2, axis2=-1)
    if not np.all(np.isfinite(var)):
        var = np.where(np.isfinite(var), var, 1e12)
    dist = (var[..., SDD] + var[..., SOD]).sum(-1)
    sd = np.sqrt(np.maximum(var, 0.0))
    excess = np.maximum(sd / _limit_vector() - 1.0, 0.0)
    return dist + 1e3 * (excess**2).sum(axis=(-1, -2))


def _criterion(f: np.ndarray) -> float:
    cov = np.linalg.inv(f * TRAIN_FRACTION)
    return float(criterion_from_cov(cov))


def candidates(step: float = 4.0) -> np.ndarray:
    """Grid of allowed bead centres ``(m, 3)`` mm (box, cylinder, both fields of view)."""
    ax = np.arange(-BOX, BOX + 1e-9, step)
    g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    g = g[np.hypot(g[:, 0], g[:, 1]) <= CYL_RADIUS]
    # keep the outer shell and a sparse interior (interior points carry little information)
    outer = (np.abs(g).max(axis=1) >= BOX - 24) | (np.hypot(g[:, 0], g[:, 1]) >= CYL_RADIUS - 24)
    sparse = np.all(np.isclose(np.mod(g + BOX, 3 * step), 0.0), axis=1)
    g = g[outer | sparse]
    return g[in_field_of_view(g)]


def project(points: np.ndarray) -> np.ndarray:
    """Nominal pixel positions ``(n_views, n, 2)``."""
    return np.stack([p.to_view().project_points(points).numpy() for p in nominal_views()])


def in_field_of_view(points: np.ndarray, margin_mm: float = FOV_MARGIN_MM) -> np.ndarray:
    """True where a point projects inside both nominal detectors with ``margin_mm`` to spare,
    and inside a centred ``MIN_DETECTOR_MM`` square detector with 5 mm to spare."""
    ok = np.ones(len(points), bool)
    for p, pix in zip(nominal_views(), project(points)):
        rows, cols = p.detector_shape
        m = margin_mm / PIXEL
        ok &= (pix[:, 0] >= -0.5 + m) & (pix[:, 0] <= cols - 0.5 - m)
        ok &= (pix[:, 1] >= -0.5 + m) & (pix[:, 1] <= rows - 0.5 - m)
        centred = (pix - np.array([cols - 1, rows - 1]) / 2.0) * PIXEL
        ok &= np.all(np.abs(centred) <= MIN_DETECTOR_MM / 2 - 5.0, axis=1)
    return ok


def symmetries() -> list:
    """The 15 non-trivial symmetries (3x3 matrices) of a z-aligned cylinder that map a
    square-symmetric cage onto itself: rotations about z by k x 90 deg times mirrors."""
    rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    mx = np.diag([-1.0, 1, 1])
    mz = np.diag([1.0, 1, -1])
    out = []
    for k in range(4):
        r = np.linalg.matrix_power(rz, k)
        for a in (np.eye(3), mx):
            for b in (np.eye(3), mz):
                m = r @ a @ b
                if not np.allclose(m, np.eye(3)):
                    out.append(m)
    return out


def symmetric_matches(points: np.ndarray, tol: float = 4.0) -> int:
    """Largest number of beads that a non-trivial symmetry maps to within ``tol`` mm of a bead."""
    best = 0
    for m in symmetries():
        q = points @ m.T
        d = np.linalg.norm(q[:, None] - points[None], axis=-1).min(axis=1)
        best = max(best, int((d < tol).sum()))
    return best


def check_layout(points: np.ndarray, spacing: float = 12.0, shadow_radii: float = 6.0) -> dict:
    """Constraint margins of a layout: min 3D spacing (mm), min shadow separation per view
    (in shadow radii), max |coordinate| and radius (mm), FOV, symmetric matches."""
    n = len(points)
    d3 = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(n) * 1e9
    pix = project(points) * PIXEL / (BEAD_RADIUS * SHADOW_MAG)   # in shadow radii
    d2 = [float((np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(n) * 1e9).min()) for p in pix]
    return {
        "min_spacing_mm": float(d3.min()),
        "min_shadow_separation_radii": d2,
        "max_abs_coordinate_mm": float(np.abs(points).max()),
        "max_radius_mm": float(np.hypot(points[:, 0], points[:, 1]).max()),
        "in_field_of_view": bool(in_field_of_view(points).all()),
        "symmetric_matches": symmetric_matches(points),
        "ok": bool(d3.min() >= spacing and min(d2) >= shadow_radii and in_field_of_view(points).all()),
    }


class _Designer:
    def __init__(self, cand, n, spacing, shadow_radii, max_symmetric, rng):
        self.cand, self.n, self.rng = cand, n, rng
        self.spacing, self.max_symmetric = spacing, max_symmetric
        self.jac = bead_jacobians(cand)                                   # (2, m, 2, 9)
        self.info = np.einsum("vnai,vnaj->nvij", self.jac, self.jac) / SIGMA_PX**2  # (m, 2, 9, 9)
        self.pix = project(cand)                                          # (2, m, 2)
        self.min_pix = shadow_radii * BEAD_RADIUS * SHADOW_MAG / PIXEL

    def feasible(self, chosen, exclude=None) -> np.ndarray:
        """Candidates compatible with all chosen beads except position ``exclude``."""
        others = [c for k, c in enumerate(chosen) if k != exclude]
        ok = np.ones(len(self.cand), bool)
        if others:
            o = np.asarray(others)
            ok &= np.linalg.norm(self.cand[:, None] - self.cand[o][None], axis=-1).min(axis=1) >= self.spacing
            for v in range(2):
                d = np.linalg.norm(self.pix[v][:, None] - self.pix[v][o][None], axis=-1).min(axis=1)
                ok &= d >= self.min_pix
        return ok

    def random_start(self):
        chosen = []
        while len(chosen) < self.n:
            ok = np.flatnonzero(self.feasible(chosen))
            if not len(ok):
                raise RuntimeError("constraints too tight: cannot place all beads")
            chosen.append(int(self.rng.choice(ok)))
        return chosen

    def total(self, chosen):
        return self.info[chosen].sum(axis=0)

    def optimise(self, chosen, max_sweeps=12, log=None):
        chosen = list(chosen)
        best = _criterion(self.total(chosen))
        for sweep in range(max_sweeps):
            changed = 0
            for k in self.rng.permutation(self.n):
                base = self.total(chosen) - self.info[chosen[k]]
                ok = np.flatnonzero(self.feasible(chosen, exclude=k))
                f = (base[None] + self.info[ok]) * TRAIN_FRACTION            # (c, 2, 9, 9)
                crit = criterion_from_cov(np.linalg.inv(f))
                order = np.argsort(crit)
                for j in order[:20]:
                    if crit[j] >= best - 1e-12:
                        break
                    trial = chosen.copy()
                    trial[k] = int(ok[j])
                    if symmetric_matches(self.cand[trial]) <= self.max_symmetric:
                        chosen, best = trial, float(crit[j])
                        changed += 1
                        break
            if log:
                log(f"  sweep {sweep}: criterion {best:.4f} mm^2, {changed} exchanges")
            if not changed:
                break
        return chosen, best


def design(n=50, seed=0, restarts=2, spacing=15.0, shadow_radii=8.0, max_symmetric=5, step=4.0,
           log=print) -> np.ndarray:
    """Optimised bead centres ``(n, 3)`` mm (rounded to 0.1 mm, sorted by z)."""
    rng = np.random.default_rng(seed)
    cand = candidates(step)
    # jitter the grid by a seeded sub-step offset so the layout has no lattice symmetry
    cand = cand + rng.uniform(-0.3 * step, 0.3 * step, cand.shape)
    cand = np.round(np.clip(cand, -BOX, BOX), 1)   # the file stores 0.1 mm: optimise what is shipped
    keep = (np.hypot(cand[:, 0], cand[:, 1]) <= CYL_RADIUS) & in_field_of_view(cand)
    cand = cand[keep]
    if log:
        log(f"{len(cand)} candidate positions")
    d = _Designer(cand, n, spacing, shadow_radii, max_symmetric, rng)
    best, best_val = None, np.inf
    for r in range(restarts):
        start = d.random_start()
        if symmetric_matches(cand[start]) > max_symmetric:
            continue
        if log:
            log(f"restart {r}: start criterion {_criterion(d.total(start)):.4f}")
        chosen, val = d.optimise(start, log=log)
        if val < best_val:
            best, best_val = chosen, val
    pts = cand[best]
    if log:
        log(f"best criterion {best_val:.4f} mm^2, symmetric matches {symmetric_matches(pts)}")
    return pts[np.lexsort((pts[:, 1], pts[:, 0], pts[:, 2]))]


def report(name: str, points: np.ndarray) -> str:
    sd = crlb(points)
    sd_t = crlb(points, fraction=TRAIN_FRACTION)
    lines = [f"{name}: {len(points)} beads, criterion (training beads) "
             f"{_criterion(fisher(bead_jacobians(points))):.4f} mm^2"]
    for v, view in enumerate(("frontal", "lateral")):
        lines.append(
            f"  {view}: CRLB all beads / 80 %: SDD {sd[v, SDD]:.3f} / {sd_t[v, SDD]:.3f} mm, "
            f"SOD {sd[v, SOD]:.3f} / {sd_t[v, SOD]:.3f} mm, "
            f"u0 {sd_t[v, 4] / PIXEL:.4f} px, v0 {sd_t[v, 5] / PIXEL:.4f} px, "
            f"rot {math.degrees(sd_t[v, 6]):.4f} deg, tilts {math.degrees(sd_t[v, 7]):.4f} / "
            f"{math.degrees(sd_t[v, 8]):.4f} deg")
    lines.append(f"  constraints: {check_layout(points)}")
    return "\n".join(lines)


BEAD_LINE = re.compile(r"^  - \{type: sphere, label: bead_\d+,.*\}\s*$")


def write_yaml(points: np.ndarray, path: Path) -> None:
    """Replace the bead lines of the phantom file by ``points`` (same size/material/density)."""
    text = path.read_text()
    lines = text.splitlines()
    beads = [i for i, ln in enumerate(lines) if BEAD_LINE.match(ln)]
    if not beads:
        raise ValueError(f"{path}: no bead lines found")
    m = re.search(r"radius: ([0-9.]+), density: ([0-9.]+)", lines[beads[0]])
    mat = re.search(r"material: (\w+)", lines[beads[0]]).group(1)
    new = [f"  - {{type: sphere, label: bead_{k:02d}, material: {mat}, center: [{x:.1f}, {y:.1f}, {z:.1f}], "
           f"radius: {m.group(1)}, density: {m.group(2)}}}" for k, (x, y, z) in enumerate(points + 0.0)]
    out = lines[:beads[0]] + new + lines[beads[-1] + 1:]
    write_text_atomic(path, "\n".join(out) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--spacing", type=float, default=15.0, help="min 3D bead spacing, mm")
    ap.add_argument("--shadow-radii", type=float, default=8.0, help="min shadow separation, shadow radii")
    ap.add_argument("--max-symmetric", type=int, default=5)
    ap.add_argument("--step", type=float, default=4.0, help="candidate grid step, mm")
    ap.add_argument("--write", action="store_true", help="rewrite phantoms/bead_cage.yaml")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    path = Path(__file__).resolve().parents[1] / "phantoms" / "bead_cage.yaml"
    print(report("current bead_cage", bead_design(tp.phantoms.load(path)).positions))
    pts = design(args.n, args.seed, args.restarts, args.spacing, args.shadow_radii, args.max_symmetric,
                 args.step)
    print(report("designed", pts))
    if args.write:
        write_yaml(pts, path)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

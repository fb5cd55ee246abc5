"""The shipped ``bead_cage`` layout: physical constraints and its Cramer-Rao bound.

The layout comes from ``tools/design_bead_cage.py`` (see docs/calibration.md, "Designing
the cage"). Here everything is recomputed from the phantom file: constraints in 3D and on
both default detectors, and the Cramer-Rao bound of the 9 parameters of each view (phantom
gauge, as ``calibrate`` fits by default) from the calibration's own Jacobian, checked against
central finite differences of ``ViewParameters.to_view().project_points``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

import tomoprior as tp
from tomoprior.calibration import FitProblem, bead_design

FIELDS = tp.ViewParameters.SCALAR_FIELDS
SDD, SOD = FIELDS.index("source_to_detector"), FIELDS.index("source_to_isocenter")
SIGMA_PX = 0.1
ROOT = Path(__file__).resolve().parents[2]


def _views():
    return [tp.geometry.default_frontal(), tp.geometry.default_lateral()]


def _fisher_blocks(points, views):
    """Per-view 9x9 Fisher information (sigma 0.1 px) from FitProblem.jacobian (phantom gauge)."""
    n = len(points)
    prob = FitProblem.build(views, points, [(np.arange(n), np.zeros((n, 2)))] * 2, gauge="phantom")
    j = prob.jacobian(prob.x0())
    assert j.shape == (4 * n, 18)
    blocks = [j[v * 2 * n:(v + 1) * 2 * n, v * 9:(v + 1) * 9] for v in range(2)]
    # the phantom gauge decouples the views: off-diagonal blocks are exactly zero
    assert np.all(j[:2 * n, 9:] == 0) and np.all(j[2 * n:, :9] == 0)
    return blocks, [b.T @ b / SIGMA_PX**2 for b in blocks]


@pytest.fixture(scope="module")
def cage():
    return bead_design("bead_cage")


def test_cage_fields_and_support(cage):
    ph = tp.phantoms.load("bead_cage")
    assert ph.name == "bead_cage" and len(cage) == 50
    assert np.allclose(cage.radii, 0.75) and np.allclose(cage.densities, 0.94)
    assert all(m == "steel" for m in cage.materials)
    support = [s for s in ph if not (s.label or "").startswith("bead")]
    assert len(support) == 1 and isinstance(support[0], tp.phantoms.Cylinder)
    # every bead lies inside the support body
    s = support[0]
    r = np.hypot(cage.positions[:, 0], cage.positions[:, 1]) + cage.radii
    assert np.all(r <= float(s.radius)) and np.all(np.abs(cage.positions[:, 2]) + cage.radii <= float(s.height) / 2)


def test_cage_satisfies_the_physical_constraints(cage):
    p, n = cage.positions, len(cage)
    # a real cage: radius <= 90 mm, height <= 180 mm, and every bead within +-80 mm (default grid)
    assert np.hypot(p[:, 0], p[:, 1]).max() + 0.75 <= 90.0
    assert np.all(np.abs(p) + cage.radii[:, None] <= 80.0)
    # 3D spacing >= 15 mm (the design tool's default; the requirement is >= 12 mm)
    d3 = np.linalg.norm(p[:, None] - p[None], axis=-1) + np.eye(n) * 1e9
    assert d3.min() >= 15.0, d3.min()
    for params in _views():
        view = params.to_view()
        pix = view.project_points(p).numpy()
        rows, cols = params.detector_shape
        m = 10.0 / 0.2  # 10 mm margin inside the detector
        assert np.all((pix >= -0.5 + m) & (pix <= np.array([cols, rows]) - 0.5 - m))
        # shadow radius of each bead: radius x its own magnification (SDD / depth from the source)
        src = view.source.numpy()
        beam = -src / np.linalg.norm(src)  # the isocenter is the origin
        depth = (p - src) @ beam
        shadow_px = cage.radii * params.source_to_detector / depth / 0.2
        assert 1.35 < shadow_px.min() / (0.75 / 0.2) and shadow_px.max() / (0.75 / 0.2) < 1.65
        dist = np.linalg.norm(pix[:, None] - pix[None], axis=-1) + np.eye(n) * 1e9
        pair_r = np.maximum(shadow_px[:, None], shadow_px[None])
        # >= 7.5 shadow radii (designed for 8 at magnification 1.6; the requirement is >= 6)
        assert (dist / pair_r).min() >= 7.5, (params.name, (dist / pair_r).min())


def test_cage_has_no_symmetry_that_could_flip_the_correspondence(cage):
    p = cage.positions
    rz = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    worst = 0
    for k in range(4):
        for mx in (1.0, -1.0):
            for mz in (1.0, -1.0):
                m = np.linalg.matrix_power(rz, k) @ np.diag([mx, 1.0, mz])
                if np.allclose(m, np.eye(3)):
                    continue
                d = np.linalg.norm((p @ m.T)[:, None] - p[None], axis=-1).min(axis=1)
                worst = max(worst, int((d < 4.0).sum()))
    assert worst <= 5  # at most 5 of 50 beads land near a bead under any symmetry of the cylinder


def test_jacobian_matches_finite_differences(cage):
    views = _views()
    blocks, _ = _fisher_blocks(cage.positions[:6], views)
    for v, params in enumerate(views):
        for k, f in enumerate(FIELDS):
            h = 1e-6 if f in tp.ViewParameters.ANGLE_FIELDS else 1e-4
            x = float(getattr(params, f))
            plus = params.replace(**{f: x + h}).to_view().project_points(cage.positions[:6]).numpy()
            minus = params.replace(**{f: x - h}).to_view().project_points(cage.positions[:6]).numpy()
            fd = ((plus - minus) / (2 * h)).reshape(-1)
            assert np.allclose(blocks[v][:, k], fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max()), f


def _crlb(points):
    _, info = _fisher_blocks(points, _views())
    return [np.sqrt(np.diag(np.linalg.inv(f))) for f in info]


def test_cage_cramer_rao_bound_of_the_distances(cage):
    """CRLB (sigma 0.1 px, all 50 beads) of SDD < 0.6 mm and SOD < 0.4 mm in both views, and
    the other parameters well inside their targets even with 20 % held out."""
    sd_all = _crlb(cage.positions)
    for sd in sd_all:
        assert sd[SDD] < 0.6 and sd[SOD] < 0.4, (sd[SDD], sd[SOD])
        train = sd * math.sqrt(1 / 0.8)
        assert train[4] / 0.2 < 0.05 and train[5] / 0.2 < 0.05              # detector offset, px
        assert math.degrees(train[6]) < 0.003                                # in-plane rotation
        assert math.degrees(train[7]) < 0.05 and math.degrees(train[8]) < 0.05  # tilts
    # against the previous shell design (46 beads on r = 76 mm near the diagonals): a
    # uniformly filled cylinder of the same size and count is far worse
    rng = np.random.default_rng(0)
    r, a = 76 * np.sqrt(rng.uniform(0, 1, 50)), rng.uniform(0, 2 * np.pi, 50)
    uniform = np.stack([r * np.cos(a), r * np.sin(a), rng.uniform(-74, 74, 50)], axis=1)
    assert all(s[SDD] < 0.5 * u[SDD] for s, u in zip(sd_all, _crlb(uniform)))


def _load_design_tool():
    spec = importlib.util.spec_from_file_location("design_bead_cage", ROOT / "tools" / "design_bead_cage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_design_tool_is_deterministic_and_feasible():
    """A small, fast instance of the optimiser: same seed -> same layout; constraints hold;
    its CRLB agrees with the one computed here."""
    tool = _load_design_tool()
    a = tool.design(n=12, seed=3, restarts=1, step=16.0, spacing=20.0, max_symmetric=3, log=None)
    b = tool.design(n=12, seed=3, restarts=1, step=16.0, spacing=20.0, max_symmetric=3, log=None)
    assert np.array_equal(a, b) and a.shape == (12, 3)
    chk = tool.check_layout(a, spacing=20.0)
    assert chk["ok"] and chk["symmetric_matches"] <= 3
    assert np.allclose(tool.crlb(a), np.stack(_crlb(a)), rtol=1e-9)

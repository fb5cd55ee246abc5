"""calibrate(): targets on simulated points, robustness, gauges, results and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

import tomoprior as tp
from tomoprior.calibration import CalibrationResult, Detections, calibrate
from tomoprior.geometry import triangulate

from .conftest import noisy_points, true_and_initial


def _truth_error(res, true, design, ids_per_view):
    """RMS length (px) of fitted-minus-true projections of the given beads (noise free)."""
    errs = []
    for v, (p, q) in enumerate(zip(res.parameters, true)):
        idx = [design.ids.index(i) for i in ids_per_view[v]]
        pts = design.positions[idx]
        errs.append(p.to_view().project_points(pts).numpy() - q.to_view().project_points(pts).numpy())
    e = np.concatenate(errs)
    return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))


@pytest.fixture(scope="module")
def target_runs(cage):
    """Three seeds of the simulated target experiment: cage, sigma 0.1 px, miscalibrated start."""
    runs = []
    for seed in range(3):
        true, init = true_and_initial(seed)
        pts = noisy_points(true, cage.positions, 0.1, seed)
        runs.append((true, init, calibrate(pts, "bead_cage", init, heldout=0.2, seed=seed)))
    return runs


def test_targets_on_simulated_points(target_runs, cage):
    held, tri, sdd, sod, pp, rot, tilt = [], [], [], [], [], [], []
    for true, _, res in target_runs:
        assert res.converged, res.message
        held.append(_truth_error(res, true, cage, res.heldout_ids))
        # the noise-corrected held-out error is a (noisy) estimate of the truth error
        assert 0.0 <= res.heldout_geometric_rms_px < res.heldout_rms_px
        assert res.heldout_geometric_rms_px < held[-1] + 0.1
        tri.append(res.triangulation_rms_mm)
        for p, q, u in zip(res.parameters, true, res.uncertainty):
            a, b = p.to_dict(), q.to_dict()
            sdd.append((a["source_to_detector"] - b["source_to_detector"], u["source_to_detector"]))
            sod.append((a["source_to_isocenter"] - b["source_to_isocenter"], u["source_to_isocenter"]))
            pp += [(a["detector_offset"][k] - b["detector_offset"][k]) / 0.2 for k in (0, 1)]
            rot.append(a["detector_rotation_deg"] - b["detector_rotation_deg"])
            tilt += [a["detector_tilt_deg"][k] - b["detector_tilt_deg"][k] for k in (0, 1)]
        # the fit residual is the detection noise: sqrt(2) * 0.1 px per bead
        assert 0.11 < res.rms_px < 0.17
        assert 0.08 < res.heldout_rms_px < 0.25
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    assert rms(held) <= 0.1                      # held-out prediction error vs truth, px
    assert max(tri) <= 0.2                       # bi-planar triangulation, mm
    assert rms(pp) <= 0.2 / 3                    # detector offset, px (3-sigma inside 0.2 px)
    assert rms(rot) <= 0.01 / 3                  # in-plane rotation, deg
    assert rms(tilt) <= 0.1                      # tilts, deg (1 sigma; see docs/calibration.md)
    # distances: the reported 1-sigma uncertainty is about 1 mm for this phantom and noise,
    # and the errors are consistent with it
    for err, sd in sdd + sod:
        assert sd <= 1.2 and abs(err) <= 3.5 * sd
    assert rms([e for e, _ in sdd]) <= 1.5 and rms([e for e, _ in sod]) <= 1.0


def test_uncertainty_is_calibrated(target_runs):
    """Normalised errors (error / reported sigma) of all parameters have unit scale."""
    z = []
    for true, _, res in target_runs:
        for p, q, u in zip(res.parameters, true, res.uncertainty):
            for f in tp.ViewParameters.SCALAR_FIELDS:
                err = float(getattr(p, f)) - float(getattr(q, f))
                key = f + "_deg" if f in tp.ViewParameters.ANGLE_FIELDS else f
                sd = math.radians(u[key]) if key.endswith("_deg") else u[key]
                z.append(err / sd)
    assert 0.4 < np.sqrt(np.mean(np.square(z))) < 1.8


def test_missing_beads_and_spurious_blobs(cage):
    true, init = true_and_initial(5)
    pts = noisy_points(true, cage.positions, 0.1, 5)
    rng = np.random.default_rng(7)
    inputs, present = [], []
    for v in range(2):
        keep = np.sort(rng.choice(len(cage), size=38, replace=False))  # 12 beads missing
        spurious = rng.uniform(100, 1400, size=(15, 2))
        allp = np.concatenate([pts[v][keep], spurious])
        order = rng.permutation(len(allp))
        inputs.append(allp[order])
        present.append({cage.ids[k] for k in keep})
    res = calibrate(inputs, "bead_cage", init, heldout=0.2, seed=1)
    assert res.converged
    for v in range(2):
        matched = set(res.residual_ids[v]) | set(res.heldout_ids[v])
        assert matched == present[v]  # every real bead found, no spurious blob matched
    assert _truth_error(res, true, cage, [cage.ids] * 2) < 0.15


@pytest.mark.parametrize("name", ["bead_two_ring", "bead_helix"])
def test_other_phantoms_calibrate(name):
    design = tp.calibration.bead_design(name)
    true, init = true_and_initial(2)
    res = calibrate(noisy_points(true, design.positions, 0.1, 3), name, init, heldout=0.2, seed=0)
    assert res.converged
    assert _truth_error(res, true, design, [design.ids] * 2) < 0.15
    assert res.triangulation_rms_mm < 0.2


def test_kfold_uses_every_bead(cage):
    true, init = true_and_initial(1)
    res = calibrate(noisy_points(true, cage.positions, 0.1, 1), "bead_cage", init, kfold=3)
    assert all(len(r) == len(cage) for r in res.residuals)
    assert all(sorted(h) == sorted(cage.ids) for h in res.heldout_ids)
    assert 0.1 < res.heldout_rms_px < 0.25
    with pytest.raises(ValueError, match="kfold"):
        calibrate(noisy_points(true, cage.positions, 0.1, 1), "bead_cage", init, kfold=1)


def test_view0_gauge_reproduces_the_images(cage):
    true, init = true_and_initial(4)
    pts = noisy_points(true, cage.positions, 0.1, 4)
    res = calibrate(pts, "bead_cage", init, gauge="view0", heldout=0)
    assert res.converged and res.gauge == "view0"
    # view 0's extrinsic parameters stay at the initial values (they define the frame)
    for f in ("primary_angle", "secondary_angle", "source_to_isocenter", "detector_rotation"):
        assert float(getattr(res.parameters[0], f)) == pytest.approx(float(getattr(init[0], f)), abs=1e-12)
        assert res.uncertainty[0][f + "_deg" if f in tp.ViewParameters.ANGLE_FIELDS else f] == 0.0
    assert np.all(np.isfinite(res.pose_uncertainty)) and np.all(res.pose_uncertainty > 0)
    # images predicted through the fitted pose match the truth (gauge-invariant check)
    import torch

    from tomoprior.calibration.fit import rotation_from_vector

    world = cage.positions @ rotation_from_vector(torch.as_tensor(res.pose[:3])).numpy().T + res.pose[3:]
    for p, q in zip(res.parameters, true):
        e = p.to_view().project_points(world).numpy() - q.to_view().project_points(cage.positions).numpy()
        assert np.sqrt(np.mean(np.sum(e**2, axis=1))) < 0.1
    # intrinsic quantity: source-to-detector is the same in every gauge
    assert abs(res.parameters[1].source_to_detector - true[1].source_to_detector) < 4 * res.uncertainty[1][
        "source_to_detector"]


def test_triangulate_exact_points(cage):
    params = [tp.geometry.default_frontal(detector_tilt_u=0.02), tp.geometry.default_lateral(u0=3.0)]
    obs = [p.to_view().project_points(cage.positions).numpy() for p in params]
    xyz = triangulate(params, obs)
    assert np.abs(xyz - cage.positions).max() < 1e-6
    obs[1][3] = np.nan  # one view missing for bead 3: not triangulated
    assert np.all(np.isnan(triangulate(params, obs)[3]))


def test_result_to_dict_and_save(target_runs, tmp_path):
    res = target_runs[0][2]
    d = res.to_dict()
    assert d["schema"] == "tomoprior.calibration" and len(d["views"]) == 2
    assert set(d["views"][0]["uncertainty"]) >= {"source_to_detector", "u0_px", "detector_tilt_u_deg"}
    for name in ("cal.json", "cal.yaml"):
        path = res.save(tmp_path / name)
        text = path.read_text()
        loaded = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
        assert loaded["rms_px"] == pytest.approx(res.rms_px)
        params = CalibrationResult.load_parameters(path)
        assert params[1].source_to_detector == pytest.approx(float(res.parameters[1].source_to_detector))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.json", "cal.yaml"]  # no temp files left
    with pytest.raises(ValueError, match="json"):
        res.save(tmp_path / "cal.txt")
    assert "converged" in res.summary() and "source_to_detector" in res.summary()


def test_non_converging_fit_says_so_and_returns_best(cage):
    true, init = true_and_initial(0)
    res = calibrate(noisy_points(true, cage.positions, 0.1, 0), "bead_cage", init, max_nfev=1)
    assert not res.converged
    assert "did NOT converge" in res.message and "1 evaluations" in res.message
    assert all(len(r) > 0 for r in res.residuals) and math.isfinite(res.rms_px)


def test_bad_input(cage):
    true, init = true_and_initial(0)
    pts = noisy_points(true, cage.positions, 0.1, 0)
    with pytest.raises(ValueError, match=r"found only 5 bead\(s\).*\(col, row\)"):
        calibrate([pts[0][:5], pts[1]], "bead_cage", init)
    with pytest.raises(ValueError, match="does not match the detector shape"):
        calibrate(np.ones((2, 100, 100)), "bead_cage", init)
    img = np.full((2, 64, 64), 1000.0)
    img[1, 3, 4] = np.nan
    small = [p.replace(detector_shape=(64, 64)) for p in init]
    with pytest.raises(ValueError, match=r"view 1 .*NaN"):
        calibrate(img, "bead_cage", small)
    with pytest.raises(ValueError, match=r"available: .*bead_cage"):
        calibrate(pts, "bead_cube", init)
    with pytest.raises(TypeError, match="ViewParameters"):
        calibrate(pts, "bead_cage", tp.Geometry(tp.geometry.DEFAULT_GRID, [p.to_view() for p in init]))
    with pytest.raises(ValueError, match="1 view"):
        calibrate(pts, "bead_cage", init[:1])
    with pytest.raises(ValueError, match="heldout"):
        calibrate(pts, "bead_cage", init, heldout=1.5)
    with pytest.raises(ValueError, match="NaN"):
        calibrate([np.full((10, 2), np.nan), pts[1]], "bead_cage", init)
    # a detection set far from where the geometry puts the phantom: clear matching error
    with pytest.raises(ValueError, match="could be matched"):
        calibrate([Detections.from_points(np.random.default_rng(0).uniform(0, 1536, (40, 2))), pts[1]],
                  "bead_cage", init)

"""``tomoprior check-geometry``: verdict and exit codes, the JSON and PNG it writes, and bad input."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

import tomoprior as tp
from tomoprior.cli.main import cli
from tomoprior.phantoms import Ellipsoid, Phantom


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("ecc")
    g = tp.BiplanarGeometry.from_parameters(binning=24)  # 64 x 64 pixels
    ph = Phantom([Ellipsoid((8, -5, 6), (55, 65, 75), 0.02, angles=(0.3, 0.4, 0.2)),
                  Ellipsoid((-20, 10, -15), (15, 20, 25), 0.01, angles=(1.0, 0.2, 0.5))])
    ims = ph.line_integrals(g).numpy()
    np.save(d / "a.npy", ims[0])
    np.save(d / "b.npy", ims[1])
    g.save(d / "g.yaml")
    g.perturbed({"frontal": {"v0": 2.0}}).save(d / "wrong.yaml")
    return d, ims


def run(d, *args):
    return CliRunner().invoke(cli, ["check-geometry", *map(str, args), "--planes", "64"])


def test_consistent_pair_passes_and_writes_json_and_png(case, tmp_path):
    d, _ = case
    r = run(d, "--xrays", d / "a.npy", d / "b.npy", "--geometry", d / "g.yaml", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and "frontal / lateral" in r.output
    doc = json.loads((tmp_path / "epipolar.json").read_text())
    assert doc["verdict"] == "PASS" and doc["schema"] == "tomoprior.epipolar-check"
    pair = doc["pairs"][0]
    assert len(pair["residual"]) == len(pair["kappa_deg"]) == 64
    assert pair["relative"] < doc["tolerance"]
    assert (tmp_path / "epipolar_residuals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wrong_geometry_fails_with_exit_1(case, tmp_path):
    d, _ = case
    r = run(d, "--xrays", d / "a.npy", "--xrays", d / "b.npy", "--geometry", d / "wrong.yaml", "--out", tmp_path)
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output
    assert json.loads((tmp_path / "epipolar.json").read_text())["verdict"] == "FAIL"


def test_a_pair_that_cannot_be_compared_is_unchecked_not_inconsistent(case, tmp_path):
    """X-rays whose object reaches the detector edges along every epipolar line leave nothing to
    compare: the verdict is not PASS (exit 1), but the message says the check could not be made
    rather than that the X-rays disagree with the geometry."""
    d, ims = case
    np.save(tmp_path / "full_a.npy", ims[0] + 1.0)  # a constant added: nonzero at every edge pixel
    np.save(tmp_path / "full_b.npy", ims[1] + 1.0)
    r = run(d, "--xrays", tmp_path / "full_a.npy", tmp_path / "full_b.npy", "--geometry", d / "g.yaml",
            "--out", tmp_path / "o")
    assert r.exit_code == 1, r.output
    assert "UNCHECKED" in r.output and "could not be checked for frontal / lateral" in r.output
    assert "not consistent" not in r.output
    doc = json.loads((tmp_path / "o" / "epipolar.json").read_text())
    assert doc["verdict"] == "FAIL" and doc["unchecked_pairs"] == ["frontal / lateral"]


def _bad(d, tmp_path, name, array):
    np.save(tmp_path / name, array)
    out = tmp_path / "out"
    r = run(d, "--xrays", tmp_path / name, d / "b.npy", "--geometry", d / "g.yaml", "--out", out)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    assert not (out / "epipolar.json").exists()
    return r.output


def test_intensities_nan_and_wrong_shape_are_refused(case, tmp_path):
    d, ims = case
    assert "intensities" in _bad(d, tmp_path, "t.npy", np.exp(-ims[0]))
    assert "counts" in _bad(d, tmp_path, "c.npy", np.round(4000 * np.exp(-ims[0])).astype(np.int32))
    nan = ims[0].copy()
    nan[3, 4] = np.nan
    assert "NaN" in _bad(d, tmp_path, "n.npy", nan)
    assert "detector of (64, 64)" in _bad(d, tmp_path, "s.npy", ims[0][:, :32])


def test_coincident_sources_and_view_count_are_usage_errors(case, tmp_path):
    d, _ = case
    g = tp.Geometry.load(d / "g.yaml")
    tp.Geometry(g.grid, [g.views[0], g.views[0]]).save(tmp_path / "same.yaml")
    r = run(d, "--xrays", d / "a.npy", d / "a.npy", "--geometry", tmp_path / "same.yaml", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "coincident sources" in r.output
    r = run(d, "--xrays", d / "a.npy", d / "b.npy", d / "b.npy", "--geometry", d / "g.yaml", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "one per view" in r.output
    r = run(d, "--xrays", d / "a.npy", "--geometry", d / "g.yaml")
    assert r.exit_code == 2 and "at least two" in r.output

"""``tomoprior reconstruct`` checks the X-rays against their geometry (epipolar consistency) and
warns, without failing, when they do not fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import tomoprior as tp
from tomoprior.cli.reconstruct import reconstruct
from tomoprior.geometry import VolumeGrid
from tomoprior.phantoms import Ellipsoid, Phantom


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Exact X-rays (64^2 pixels) of two ellipsoids, their geometry and a miscalibrated copy."""
    folder = tmp_path_factory.mktemp("consistency")
    grid = VolumeGrid((24, 24, 24), (8.0, 8.0, 8.0))
    geom = tp.BiplanarGeometry.from_parameters(binning=24, grid=grid)
    ph = Phantom([Ellipsoid((8, -5, 6), (55, 65, 75), 0.02, angles=(0.3, 0.4, 0.2)),
                  Ellipsoid((-20, 10, -15), (15, 20, 25), 0.01, angles=(1.0, 0.2, 0.5))])
    x = ph.line_integrals(geom).numpy()
    paths = []
    for v in range(2):
        paths.append(str(folder / f"view{v}.npy"))
        np.save(paths[-1], x[v].astype(np.float32))
    np.save(folder / "intensity0.npy", np.exp(-x[0]).astype(np.float32))
    geom.save(folder / "true.yaml")
    geom.perturbed({"lateral": {"v0": 12.0, "source_to_detector": 10.0}}).save(folder / "wrong.yaml")  # 2.5 px
    geom.perturbed({"lateral": {"v0": 2.0}}).save(folder / "slightly_wrong.yaml")
    return {"folder": folder, "xrays": paths}


def _run(case, geometry, tmp_path, *extra, xrays=None):
    res = CliRunner().invoke(reconstruct, ["--xrays", *(xrays or case["xrays"]), "--geometry",
                                           str(case["folder"] / geometry), "--refiner", "bp-prior",
                                           "--out", str(tmp_path / "v.nii.gz"), "--overwrite", *extra])
    assert res.exit_code == 0, res.output + repr(res.exception)  # a warning, never a failure
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert (tmp_path / "v.nii.gz").is_file()
    return res.stderr, report


def test_warns_for_a_miscalibrated_geometry_and_not_for_the_true_one(case, tmp_path):
    err, report = _run(case, "true.yaml", tmp_path)
    assert "do not fit the geometry" not in err
    assert report["epipolar_relative"] < 0.02  # measured 6e-3
    err, report = _run(case, "wrong.yaml", tmp_path)
    assert "warning: the X-rays do not fit the geometry" in err and "--consistency-tolerance 0.3" in err
    assert "frontal / lateral" in err
    assert report["epipolar_relative"] > 0.3
    # 2 mm passes the default (meant for uncorrected scatter) but not a tolerance for clean data
    err, report = _run(case, "slightly_wrong.yaml", tmp_path)
    assert "do not fit" not in err and 0.05 < report["epipolar_relative"] < 0.3
    err, report = _run(case, "slightly_wrong.yaml", tmp_path, "--consistency-tolerance", "0.05")
    assert "do not fit" in err
    # a looser tolerance passes the gross error; --no-consistency-check skips the computation
    err, report = _run(case, "wrong.yaml", tmp_path, "--consistency-tolerance", "0.99")
    assert "do not fit" not in err and report["epipolar_relative"] > 0.3
    err, report = _run(case, "wrong.yaml", tmp_path, "--no-consistency-check")
    assert "do not fit" not in err and report["epipolar_relative"] is None


def test_intensities_are_not_checked_but_noted(case, tmp_path):
    xrays = [str(case["folder"] / "intensity0.npy"), case["xrays"][1]]
    err, report = _run(case, "wrong.yaml", tmp_path, xrays=xrays)
    assert "not checked: view 0 does not look like line integrals" in err
    assert "do not fit" not in err and report["epipolar_relative"] is None


def test_bad_tolerance_is_a_usage_error(case, tmp_path):
    res = CliRunner().invoke(reconstruct, ["--xrays", *case["xrays"], "--geometry", str(case["folder"] / "true.yaml"),
                                           "--refiner", "bp-prior", "--out", str(tmp_path / "v.nii.gz"),
                                           "--consistency-tolerance", "0"])
    assert res.exit_code == 2 and "--consistency-tolerance" in res.output
    assert not (tmp_path / "v.nii.gz").exists()


def test_large_images_are_checked_binned_with_their_detector(monkeypatch):
    """Above the size limit the check averages the images down and bins the views alike: the
    same number as checking the pooled images against the binned geometry directly."""
    import torch

    from tomoprior.cli import reconstruct as rc
    from tomoprior.validation import epipolar_consistency

    geom = tp.BiplanarGeometry.from_parameters(binning=12, grid=VolumeGrid((24, 24, 24), (8.0, 8.0, 8.0)))
    ph = Phantom([Ellipsoid((8, -5, 6), (55, 65, 75), 0.02, angles=(0.3, 0.4, 0.2)),
                  Ellipsoid((-20, 10, -15), (15, 20, 25), 0.01, angles=(1.0, 0.2, 0.5))])
    x = ph.line_integrals(geom).double()  # (2, 128, 128)
    monkeypatch.setattr(rc, "CONSISTENCY_MAX_PIXELS", 64)
    notes = []
    got = rc.consistency_check(x, geom, 0.3, notes.append)
    pooled = torch.nn.functional.avg_pool2d(x[:, None], 2)[:, 0]
    binned = tp.Geometry(geom.grid, [v.detach().to(dtype=torch.float64).binned(2) for v in geom.views])
    assert got == pytest.approx(float(epipolar_consistency(pooled, binned).relative), rel=1e-12)
    assert notes == [] and got < 0.05

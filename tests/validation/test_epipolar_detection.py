"""tools/epipolar_detection.py on a tiny case: output structure, threshold, and that a large
miscalibration and a large patient motion are detected while calibrated held-out X-rays are not."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("epipolar_detection", ROOT / "tools" / "epipolar_detection.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[spec.name]
        raise
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def result(tool):
    cases = [
        {"label": "held-out", "kind": "heldout"},
        {"label": "v0 +-8 mm", "kind": "view", "view": "frontal", "errors": [{"v0": 8.0}, {"v0": -8.0}]},
        {"label": "v0 +-0.01 mm", "kind": "view", "view": "frontal", "errors": [{"v0": 0.01}, {"v0": -0.01}]},
        {"label": "10 mm up", "kind": "motion_fixed",
         "moves": [{"rotation_deg": [0.0, 0.0, 0.0], "translation_mm": [0.0, 0.0, 10.0]}]},
    ]
    cfg = tool.StudyConfig(skulls=[(1.0, "normal", 0)], skull_grid=40, cthead=False, binning=24, realisations=4,
                           heldout=2, physics=("corrected",), smoothings=(1.5,), percentile=95.0,
                           curve_sizes={"v0": ("mm", [2.0])}, cases=cases, heel=False)
    return tool.run_study(cfg)


def test_structure(result, tool, tmp_path):
    assert [(c["dataset"], c["physics"], c["smoothing"]) for c in result["columns"]] == [("skulls", "corrected", 1.5)]
    col = result["columns"][0]
    assert len(col["calibrated"]) == 4
    det = col["detection"]
    assert {k: det[k]["n"] for k in det} == {"held-out": 2, "v0 +-8 mm": 8, "v0 +-0.01 mm": 8, "10 mm up": 4}
    for d in det.values():  # the rate is the fraction of scores above the threshold
        assert d["rate"] == pytest.approx(np.mean(np.asarray(d["scores"]) > col["threshold"]))
    assert min(col["calibrated"]) <= col["threshold"] <= max(col["calibrated"])
    assert col["threshold"] == pytest.approx(np.percentile(col["calibrated"], 95))
    curve = result["curves"][0]["parameters"]["v0"]
    assert curve["sizes"] == [0.0, 2.0] and [len(s) for s in curve["scores"]] == [4, 4]
    assert np.median(curve["scores"][1]) > 2 * np.median(curve["scores"][0])
    paths = tool.write_outputs(result, tmp_path, figure=False)
    assert json.loads(paths[0].read_text())["columns"][0]["threshold"] == col["threshold"]
    assert "| v0 +-8 mm | 100 % (8) |" in paths[1].read_text()


def test_detects_large_errors_not_calibrated(result):
    col = result["columns"][0]
    det, thr = col["detection"], col["threshold"]
    assert det["v0 +-8 mm"]["rate"] == 1.0 and min(det["v0 +-8 mm"]["scores"]) > 3 * thr
    assert det["10 mm up"]["rate"] == 1.0
    # calibrated X-rays of other poses and noise stay near the threshold, far below the large errors
    assert max(det["held-out"]["scores"]) < 1.5 * thr
    # a negligible error looks like the calibrated geometry
    assert np.median(det["v0 +-0.01 mm"]["scores"]) < 1.2 * np.median(col["calibrated"])

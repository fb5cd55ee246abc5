"""The bead phantoms: loadable by name, sized for the default field, non-overlapping shadows,
material and size fields that round-trip through YAML."""

from __future__ import annotations

import numpy as np
import pytest

import tomoprior as tp
import tomoprior.calibration
from tomoprior.calibration import bead_design

NAMES = ["bead_cage", "bead_two_ring", "bead_helix"]


@pytest.mark.parametrize("name", NAMES)
def test_bead_phantoms_load_fit_the_field_and_do_not_overlap(name):
    ph = tp.phantoms.load(name)
    d = bead_design(ph)
    assert len(d) == {"bead_cage": 50, "bead_two_ring": 24, "bead_helix": 48}[name]
    assert d.positions.shape == (len(d), 3) and len(set(d.ids)) == len(d)
    # every bead (with its radius) inside +-80 mm
    assert np.all(np.abs(d.positions) + d.radii[:, None] <= 80.0)
    assert all(m == "steel" for m in d.materials)
    assert np.allclose(d.densities, 0.94)
    # shadows separated by > 1.5 shadow diameters in the nominal frontal and lateral views
    for params in (tp.geometry.default_frontal(), tp.geometry.default_lateral()):
        pix = params.to_view().project_points(d.positions).numpy()
        dist = np.linalg.norm(pix[:, None] - pix[None], axis=-1) + np.eye(len(d)) * 1e9
        shadow_px = 2 * d.radii.max() * 1.6 / 0.2
        assert dist.min() > 1.5 * shadow_px, (name, dist.min())


def test_cage_is_deep_in_both_views():
    d = bead_design("bead_cage")
    # depth spread along the frontal (y) and lateral (x) beams
    assert d.positions[:, 0].std() > 45 and d.positions[:, 1].std() > 45 and d.positions[:, 2].std() > 35


def test_helix_size_code_windows_are_unique():
    d = bead_design("bead_helix")
    bits = "".join("1" if r > 0.75 else "0" for r in d.radii)
    windows = [bits[i:i + 6] for i in range(len(bits) - 5)]
    assert len(set(windows)) == len(windows)
    assert set(np.round(d.radii, 3)) == {0.5, 1.0}
    # z rises monotonically along the helix
    assert np.all(np.diff(d.positions[:, 2]) > 0)


def test_material_round_trips_through_yaml(tmp_path):
    ph = tp.phantoms.load("bead_two_ring")
    path = ph.save(tmp_path / "copy.yaml")
    again = tp.phantoms.load(path)
    assert [s.material for s in again] == [s.material for s in ph]
    assert again[0].material == "pmma" and again[2].material == "steel"
    moved = again.translated((1.0, 2.0, 3.0)).scaled(2.0)
    assert moved[2].material == "steel"
    with pytest.raises(ValueError, match="material"):
        tp.phantoms.Sphere((0, 0, 0), 1.0, material="")


def test_unknown_phantom_lists_available():
    with pytest.raises(ValueError, match="bead_cage"):
        bead_design("no_such_phantom")


def test_non_bead_phantom_is_rejected():
    with pytest.raises(ValueError, match="bead"):
        bead_design("shepp_logan_3d")

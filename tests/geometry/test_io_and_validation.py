"""File round trips (YAML, JSON, ASTRA) and clear errors for bad geometry input."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import tomoprior as tp
from tests.conftest import random_geometry
from tomoprior._atomic import atomic_path, write_text_atomic


def _same(g1: tp.Geometry, g2: tp.Geometry) -> None:
    assert g1.grid == g2.grid
    assert g1.names == g2.names
    assert g1.detector_shapes == g2.detector_shapes
    assert torch.equal(g1.vectors, g2.vectors)  # bit-exact


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_file_round_trip_is_exact(tmp_path, small_grid, suffix):
    geom = random_geometry(1, small_grid)
    path = tmp_path / f"g{suffix}"
    geom.save(path)
    again = tp.Geometry.load(path)
    _same(geom, again)
    assert type(again) is tp.Geometry
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_biplanar_round_trip_keeps_parameters(tmp_path, suffix):
    geom = tp.BiplanarGeometry.from_parameters(
        tp.geometry.default_frontal(u0=1.25, detector_tilt_u=math.radians(0.7)),
        tp.geometry.default_lateral(source_to_detector=1490.0, detector_rotation=math.radians(-0.3)),
        binning=8,
    )
    path = tmp_path / f"bi{suffix}"
    geom.save(path)
    again = tp.Geometry.load(path)
    assert isinstance(again, tp.BiplanarGeometry)
    assert torch.allclose(again.vectors, geom.vectors, atol=1e-9, rtol=0)
    for before, after in zip(geom.parameters, again.parameters):
        a, b = before.to_dict(), after.to_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert np.asarray(b[key]).tolist() == pytest.approx(np.asarray(a[key]).tolist()) if key != "name" \
                else b[key] == a[key]
    text = path.read_text()
    assert "source_to_isocenter" in text and "schema_version" in text


def test_astra_round_trip_is_exact(small_grid):
    views = random_geometry(2, small_grid, shapes=((20, 30), (20, 30))).views
    geom = tp.Geometry(small_grid, views)
    vol_geom, proj_geom = geom.to_astra()
    assert proj_geom["type"] == "cone_vec"
    assert proj_geom["DetectorRowCount"] == 20 and proj_geom["DetectorColCount"] == 30
    assert proj_geom["Vectors"].shape == (2, 12)
    assert (vol_geom["GridSliceCount"], vol_geom["GridRowCount"], vol_geom["GridColCount"]) == small_grid.shape
    lo, hi = small_grid.bounds()
    assert vol_geom["option"]["WindowMinX"] == lo[0] and vol_geom["option"]["WindowMaxZ"] == hi[2]
    again = tp.Geometry.from_astra(vol_geom, proj_geom, names=["view0", "view1"])
    _same(geom, again)


def test_astra_projection_array_order():
    p = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (views, rows, cols)
    a = tp.geometry.projections_to_astra(p)
    assert a.shape == (3, 2, 4) and a[1, 0, 2] == p[0, 1, 2]
    assert np.array_equal(tp.geometry.projections_from_astra(a), p)


def test_astra_needs_one_detector_shape(small_grid):
    geom = random_geometry(2, small_grid)  # two different shapes
    with pytest.raises(ValueError, match="one detector shape"):
        geom.to_astra()


# --- bad input --------------------------------------------------------------------------

GOOD = dict(source=(0, 1000, 0), detector_center=(0, -500, 0), u=(0.5, 0, 0), v=(0, 0, -0.5), shape=(10, 12))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(source=(0, math.nan, 0)), "source contains non-finite"),
        (dict(detector_center=(0, math.inf, 0)), "detector_center contains non-finite"),
        (dict(u=(0, 0)), "u must have exactly three"),
        (dict(shape=(0, 12)), r"shape \(rows, cols\)\[0\] must be a positive integer"),
        (dict(shape=(10, -3)), r"shape \(rows, cols\)\[1\] must be a positive integer"),
        (dict(shape=(10,)), "pair of positive integers"),
        (dict(u=(0, 0, 0)), "u has zero length"),
        (dict(v=(0, 0, 0)), "v has zero length"),
        (dict(v=(1.0, 0, 0)), "u and v are parallel"),
        (dict(source=(3, -500, 7)), "source lies on the detector plane"),
    ],
)
def test_bad_view_raises_naming_the_field(change, match):
    with pytest.raises(ValueError, match=match):
        tp.View(**{**GOOD, **change}, name="frontal")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(shape=(0, 4, 4)), r"grid.shape\[0\]"),
        (dict(shape=(4, 4, 4), spacing=(1, -1, 1)), r"grid.spacing\[1\]"),
        (dict(shape=(4, 4, 4), center=(0, math.nan, 0)), r"grid.center\[1\]"),
    ],
)
def test_bad_grid_raises_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tp.VolumeGrid(**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pixel_pitch=0.0), "pixel_pitch must be > 0"),
        (dict(pixel_pitch=(0.2, -0.2)), "pixel_pitch must be > 0"),
        (dict(source_to_detector=-5.0), "source_to_detector must be > 0"),
        (dict(source_to_isocenter=0.0), "source_to_isocenter must be > 0"),
        (dict(u0=math.nan), "u0 must be finite"),
        (dict(detector_shape=(10, 0)), r"detector_shape\[1\]"),
    ],
)
def test_bad_parameters_raise_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tp.ViewParameters(**kwargs)


def test_source_inside_the_volume_is_rejected():
    grid = tp.VolumeGrid((10, 10, 10), (10, 10, 10))
    view = tp.View(source=(0, 20, 0), detector_center=(0, -500, 0), u=(1, 0, 0), v=(0, 0, -1), shape=(8, 8))
    with pytest.raises(ValueError, match=r"source .* lies inside the volume"):
        tp.Geometry(grid, [view])


def _write(tmp_path: Path, d: dict, name="g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


def _good_dict():
    return tp.BiplanarGeometry.from_parameters(binning=16).to_dict()


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(schema="something.else"), "schema must be 'tomoprior.geometry'"),
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda d: d.update(colour="red"), r"unknown top-level field\(s\) \['colour'\]"),
        (lambda d: d.pop("grid"), "grid is missing"),
        (lambda d: d.update(views=[]), "views must be a non-empty list"),
        (lambda d: d["views"][1].pop("u"), r"views\[1\].u is missing"),
        (lambda d: d["views"][0].update(source=[0, "x", 0]), r"views\[0\].source must be three numbers"),
        (lambda d: d["views"][0].update(shape=[10, 0]), r"views\[0\].shape\[1\] must be a positive integer"),
        (lambda d: d["views"][0].update(extra=1), r"views\[0\] has unknown field"),
        (lambda d: d["grid"].update(spacing=[1, 0, 1]), r"grid.spacing\[1\]"),
        (lambda d: d["parameters"][0].update(source_to_detector=1400.0), r"parameters\[0\] and views\[0\] disagree"),
        (lambda d: d["parameters"][1].update(primary_angle_deg="ninety"), r"parameters\[1\].primary_angle_deg"),
        (lambda d: d.update(units={"length": "cm"}), "units.length must be 'mm'"),
    ],
)
def test_bad_files_raise_naming_the_field(tmp_path, mutate, match):
    d = _good_dict()
    mutate(d)
    with pytest.raises(ValueError, match=match):
        tp.Geometry.load(_write(tmp_path, d))


def test_unreadable_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        tp.Geometry.load(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=r"end in .yaml, .yml or .json"):
        tp.Geometry.load(tmp_path / "g.txt")
    bad = tmp_path / "broken.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON") as info:
        tp.Geometry.load(bad)
    assert str(bad) in str(info.value)


def test_writes_are_atomic(tmp_path):
    target = tmp_path / "keep.yaml"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.yaml"]
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    with pytest.raises(ValueError, match="does not exist"):
        tp.BiplanarGeometry.from_parameters(binning=16).save(tmp_path / "nope" / "g.yaml")

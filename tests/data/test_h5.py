"""The HDF5 dataset format: round trip, append, atomicity, and clear errors on bad files."""

import h5py
import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior import data


def _sample(geom, k, split="train", variant="normal"):
    g = torch.Generator().manual_seed(k)
    vol = torch.rand(geom.grid.shape, generator=g) * 0.05
    xr = tp.project(vol, geom).float()
    return data.Sample(volume=vol, grid=geom.grid, xrays=xr, geometry=geom,
                       labels={"variant": variant, "age_years": 0.5 + k, "cephalic_index": 80.0 + k},
                       provenance={"seed": k}, split=split)


@pytest.fixture
def geom():
    grid = tp.VolumeGrid((12, 10, 8), (16.0, 18.0, 20.0), center=(1.0, 2.0, 3.0))
    return tp.BiplanarGeometry.from_parameters(grid=grid, binning=64)


def test_round_trip_and_append(tmp_path, geom):
    path = tmp_path / "d.h5"
    with data.DatasetWriter(path, compression="lzf") as w:
        for k in range(3):
            w.append(_sample(geom, k, split=("train", "val", "test")[k], variant=("normal", "sagittal", "normal")[k]))
    with data.DatasetFile(path) as ds:
        assert len(ds) == 3 and ds.volume_shape == (12, 10, 8) and ds.xray_shape == (2, 24, 24)
        s = ds.read(1)
        ref = _sample(geom, 1)
        assert torch.equal(s.volume, ref.volume) and torch.equal(s.xrays, ref.xrays)
        assert s.grid == geom.grid and isinstance(s.geometry, tp.BiplanarGeometry)
        assert torch.allclose(s.geometry.vectors, geom.vectors.double())
        assert s.labels == {"variant": "sagittal", "age_years": 1.5, "normal": False, "cephalic_index": 81.0}
        assert s.split == "val" and s.provenance["seed"] == 1 and s.provenance["tomoprior_version"] == tp.__version__
        summary = ds.summary()
        assert summary["per_split"] == {"train": 1, "val": 1, "test": 1}
        assert summary["per_variant"]["normal"] == {"train": 1, "val": 0, "test": 1}
        assert ds.attrs["compression"] == "lzf"
    with h5py.File(path) as f:  # chunked per sample and compressed
        assert f["volume"].chunks == (1, 12, 10, 8) and f["volume"].compression == "lzf"
    with data.DatasetWriter(path, mode="a") as w:
        w.append(_sample(geom, 3))
    with data.DatasetFile(path) as ds:
        assert len(ds) == 4 and torch.equal(torch.from_numpy(ds.volume(3)), _sample(geom, 3).volume)
        assert ds.labels(0)["variant"] == "normal"
        with pytest.raises(IndexError):
            ds.volume(4)


def test_nothing_half_written(tmp_path, geom):
    path = tmp_path / "d.h5"
    with data.DatasetWriter(path) as w:
        w.append(_sample(geom, 0))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with data.DatasetWriter(path, mode="a") as w:
            w.append(_sample(geom, 1))
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    new = tmp_path / "new.h5"
    with pytest.raises(ValueError, match="NaN"):
        with data.DatasetWriter(new) as w:
            bad = _sample(geom, 0)
            bad.volume[0, 0, 0] = float("nan")
            w.append(bad)
    assert not new.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]  # no temporary left behind
    with pytest.raises(ValueError, match="differs from the file"):
        with data.DatasetWriter(path, mode="a") as w:
            other = tp.BiplanarGeometry.from_parameters(grid=tp.VolumeGrid((6, 6, 6), (30.0,) * 3), binning=64)
            w.append(_sample(other, 0))
    with pytest.raises(ValueError, match="xray_kind is 'line_integrals'"):
        with data.DatasetWriter(path, mode="a", attrs={"xray_kind": "radiograph"}) as w:
            w.append(_sample(geom, 1))
    with pytest.raises(ValueError, match="no sample"):
        with data.DatasetWriter(tmp_path / "empty.h5"):
            pass
    assert path.read_bytes() == before


def test_bad_files_give_clear_errors(tmp_path, geom):
    path = tmp_path / "d.h5"
    with data.DatasetWriter(path) as w:
        for k in range(4):
            w.append(_sample(geom, k))
    # truncated
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(data.DatasetFormatError, match="truncated"):
        with data.DatasetFile(trunc) as ds:
            for i in range(len(ds)):
                ds.read(i)
    # not HDF5 at all
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"hello" * 100)
    with pytest.raises(data.DatasetFormatError, match="not a readable HDF5"):
        data.DatasetFile(junk)
    # a foreign HDF5 file
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(data.DatasetFormatError, match="not a tomoprior dataset"):
        data.DatasetFile(foreign)
    # wrong version, unfinished write, inconsistent lengths
    for attr, value, match in (("schema_version", 99, "schema_version 99"), ("n_samples", -1, "not closed cleanly"),
                               ("n_samples", 5, "has 4 entries but n_samples is 5")):
        bad = tmp_path / f"bad_{attr}_{value}.h5"
        bad.write_bytes(path.read_bytes())
        with h5py.File(bad, "a") as f:
            f.attrs[attr] = value
        with pytest.raises(data.DatasetFormatError, match=match):
            data.DatasetFile(bad)
    with pytest.raises(data.DatasetFormatError):
        data.TomopriorDataset(foreign)


def test_merge(tmp_path, geom):
    parts = []
    for j in range(2):
        p = tmp_path / f"p{j}.h5"
        with data.DatasetWriter(p) as w:
            w.append(_sample(geom, j))
        parts.append(p)
    out = data.merge(parts, tmp_path / "all.h5")
    with data.DatasetFile(out) as ds:
        assert len(ds) == 2 and ds.provenance(1)["seed"] == 1


def test_content_digest_ignores_write_times_and_layout_but_not_content(tmp_path, geom):
    """Two writes of the same samples differ in bytes (times, provenance, compression) but not
    in content; a changed voxel, geometry, label or split changes the content digest."""

    def write(path, *, compression="gzip", k1=1, split1="val", variant1="sagittal", g1=None, prov=0):
        with data.DatasetWriter(path, compression=compression) as w:
            w.append(_sample(geom, 0))
            s = _sample(g1 or geom, k1, split=split1, variant=variant1)
            s.provenance = {"seed": k1, "note": prov}
            w.append(s)
        with data.DatasetFile(path) as ds:
            return ds.content_sha256()

    ref = write(tmp_path / "a.h5")
    assert len(ref) == 64
    # another time, compression and provenance record: other bytes, the same content
    again = write(tmp_path / "b.h5", compression="lzf", prov=1)
    assert again == ref
    assert (tmp_path / "a.h5").read_bytes() != (tmp_path / "b.h5").read_bytes()
    moved = tp.BiplanarGeometry.from_parameters(grid=geom.grid, binning=64, isocenter=(0.0, 0.5, 0.0))
    changed = {"volume and X-rays": write(tmp_path / "c.h5", k1=7),
               "split": write(tmp_path / "d.h5", split1="test"),
               "label": write(tmp_path / "e.h5", variant1="normal"),
               "geometry": write(tmp_path / "f.h5", g1=moved)}
    for what, digest in changed.items():
        assert digest != ref, what
    assert len(set(changed.values())) == len(changed)

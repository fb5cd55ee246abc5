"""Generation: deterministic per-sample seeds (independent of workers and engine), the torch
Dataset with DataLoader workers, and the ``tomoprior dataset`` commands."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

import tomoprior as tp
from tomoprior import data
from tomoprior.cli.dataset import dataset as dataset_cli
from tomoprior.data.synthetic import skull_module

SMALL = dict(grid=32, binning=32, phantom="shepp_logan", supersample=1)


def _arrays(path):
    with data.DatasetFile(path) as ds:
        return (np.stack([ds.volume(i) for i in range(len(ds))]), np.stack([ds.xrays(i) for i in range(len(ds))]),
                [ds.geometry_text(i) for i in range(len(ds))], ds.splits())


@pytest.fixture(scope="module")
def serial_file(tmp_path_factory):
    pert = data.GeometryPerturbation(offset_mm=3.0, tilt_deg=1.0)
    specs = data.make_specs(6, seed=11, perturbation=pert, **SMALL)
    path = tmp_path_factory.mktemp("gen") / "serial.h5"
    data.generate(specs, path, workers=1)
    return path, specs


def test_specs_are_deterministic_and_split(serial_file):
    _, specs = serial_file
    again = data.make_specs(6, seed=11, perturbation=data.GeometryPerturbation(offset_mm=3.0, tilt_deg=1.0), **SMALL)
    assert specs == again
    assert len({s.seed for s in specs}) == 6
    assert [s.split for s in specs] == data.assign_splits(6, 11)
    more = data.make_specs(2, seed=11, start=6, **SMALL)
    assert [s.index for s in more] == [6, 7] and more[0].seed == data.sample_seed(11, 6)
    with pytest.raises(ValueError, match="unknown variant"):
        data.make_specs(2, variants=["sagittal"], **SMALL)
    with pytest.raises(ValueError, match="binning"):
        data.make_specs(2, **{**SMALL, "binning": 7})


def test_pool_and_dask_give_the_same_file_content(serial_file, tmp_path):
    path, specs = serial_file
    pooled = data.generate(specs, tmp_path / "pool.h5", workers=2)
    ref = _arrays(path)
    others = [_arrays(pooled)]
    try:
        import dask  # noqa: F401  (the optional "dask" extra)

        others.append(_arrays(data.generate_dask(specs, tmp_path / "dask.h5", partitions=3, scheduler="threads")))
    except ImportError:
        pass
    for other in others:
        np.testing.assert_array_equal(other[0], ref[0])
        np.testing.assert_array_equal(other[1], ref[1])
        assert other[2] == ref[2] and other[3] == ref[3]
    # the perturbed geometry recorded per sample re-projects the stored volume onto the stored X-rays
    with data.DatasetFile(path) as ds:
        s = ds.read(2)
        assert torch.allclose(tp.project(s.volume, s.geometry), s.xrays, atol=1e-5)
        assert not torch.allclose(tp.project(s.volume, s.nominal_geometry), s.xrays, atol=1e-3)
    assert not [p for p in tmp_path.iterdir() if "shard" in p.name]  # shards cleaned up


def test_torch_dataset_splits_and_dataloader_workers(serial_file):
    path, specs = serial_file
    full = data.TomopriorDataset(path)
    train = data.TomopriorDataset(path, split="train")
    n_split = {s: sum(sp.split == s for sp in specs) for s in ("train", "val", "test")}
    assert len(full) == 6 and len(train) == n_split["train"]
    assert len(data.TomopriorDataset(path, split="test")) == n_split["test"]
    resplit = data.TomopriorDataset(path, split="train", split_seed=5)
    assert resplit.indices == [i for i, s in enumerate(data.assign_splits(6, 5)) if s == "train"]
    item = full[1]
    assert item["volume"].shape == (32, 32, 32) and item["xrays"].shape == (2, 48, 48)
    assert item["vectors"].shape == (2, 12) and item["variant"] == "normal"
    loader = DataLoader(full, batch_size=2, num_workers=2, shuffle=False)
    batches = list(loader)
    assert len(batches) == 3
    vols = torch.cat([b["volume"] for b in batches])
    ref = torch.stack([full[i]["volume"] for i in range(6)])
    assert torch.equal(vols, ref)
    assert [i for b in batches for i in b["index"].tolist()] == list(range(6))
    geo = tp.geometry.io.loads(batches[0]["geometry"][1])
    assert torch.allclose(geo.vectors, batches[0]["vectors"][1])
    objs = DataLoader(data.TomopriorDataset(path, geometry_as="object"), batch_size=3, num_workers=2,
                      collate_fn=data.TomopriorDataset.collate)
    first = next(iter(objs))
    assert isinstance(first["geometry"][0], tp.Geometry) and first["xrays"].shape == (3, 2, 48, 48)
    with pytest.raises(ValueError, match="split"):
        data.TomopriorDataset(path, split="training")
    # an open dataset pickles without its h5py handle (spawn-started workers, Dask)
    import pickle

    clone = pickle.loads(pickle.dumps(full))
    assert clone._ds is None and torch.equal(clone[2]["xrays"], full[2]["xrays"])


def test_cli_make_info_and_append(tmp_path):
    out = tmp_path / "s.h5"
    args = ["make", "--n", "3", "--grid", "32", "--binning", "32", "--phantom", "shepp_logan", "--out", str(out),
            "--seed", "2", "--perturb", "offset=1,tilt=0.5", "--quiet"]
    res = CliRunner().invoke(dataset_cli, args)
    assert res.exit_code == 0, res.output
    assert "wrote 3 samples" in res.output and "samples/s" in res.output
    res = CliRunner().invoke(dataset_cli, ["make", "--n", "2", "--grid", "32", "--binning", "32", "--phantom",
                                           "shepp_logan", "--out", str(out), "--append", "--quiet"])
    assert res.exit_code == 0, res.output
    info = CliRunner().invoke(dataset_cli, ["info", str(out), "--json"])
    assert info.exit_code == 0, info.output
    s = json.loads(info.output)
    assert s["n_samples"] == 5 and s["volume_shape"] == [32, 32, 32] and s["xray_shape"] == [2, 48, 48]
    assert sum(s["per_split"].values()) == 5 and s["schema"] == "tomoprior.dataset v1"
    text = CliRunner().invoke(dataset_cli, ["info", str(out)])
    assert text.exit_code == 0 and "normal" in text.output and "kB per sample" in text.output
    bad = CliRunner().invoke(dataset_cli, ["make", "--n", "2", "--out", str(tmp_path / "x.h5"), "--perturb", "zz=1"])
    assert bad.exit_code != 0 and "unknown perturbation key" in bad.output
    foreign = tmp_path / "f.h5"
    foreign.write_bytes(b"\x89HDF\r\n" + b"0" * 64)
    res = CliRunner().invoke(dataset_cli, ["info", str(foreign)])
    assert res.exit_code != 0 and "not a readable HDF5" in res.output


@pytest.mark.skipif(skull_module() is None, reason="procedural skull phantom not installed")
def test_skull_samples_carry_variant_labels(tmp_path):
    variants = skull_module().VARIANTS
    specs = data.make_specs(2, seed=0, grid=32, binning=32, variants=[variants[0], variants[1]], supersample=1)
    s1 = data.generate_sample(specs[1])
    assert s1.labels["variant"] == variants[1] and s1.labels["normal"] is False
    assert s1.labels.get("cephalic_index") is not None and float(s1.volume.max()) > 0.03  # there is bone
    assert torch.allclose(tp.project(s1.volume, s1.geometry), s1.xrays, atol=1e-5)


def test_failed_generation_writes_nothing(tmp_path):
    good = data.make_specs(1, seed=0, **SMALL)[0]
    bad = data.SampleSpec(index=1, seed=5, variant="normal", age_years=1.0, split="train", grid=32, binning=7,
                          phantom="shepp_logan", supersample=1)
    with pytest.raises(ValueError, match="binning factor 7"):
        data.generate([good, bad], tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


def test_cli_dask_engine(tmp_path):
    pytest.importorskip("dask")
    out = tmp_path / "d.h5"
    res = CliRunner().invoke(dataset_cli, ["make", "--n", "2", "--grid", "32", "--binning", "32", "--phantom",
                                           "shepp_logan", "--engine", "dask", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    ref = tmp_path / "p.h5"
    data.generate(data.make_specs(2, seed=0, grid=32, binning=32, phantom="shepp_logan"), ref)
    a, b = _arrays(out), _arrays(ref)
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]


@pytest.mark.skipif(data.drr.physics_radiograph() is None, reason="tomoprior.physics.radiograph not available")
def test_cli_radiographs(tmp_path):
    out = tmp_path / "r.h5"
    res = CliRunner().invoke(dataset_cli, ["make", "--n", "2", "--grid", "32", "--binning", "32", "--phantom",
                                           "shepp_logan", "--kind", "radiograph", "--photons", "500", "--out",
                                           str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    with data.DatasetFile(out) as ds:
        assert ds.attrs["xray_kind"] == "radiograph"
        xr = ds.xrays(0)
        assert xr.min() >= 0 and 300 < np.median(xr[xr > xr.max() * 0.9]) < 700  # open beam ~ 500 counts
        assert ds.provenance(0)["augmentation"]["physics"]["photons_per_pixel"] == 500.0


def test_generation_restores_torch_threads(tmp_path):
    pytest.importorskip("dask")
    before = torch.get_num_threads()
    specs = data.make_specs(2, seed=3, **SMALL)
    data.generate_dask(specs, tmp_path / "t.h5", partitions=2, scheduler="threads")
    assert torch.get_num_threads() == before


def test_skull_anatomy_version_reaches_the_phantom():
    """``skull_anatomy`` selects the skull model version per sample (v1: the first model, which
    the demo weights were trained on); a bad value is an error naming the choices."""
    with pytest.raises(ValueError, match="skull_anatomy must be 'v1' or 'v2'"):
        data.make_specs(1, skull_anatomy="v0")
    kw = {"grid": 16, "binning": 32, "supersample": 1, "variants": ["normal"]}
    v1, v2 = (data.make_specs(1, seed=3, skull_anatomy=a, **kw)[0] for a in ("v1", "v2"))
    assert (v1.skull_anatomy, v2.skull_anatomy) == ("v1", "v2") and data.make_specs(1, **kw)[0].skull_anatomy == "v2"
    s1, s2 = data.generate_sample(v1), data.generate_sample(v2)
    assert s1.provenance["spec"]["skull_anatomy"] == "v1"
    assert not torch.equal(s1.volume, s2.volume)

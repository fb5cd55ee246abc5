"""The shipped real head CTs: listed, placed in LPS millimetres, valued as HU, licensed, and
seen by a bi-planar geometry aimed at them (and warned about when it is not)."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch

import tomoprior as tp
from tomoprior import data
from tomoprior._yaml import load_yaml


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def headsq_hu():
    return data.real_ct("headsq", units="HU")


def test_real_cts_are_listed_with_licences_and_provenance():
    assert data.real_cts() == ("cthead", "headsq")
    licences = {"cthead": {"Announcement.txt", "CThead.info"}, "headsq": {"Copyright.txt"}}
    for name in data.real_cts():
        folder = data.REAL_CT_DIR / name
        assert licences[name] <= {p.name for p in folder.iterdir()}, name
        prov = load_yaml(folder / "provenance.yaml", what="provenance")
        # the provenance describes the file that ships
        assert prov["output_sha256"] == _sha256(folder / f"{name}.nii.gz"), name
        assert len(prov["input_sha256"]) == 64 and prov["tool"] == "tools/make_real_cts.py"
    assert "assumed" in load_yaml(data.REAL_CT_DIR / "cthead" / "provenance.yaml", what="p")["spacing_note"]


def test_unknown_real_ct_and_bad_units():
    with pytest.raises(ValueError, match="unknown real CT 'skull'; the shipped ones are cthead, headsq"):
        data.real_ct("skull")
    with pytest.raises(ValueError, match="units must be"):
        data.real_ct("headsq", units="HU+1024")


def test_headsq_values_and_placement(headsq_hu):
    vol = headsq_hu
    assert vol.units == "HU" and vol.grid.shape == (93, 64, 64)
    assert vol.grid.spacing == (1.5, 3.2, 3.2)
    assert vol.grid.center == pytest.approx((100.8, -100.8, -69.0))  # off-centre, as the file places it
    assert vol.metadata["orientation"] == "LAI" and vol.metadata["name"] == "headsq"
    hu = vol.data.numpy()
    assert hu.min() == -1024.0  # stored 0
    # soft tissue: the histogram peak between -200 and 200 HU lies within 0..100 HU
    counts, edges = np.histogram(hu, bins=np.arange(-200, 201, 10))
    assert 0 <= edges[np.argmax(counts)] <= 100
    assert (hu > 700).mean() > 0.01  # bone (jaw, vertebrae, skull base)
    # anatomy where the placement says: the jaw (bone) lies anterior (smaller y) of the spine
    bone = hu > 700
    y = vol.grid.voxel_centers()[..., 1].numpy()
    front, back = y < vol.grid.center[1], y >= vol.grid.center[1]
    assert bone[front].sum() > 0 and bone[back].sum() > 0
    mu = data.real_ct("headsq", energy_kev=70.0)
    assert mu.units == "mu_per_mm" and mu.metadata["energy_kev"] == 70.0
    assert torch.allclose(mu.data, data.hu_to_mu(vol.data, 70.0))


def test_cthead_values_and_placement():
    vol = data.real_ct("cthead", units="HU")
    assert vol.grid.shape == (113, 256, 256) and vol.grid.spacing == (2.0, 1.0, 1.0)
    assert vol.grid.center == (0.0, 0.0, 0.0)
    assert vol.metadata["orientation"] == "LPI"
    hu = vol.data.numpy()
    counts, edges = np.histogram(hu, bins=np.arange(-200, 201, 10))
    assert 0 <= edges[np.argmax(counts)] <= 100  # brain and soft tissue
    # where the placement says: the vault's bone mass above the centre, the dental fillings
    # (metal, over 2000 HU) below it and in front (anterior is -y)
    xyz = vol.grid.voxel_centers().numpy()
    assert xyz[hu > 700][:, 2].mean() > 10.0
    metal = xyz[hu > 2000].mean(axis=0)
    assert metal[2] < -20.0 and metal[1] < -40.0


def test_headsq_drr_from_an_aimed_biplanar_geometry(headsq_hu):
    vol = headsq_hu.to_mu()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # aimed: no warning
        geom = tp.BiplanarGeometry.from_parameters(grid=vol.grid, binning=8, isocenter="volume")
    assert geom.coverage() == pytest.approx((1.0, 1.0))
    # the volume centre lands on the detector centre of both views
    centre = geom.project_points([vol.grid.center])[:, 0]
    assert centre.numpy() == pytest.approx(np.full((2, 2), 95.5), abs=1e-6)
    drr = tp.project(vol.data, geom)
    assert drr.shape == (2, 192, 192) and bool(torch.isfinite(drr).all())
    for v in range(2):
        img = drr[v]
        assert float(img.max()) > 3.0  # line integrals through a head: several mu*mm
        assert float((img > 0.1).float().mean()) > 0.2  # the head fills a good part of the image
        # no edge of the image is cut: the head's shadow does not touch two opposite borders
        assert float(img[0].max()) < 0.5 * float(img.max()) or float(img[-1].max()) < 0.5 * float(img.max())
    # the total of a cone-beam DRR is the volume's integral magnified: within 10% of
    # sum(mu) dV * M^2 / pitch^2 at the isocenter magnification M = 1.5
    view = geom.views[0]
    pitch = view.pixel_pitch[0]
    dv = float(np.prod(vol.grid.spacing))
    expected = float(vol.data.sum()) * dv * 1.5**2 / pitch**2
    for v in range(2):
        assert float(drr[v].sum()) == pytest.approx(expected, rel=0.10)


def test_an_unaimed_geometry_warns_and_loses_the_volume(headsq_hu):
    vol = headsq_hu.to_mu()
    with pytest.warns(tp.GeometryWarning, match=r"only 4\d% of the volume box .*centre \[100\.8, -100\.8, -69\.0\].*"
                                                  r"isocenter='volume'"):
        geom = tp.BiplanarGeometry.from_parameters(grid=vol.grid, binning=8)
    assert max(geom.coverage()) < 0.5
    aimed = geom.aimed_at(vol.grid)
    assert aimed.coverage() == pytest.approx((1.0, 1.0))
    lost, full = tp.project(vol.data, geom), tp.project(vol.data, aimed)
    assert float(lost.sum()) < 0.8 * float(full.sum())


def test_synthesize_warns_when_the_volume_brings_an_unseen_grid(headsq_hu):
    geom = tp.BiplanarGeometry.from_parameters(binning=16)  # built for the default grid at the origin
    with pytest.warns(tp.GeometryWarning, match=r"only 4\d% of the volume box"):
        data.synthesize(headsq_hu, geom)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = data.synthesize(headsq_hu, geom.aimed_at(headsq_hu.grid))
    assert res.xrays.shape == (2, 96, 96) and float(res.xrays.amax()) > 3.0

"""The built-in ``atlas`` refiner: the mean and nearest-case atlases, their fit, checkpoints,
the refiner contract, and ``tomoprior train`` / ``tomoprior evaluate`` with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomoprior import data, project, refiners
from tomoprior.cli.evaluate import evaluate as evaluate_cmd
from tomoprior.cli.train import train as train_cmd
from tomoprior.data import DatasetFile
from tomoprior.refiners import Atlas, Refiner, build_prior
from tomoprior.refiners.testing import check_refiner, tiny_geometry
from tomoprior.studies.evaluation import fit_atlas


def _blobs(n: int, grid, seed: int) -> torch.Tensor:
    """``(n, nz, ny, nx)`` float32: one Gaussian blob per case at a random place and size."""
    gen = torch.Generator().manual_seed(seed)
    c = grid.voxel_centers(dtype=torch.float32)
    half = torch.tensor([s * k / 2 for s, k in zip(grid.spacing_xyz, grid.shape_xyz)])
    out = torch.empty(n, *grid.shape)
    for i in range(n):
        center = (torch.rand(3, generator=gen) - 0.5) * half
        radius = (0.2 + 0.3 * torch.rand(3, generator=gen)) * half
        out[i] = 0.04 * torch.exp(-(((c - center) / radius) ** 2).sum(-1))
    return out


@pytest.fixture(scope="module")
def cases():
    """Six cases on the contract's 16^3 geometry: volumes (1/mm), their X-rays and priors."""
    geom = tiny_geometry()
    vols = _blobs(6, geom.grid, seed=1)
    xrays = project(vols, geom).float()
    return {"geom": geom, "vols": vols, "xrays": xrays, "prior": build_prior(xrays, geom)}


def _fit(cases, n_train: int = 4, **cfg) -> Atlas:
    atlas = refiners.load("atlas", **cfg)
    g = cases["geom"]
    # two batches of different sizes, targets with and without the channel axis
    atlas.fit_closed_form([(cases["xrays"][:1], g, cases["vols"][:1, None]),
                           (cases["xrays"][1:n_train], g, cases["prior"][1:n_train], cases["vols"][1:n_train])])
    return atlas.eval()


def test_mean_atlas_is_the_numpy_mean_of_the_training_volumes(cases):
    atlas = _fit(cases)
    want = np.mean(cases["vols"][:4].numpy().astype(np.float64), axis=0)
    assert atlas.config.num_cases == 4 and atlas.config.volume_shape == (16, 16, 16)
    assert atlas.config.spacing_mm == pytest.approx((12.0, 12.0, 12.0))
    out = atlas(cases["xrays"][4:], cases["geom"], cases["prior"][4:])
    assert out.shape == (2, 1, 16, 16, 16) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0, 0].numpy(), want, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(out[1, 0].numpy(), want, rtol=1e-6, atol=1e-9)
    assert atlas.case_volumes.shape[0] == 0  # the mean atlas keeps one volume, not the cases


def test_mean_atlas_ignores_the_xrays_and_the_prior(cases):
    atlas = _fit(cases)
    g = cases["geom"]
    a = atlas(cases["xrays"][4:], g, cases["prior"][4:])
    other = cases["xrays"][4:].flip(-1) * 3.0 + 1.0
    b = atlas(other, g, build_prior(other, g))
    assert torch.equal(a, b)
    # the output is a copy: writing into it leaves the atlas unchanged
    a.zero_()
    assert torch.equal(atlas(other, g, build_prior(other, g)), b)


def test_nearest_returns_the_training_volume_itself(cases):
    g = cases["geom"]
    for descriptor in ("prior", "xrays"):
        atlas = _fit(cases, mode="nearest", descriptor=descriptor)
        out = atlas(cases["xrays"][:4], g, cases["prior"][:4])
        for i in range(4):
            assert torch.equal(out[i, 0], cases["vols"][i]), (descriptor, i)
        pos, dist = atlas.nearest(cases["xrays"][:4], cases["prior"][:4])
        assert pos[:, 0].tolist() == [0, 1, 2, 3]
        assert dist[:, 0].abs().max() < 1e-6
        # a case outside the training set gets one of the training volumes, the nearest by the stated distance
        pos, dist = atlas.nearest(cases["xrays"][4:5], cases["prior"][4:5], k=4)
        q = atlas.descriptors(cases["xrays"][4:5], cases["prior"][4:5]).double()
        rms = ((q - atlas.case_descriptors.double()) ** 2).mean(1).sqrt()
        assert pos[0].tolist() == torch.argsort(rms).tolist()
        np.testing.assert_allclose(dist[0].numpy(), torch.sort(rms).values.numpy(), rtol=1e-12)
        assert torch.equal(atlas(cases["xrays"][4:5], g, cases["prior"][4:5])[0, 0], cases["vols"][int(pos[0, 0])])


def test_nearest_k_averages_the_k_nearest(cases):
    g = cases["geom"]
    atlas = _fit(cases, mode="nearest", k=2)
    pos, _ = atlas.nearest(cases["xrays"][5:], cases["prior"][5:])
    want = cases["vols"][pos[0]].mean(0)
    assert torch.allclose(atlas(cases["xrays"][5:], g, cases["prior"][5:])[0, 0], want)
    # k beyond the number of cases: the mean of all of them (the mean atlas)
    everything = _fit(cases, mode="nearest", k=10)
    assert torch.allclose(everything(cases["xrays"][5:], g, cases["prior"][5:])[0, 0], cases["vols"][:4].mean(0),
                          atol=1e-8)


def test_fitted_atlases_round_trip_through_checkpoints_and_pass_the_contract(cases, tmp_path):
    g = cases["geom"]
    for mode in ("mean", "nearest"):
        atlas = _fit(cases, mode=mode)
        path = atlas.save_checkpoint(tmp_path / f"{mode}.pt")
        ckpt = refiners.read_checkpoint(path)
        assert ckpt["format_version"] == 2 and ckpt["config"]["num_cases"] == 4
        back = Refiner.from_checkpoint(path)
        assert isinstance(back, Atlas) and back.config == atlas.config
        assert torch.equal(back(cases["xrays"], g, cases["prior"]), atlas(cases["xrays"], g, cases["prior"]))
        assert back.case_index.tolist() == ([0, 1, 2, 3] if mode == "nearest" else [])
        assert check_refiner(back, raise_on_failure=False).passed


def test_the_empty_atlas_passes_the_contract_and_returns_air_with_a_warning(cases):
    with pytest.warns(UserWarning, match="the atlas is empty"):
        assert check_refiner("atlas").passed
        assert check_refiner("atlas", overrides={"mode": "nearest", "k": 3}).passed
    atlas = refiners.load("atlas")
    with pytest.warns(UserWarning, match="the atlas is empty") as caught:
        out = atlas.reconstruct(cases["xrays"][0], cases["geom"])
        atlas.reconstruct(cases["xrays"][0], cases["geom"])
    assert len(caught) == 1  # once per atlas, not per call
    assert out.shape == (1, 16, 16, 16) and not out.any()


def test_errors_name_the_problem(cases):
    g = cases["geom"]
    atlas = _fit(cases)
    other = tiny_geometry(n=8)
    xr = project(cases["vols"][:1, ::2, ::2, ::2].contiguous(), other).float()
    with pytest.raises(ValueError, match=r"volumes of shape \(16, 16, 16\).*\(8, 8, 8\)"):
        atlas(xr, other, build_prior(xr, other))
    with pytest.raises(ValueError, match="no training samples"):
        refiners.load("atlas").fit_closed_form([])
    bad = cases["vols"][:2].clone()
    bad[1, 3, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"training sample 1.*NaN"):
        refiners.load("atlas").fit_closed_form([(cases["xrays"][:2], g, bad)])
    with pytest.raises(ValueError, match="configured for volumes"):
        refiners.load("atlas", volume_shape=(8, 8, 8)).fit_closed_form([(cases["xrays"][:1], g, cases["vols"][:1])])
    with pytest.raises(ValueError, match="mode must be one of"):
        refiners.load("atlas", mode="median")
    with pytest.raises(ValueError, match="mode 'nearest'"):
        atlas.nearest(cases["xrays"][:1], cases["prior"][:1])


# -- tomoprior train / evaluate ------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory):
    """4 skulls on a 16^3 grid, 16^2-pixel X-rays: 2 train, 1 val, 1 test."""
    path = tmp_path_factory.mktemp("atlas") / "tiny.h5"
    data.generate(data.make_specs(4, seed=0, grid=16, binning=96, fractions=(0.5, 0.25, 0.25), supersample=1), path)
    return path


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_cli_train_then_evaluate(tiny_h5, tmp_path):
    with DatasetFile(tiny_h5) as ds:
        train_rows = [i for i, s in enumerate(ds.splits()) if s == "train"]
        want = np.mean([ds.volume(i).astype(np.float64) for i in train_rows], axis=0)
    for mode in ("mean", "nearest"):
        out = tmp_path / mode
        res = _ok(CliRunner().invoke(train_cmd, ["--refiner", "atlas", "--set", f"mode={mode}", "--data", str(tiny_h5),
                                                 "--out", str(out), "--quiet", "--batch-size", "2"]))
        summary = json.loads(res.output.strip().splitlines()[-1])
        assert summary["steps"] == 0 and np.isfinite(summary["best"]["val_psnr"])
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert record["fit"] == "closed_form" and record["cases"] == len(train_rows) and record["mode"] == mode
        atlas = Refiner.from_checkpoint(out / "best.pt")
        np.testing.assert_allclose(atlas.mean_volume.numpy(), want, rtol=1e-6, atol=1e-9)
        if mode == "nearest":
            assert atlas.case_index.tolist() == train_rows
            # the evaluation's own fit (no checkpoint) builds the same atlas as training
            assert torch.equal(fit_atlas(refiners.load("atlas", mode="nearest"), tiny_h5).case_volumes,
                               atlas.case_volumes)
    res = _ok(CliRunner().invoke(evaluate_cmd, ["--data", str(tiny_h5), "--refiner", f"atlas@{tmp_path}/mean/best.pt",
                                                "--compare", f"nearest={tmp_path}/nearest/best.pt,fitted=atlas",
                                                "--groups", "all", "--out", str(tmp_path / "eval")]))
    assert "atlas: mode=mean, built from the 2 train volumes" in res.output
    per = {lbl: json.loads((tmp_path / "eval" / f"{lbl}.json").read_text()) for lbl in ("atlas", "fitted")}
    # the checkpoint from training and the atlas the evaluation builds itself score the same
    a, b = (per[k]["per_sample"] for k in ("atlas", "fitted"))
    assert len(a) == 1 and a[0]["psnr_x2ctgan"] == pytest.approx(b[0]["psnr_x2ctgan"], rel=1e-9)
    assert np.isfinite(a[0]["psnr_x2ctgan"])

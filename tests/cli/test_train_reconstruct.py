"""``tomoprior train`` and ``tomoprior reconstruct`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tomoprior import data, refiners
from tomoprior.cli.reconstruct import read_xray, reconstruct
from tomoprior.cli.train import train
from tomoprior.geometry.geometry import Geometry
from tomoprior.refiners import Refiner


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory) -> Path:
    """6 skulls on a 32^3 grid, 32^2-pixel X-rays; 4 train, 1 val, 1 test."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    data.generate(data.make_specs(6, seed=0, grid=32, binning=48, fractions=(4 / 6, 1 / 6, 1 / 6)), path)
    return path


@pytest.fixture(scope="module")
def sample(tiny_h5, tmp_path_factory):
    """The test sample as files: two .npy line-integral images and the geometry YAML."""
    folder = tmp_path_factory.mktemp("sample")
    ds = data.TomopriorDataset(tiny_h5, split="test", geometry_as="object")
    item = ds[0]
    geom: Geometry = item["geometry"]
    geom.save(folder / "geom.yaml")
    paths = []
    for v in range(geom.num_views):
        p = folder / f"view{v}.npy"
        np.save(p, item["xrays"][v].numpy())
        paths.append(str(p))
    return {"folder": folder, "xrays": paths, "geometry": str(folder / "geom.yaml"), "item": item, "geom": geom}


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_reconstruct_bp_prior_writes_nifti_on_the_geometry_grid(sample, tmp_path):
    out = tmp_path / "vol.nii.gz"
    res = _ok(CliRunner().invoke(reconstruct, ["--xrays", *sample["xrays"], "--geometry", sample["geometry"],
                                               "--refiner", "bp-prior", "--out", str(out)]))
    assert json.loads(res.output.strip().splitlines()[-1])["shape"] == [32, 32, 32]
    assert out.is_file() and (tmp_path / "vol.png").is_file()
    geom = sample["geom"]
    # round trip through tomoprior.data's reader: same LPS grid, same values
    vol = data.load_nifti(out, units="mu_per_mm")
    assert vol.grid.shape == geom.grid.shape
    assert np.allclose(vol.grid.spacing, geom.grid.spacing) and np.allclose(vol.grid.center, geom.grid.center)
    x = torch.from_numpy(np.stack([np.load(p) for p in sample["xrays"]]))[None]
    expected = refiners.load("bp-prior", normalization="chord").reconstruct(x, geom)[0, 0]
    assert torch.allclose(vol.data, expected, atol=1e-6)
    # the affine itself: RAS = diag(-1, -1, 1) @ LPS affine of the grid (index (i, j, k) = (x, y, z))
    img = nib.load(str(out))
    assert np.allclose(img.affine, np.diag([-1.0, -1.0, 1.0, 1.0]) @ geom.grid.affine())
    assert img.shape == geom.grid.shape[::-1]
    # chord-normalised back-projection is in 1/mm: same order of magnitude as the true volume
    assert 0.2 < float(expected.mean() / sample["item"]["volume"].mean()) < 5


def test_reconstruct_reads_intensity_png_and_tiff(sample, tmp_path):
    p = np.load(sample["xrays"][0]).astype(np.float64)
    i0 = 60000.0
    counts = np.round(i0 * np.exp(-p)).astype(np.uint16)
    import skimage.io

    skimage.io.imsave(tmp_path / "a.png", counts, check_contrast=False)
    skimage.io.imsave(tmp_path / "a.tif", counts.astype(np.float32), check_contrast=False)
    for name in ("a.png", "a.tif"):
        got = read_xray(tmp_path / name, i0=i0)
        assert np.abs(got - p).max() < 2.0 / counts.min()  # 16-bit rounding of I, propagated to -ln I
    # default I0 = the image's maximum: shifts by ln(i0 / max)
    got = read_xray(tmp_path / "a.png")
    assert np.allclose(got, p - np.log(i0 / counts.max()), atol=2.0 / counts.min())
    with pytest.raises(ValueError, match="unsupported"):
        (tmp_path / "a.jpg").write_bytes(b"x")
        read_xray(tmp_path / "a.jpg")


def test_reconstruct_errors_are_clear(sample, tmp_path):
    out = str(tmp_path / "v.nii.gz")
    res = CliRunner().invoke(reconstruct, ["--xrays", sample["xrays"][0], "--geometry", sample["geometry"],
                                           "--refiner", "bp-prior", "--out", out])
    assert res.exit_code != 0 and "2 views but 1 X-ray" in res.output
    res = CliRunner().invoke(reconstruct, ["--xrays", *sample["xrays"], "--geometry", sample["geometry"],
                                           "--refiner", "bp-prior", "--out", str(tmp_path / "v.vtk")])
    assert res.exit_code != 0 and ".nii.gz" in res.output
    assert not (tmp_path / "v.nii.gz").exists()


def test_train_bp_prior_then_reconstruct_with_checkpoint(tiny_h5, sample, tmp_path):
    run = tmp_path / "bp"
    res = _ok(CliRunner().invoke(train, ["--refiner", "bp-prior", "--data", str(tiny_h5), "--out", str(run),
                                         "--batch-size", "2", "--quiet"]))
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert np.isfinite(summary["best"]["val_psnr"])
    model = Refiner.from_checkpoint(run / "best.pt")
    assert model.config.gain != 1.0  # fitted
    out = tmp_path / "fit.nii.gz"
    _ok(CliRunner().invoke(reconstruct, [*sample["xrays"], "--geometry", sample["geometry"], "--refiner",
                                         "bp-prior", "--checkpoint", str(run / "best.pt"), "--out", str(out)]))
    vol = data.load_nifti(out, units="mu_per_mm")
    x = torch.from_numpy(np.stack([np.load(p) for p in sample["xrays"]]))[None]
    assert torch.allclose(vol.data, model.reconstruct(x, sample["geom"])[0, 0], atol=1e-6)
    res = CliRunner().invoke(reconstruct, [*sample["xrays"], "--geometry", sample["geometry"], "--refiner",
                                           "psctnet", "--checkpoint", str(run / "best.pt"), "--out", str(out)])
    assert res.exit_code == 2 and "already exist" in res.output and "--overwrite" in res.output
    res = CliRunner().invoke(reconstruct, [*sample["xrays"], "--geometry", sample["geometry"], "--refiner",
                                           "psctnet", "--checkpoint", str(run / "best.pt"), "--out", str(out),
                                           "--overwrite"])
    assert res.exit_code == 2 and "holds a 'bp-prior' refiner" in res.output


def test_train_psctnet_cli_one_epoch_resume_and_reconstruct(tiny_h5, sample, tmp_path):
    pytest.importorskip("psctnet")
    run = tmp_path / "psct"
    micro = ["--set", "xray_size=32", "--set", "enc3d_widths=[8, 8, 8]", "--set", "enc2d_widths=[8, 8, 8]",
             "--set", "dense_layers=1", "--set", "agp_dim=16", "--set", "agp_heads=2", "--set", "disc_layers=2",
             "--set", "disc_width=8", "--set", "bim_d_state=4"]
    args = ["--refiner", "psctnet", "--preset", "tiny", "--data", str(tiny_h5), "--out", str(run), "--epochs", "1",
            "--batch-size", "4", "--quiet", *micro]
    res = CliRunner().invoke(train, [*args, "--set", "nonsense_field=1"])
    assert res.exit_code != 0 and "nonsense_field" in res.output
    _ok(CliRunner().invoke(train, args))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    ckpt = refiners.read_checkpoint(run / "last.pt")
    assert set(ckpt["extra"]["optimizers"]) == {"generator", "discriminator"} and ckpt["extra"]["step"] == 1
    assert tuple(ckpt["config"]["volume_shape"]) == (32, 32, 32)  # taken from the data
    res = CliRunner().invoke(train, args)
    assert res.exit_code != 0 and "--resume" in res.output
    # resuming a finished run is a no-op that reports the stored state
    res = _ok(CliRunner().invoke(train, [*args, "--resume"]))
    assert json.loads(res.output.strip().splitlines()[-1])["steps"] == 1
    assert torch.equal(refiners.read_checkpoint(run / "last.pt")["state_dict"]["head.weight"],
                       ckpt["state_dict"]["head.weight"])
    # the trained network reconstructs through the CLI
    out = tmp_path / "psct.nii.gz"
    _ok(CliRunner().invoke(reconstruct, [*sample["xrays"], "--geometry", sample["geometry"], "--refiner", "psctnet",
                                         "--checkpoint", str(run / "best.pt"), "--out", str(out)]))
    assert nib.load(str(out)).shape == (32, 32, 32)


def test_train_nproc_launches_torchrun(tiny_h5, tmp_path, monkeypatch):
    import subprocess
    import sys

    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    argv = ["--nproc", "2", "--data", str(tiny_h5), "--out", str(tmp_path / "r"), "--max-steps", "1"]
    monkeypatch.setattr(sys, "argv", ["tomoprior", "train", *argv])
    _ok(CliRunner().invoke(train, argv))
    (cmd,) = calls
    i = cmd.index("--nproc_per_node")
    assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[i + 1] == "2"
    assert cmd[cmd.index("-m", 3) + 1] == "tomoprior.cli.train"
    assert "--nproc" not in cmd and "train" not in cmd and cmd[-2:] == ["--max-steps", "1"]
    assert not (tmp_path / "r").exists()  # nothing trained in the launcher itself

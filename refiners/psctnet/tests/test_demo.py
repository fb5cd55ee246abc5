"""The shipped demo weights: present, documented, and better than the baseline on the
built-in phantom through ``tomoprior reconstruct --demo`` (what a fresh install runs)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from tomoprior.cli.reconstruct import reconstruct
from tomoprior.refiners import Refiner, read_checkpoint

from psctnet import PSCTNet


def _run(args):
    res = CliRunner().invoke(reconstruct, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


def test_demo_weights_are_shipped_small_and_carry_their_provenance():
    path = PSCTNet.demo_checkpoint()
    assert path is not None and path.is_file(), "refiners/psctnet/psctnet/weights/ must hold the demo weights"
    assert path.stat().st_size < 8 * 2**20  # a few MB
    ckpt = read_checkpoint(path)
    assert ckpt["name"] == "psctnet" and "optimizers" not in ckpt["extra"]
    prov = ckpt["extra"]["provenance"]
    assert prov["data_command"].startswith("tomoprior dataset make") and "--seed" in prov["data_command"]
    assert prov["train_command"].startswith("tomoprior train") and prov["train_seed"] is not None
    assert len(prov["data_sha256"]) == 64
    model = Refiner.from_checkpoint(path)
    assert isinstance(model, PSCTNet) and model.config.volume_shape == (64, 64, 64)


def test_reconstruct_demo_out_of_the_box_beats_bp_prior(tmp_path):
    net = _run(["--demo", "--out", str(tmp_path / "demo.nii.gz")])
    assert net["refiner"] == "psctnet" and net["checkpoint"] == str(PSCTNet.demo_checkpoint())
    for key in ("out", "png", "phantom_png"):
        assert Path(net[key]).is_file() and Path(net[key]).parent == tmp_path
    img = nib.load(tmp_path / "demo.nii.gz")
    assert img.shape == (64, 64, 64) and np.isfinite(np.asarray(img.dataobj)).all()
    base = _run(["--demo", "--refiner", "bp-prior", "--out", str(tmp_path / "bp.nii.gz")])
    m, b = net["metrics"], base["metrics"]
    # the trained network is far closer to the phantom than the unlearned back-projection
    assert m["psnr_x2ctgan"] > b["psnr_x2ctgan"] + 3.0
    assert m["ssim_x2ctgan"] > b["ssim_x2ctgan"] + 0.1
    assert m["mae_hu"] < 0.5 * b["mae_hu"]
    assert m["proj_rel_l2"] < b["proj_rel_l2"]
    assert m["dice_bone"] > 0.2 and m["assd_mm"] is not None  # it finds the skull; bp-prior has no bone
    assert b["dice_bone"] == 0.0 and b["assd_mm"] is None


def test_reconstruct_demo_errors_are_clear(tmp_path):
    res = CliRunner().invoke(reconstruct, ["--demo", "--refiner", "bp-prior", "--checkpoint", "demo",
                                           "--out", str(tmp_path / "x.nii.gz")])
    assert res.exit_code != 0 and "ships no demo weights" in res.output
    res = CliRunner().invoke(reconstruct, ["--demo", "--demo-variant", "cubic", "--out", str(tmp_path / "x.nii.gz")])
    assert res.exit_code != 0 and "--demo-variant must be one of" in res.output
    res = CliRunner().invoke(reconstruct, ["--refiner", "psctnet", "--out", str(tmp_path / "x.nii.gz")])
    assert res.exit_code != 0 and "--geometry is required" in res.output
    res = CliRunner().invoke(reconstruct, ["--out", str(tmp_path / "x.nii.gz")])
    assert res.exit_code != 0 and "--refiner is required" in res.output


@pytest.mark.parametrize("variant", ["sagittal"])
def test_reconstruct_demo_other_variant_and_explicit_demo_checkpoint(tmp_path, variant):
    r = _run(["--demo", "--demo-variant", variant, "--demo-age", "0.5", "--refiner", "psctnet", "--checkpoint",
              "demo", "--out", str(tmp_path / "v.nii.gz")])
    assert r["phantom"] == {"variant": variant, "age_years": 0.5}
    assert np.isfinite(r["metrics"]["psnr_x2ctgan"])

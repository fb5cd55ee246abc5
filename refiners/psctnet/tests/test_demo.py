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


def test_demo_weights_are_checksummed_and_refused_when_damaged(tmp_path):
    """The shipped file is checkpoint format 2 (its SHA-256 verifies on load, its
    re-export is recorded in the provenance), and a copy with bytes flipped in its tensor
    records is refused instead of reconstructing 13 dB worse."""
    import io
    import struct
    import warnings
    import zipfile

    from tomoprior.refiners import CHECKPOINT_VERSION, CheckpointError, CheckpointWarning, weights_sha256

    path = PSCTNet.demo_checkpoint()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)  # a current-format file: no warning
        ckpt = read_checkpoint(path)
    assert ckpt["format_version"] == CHECKPOINT_VERSION == 2
    assert ckpt["weights_sha256"] == weights_sha256(ckpt["state_dict"])
    (upgrade,) = ckpt["extra"]["provenance"]["format_upgrades"]
    assert upgrade["from_format_version"] == 1 and "identical" in upgrade["check"]
    raw = bytearray(path.read_bytes())
    for info in zipfile.ZipFile(io.BytesIO(bytes(raw))).infolist():
        if "/data/" in info.filename and info.file_size >= 8:
            n, m = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            start = info.header_offset + 30 + n + m + 4
            raw[start:start + 4] = bytes(b ^ 0xFF for b in raw[start:start + 4])
    bad = tmp_path / "demo_copy.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"demo_copy\.pt.*(CRC|damaged)"):
        Refiner.from_checkpoint(bad)
    res = CliRunner().invoke(reconstruct, ["--demo", "--checkpoint", str(bad), "--out", str(tmp_path / "d.nii.gz")])
    assert res.exit_code == 2 and "demo_copy.pt" in res.output and not (tmp_path / "d.nii.gz").exists()


def test_reconstruct_demo_out_of_the_box_beats_bp_prior(tmp_path):
    net = _run(["--demo", "--out", str(tmp_path / "demo.nii.gz")])
    assert net["refiner"] == "psctnet" and net["checkpoint"] == str(PSCTNet.demo_checkpoint())
    for key in ("out", "png", "phantom_png"):
        assert Path(net[key]).is_file() and Path(net[key]).parent == tmp_path
    img = nib.load(tmp_path / "demo.nii.gz")
    assert img.shape == (64, 64, 64) and np.isfinite(np.asarray(img.dataobj)).all()
    base = _run(["--demo", "--refiner", "bp-prior", "--out", str(tmp_path / "bp.nii.gz")])
    m, b = net["metrics"], base["metrics"]
    # the shipped weights rewritten in checkpoint format 2 give the same numbers as the format-1 file
    assert m["psnr_x2ctgan"] == pytest.approx(31.93, abs=0.02)
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

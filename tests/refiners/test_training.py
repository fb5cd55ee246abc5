"""The generic training loop: schedule, checkpoints, exact resume, determinism, DDP, hooks."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tomoprior import data, metrics, refiners
from tomoprior.refiners import Refiner, backproject_features
from tomoprior.refiners.hooks import StepContext, TrainingHooks, find_hooks
from tomoprior.studies.training import (
    EpochSampler,
    TrainConfig,
    _collate,
    evaluate,
    export_weights,
    file_sha256,
    is_better,
    lr_factor,
    make_batch,
    train,
)

REPO = Path(__file__).resolve().parents[2]
FRACTIONS = (4 / 6, 1 / 6, 1 / 6)

# PSCT-Net shrunk so one step at 32^3 takes about a second on a free CPU core (every width
# >= 8: PyTorch's CPU 3D convolution is several times slower below 8 channels)
PSCT_MICRO = {
    "preset": "tiny", "xray_size": 32, "stem3d_width": 8, "enc3d_widths": [8, 8, 8], "stem2d_width": 8,
    "enc2d_widths": [8, 8, 8], "dense_layers": 1, "growth": 8, "agp_dim": 16, "agp_heads": 2, "disc_width": 8,
    "disc_layers": 2, "bim_d_state": 4,
}


@pytest.fixture(scope="session")
def tiny_h5(tmp_path_factory) -> Path:
    """6 skulls on a 32^3 grid, 32^2-pixel X-rays; 4 train, 1 val, 1 test."""
    path = tmp_path_factory.mktemp("data") / "tiny.h5"
    specs = data.make_specs(6, seed=0, grid=32, binning=48, fractions=FRACTIONS)
    data.generate(specs, path)
    return path


@dataclass
class _TinyConfig:
    width: int = 8
    dropout: float = 0.25


class _TinyNet(Refiner):
    """A few hundred parameters: 2D features lifted through the geometry + a 3D head, with
    dropout so resuming must restore the RNG state to be exact."""

    name = "test-train-tiny"
    config_class = _TinyConfig

    def __init__(self, config=None, **overrides):
        super().__init__(config, **overrides)
        w = self.config.width
        self.enc = nn.Conv2d(1, w, 3, padding=1)
        self.drop = nn.Dropout3d(self.config.dropout)
        self.head = nn.Conv3d(1 + w, 1, 3, padding=1)

    def forward(self, xrays, geometry, prior):
        b, v = self.check_inputs(xrays, geometry, prior)
        f = self.enc(xrays.flatten(0, 1).unsqueeze(1)).unflatten(0, (b, v))
        lifted = backproject_features(f, geometry).mean(1)
        return self.head(self.drop(torch.cat([prior / 5, lifted / 5], dim=1)))


@pytest.fixture
def tiny_refiner():
    refiners.register(_TinyNet)
    yield _TinyNet.name
    refiners.unregister(_TinyNet.name)


def _cfg(h5, out, **kw) -> TrainConfig:
    base = {"data": str(h5), "refiner": "test-train-tiny", "out": str(out), "epochs": 2, "batch_size": 2,
            "progress": False, "lr": 1e-3}
    base.update(kw)
    return TrainConfig(**base)


def _state(path):
    ckpt = refiners.read_checkpoint(path)
    return ckpt["state_dict"], ckpt["extra"]


# -- pure pieces ---------------------------------------------------------------------------

def test_lr_schedule_constant_then_linear():
    f = [lr_factor(s, 10, 0.5, 0.0) for s in range(10)]
    assert f[:5] == [1.0] * 5
    d = np.diff(f[4:])
    assert np.allclose(d, d[0]) and d[0] < 0  # linear
    assert f[-1] == pytest.approx(1 / 6) and f[-1] > 0  # reaches 0 one step after the last
    assert [lr_factor(s, 7, 1.0) for s in range(7)] == [1.0] * 7  # decay_start=1: constant
    assert lr_factor(0, 10, 0.0, 0.5) < 1.0 and lr_factor(9, 10, 0.0, 0.5) == pytest.approx(1 - 0.5 * 10 / 11)


def test_epoch_sampler_depends_on_seed_and_epoch_and_splits_ranks():
    a = EpochSampler(7, seed=1, epoch=0).indices
    assert sorted(a) == list(range(7))
    assert a == EpochSampler(7, seed=1, epoch=0).indices
    assert a != EpochSampler(7, seed=1, epoch=1).indices
    r0, r1 = EpochSampler(7, 1, 0, 0, 2).indices, EpochSampler(7, 1, 0, 1, 2).indices
    assert len(r0) == len(r1) == 4 and set(r0) | set(r1) == set(range(7))
    assert EpochSampler(7, 1, 0, start=3).indices == a[3:]
    with pytest.raises(ValueError, match="empty"):
        EpochSampler(0, 0, 0)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(data="x.h5", epochs=0)
    with pytest.raises(ValueError, match="decay_start"):
        TrainConfig(data="x.h5", decay_start=1.5)
    with pytest.raises(ValueError, match="data_range"):
        TrainConfig(data="x.h5", data_range=-1.0)
    with pytest.raises(ValueError, match="no field"):
        TrainConfig.from_dict({"data": "x.h5", "bogus": 1})
    with pytest.raises(ValueError, match="select must be one of"):
        TrainConfig(data="x.h5", select="loss")
    with pytest.raises(ValueError, match="bone_threshold"):
        TrainConfig(data="x.h5", bone_threshold=0.0)


def test_best_checkpoint_selection_by_each_metric():
    a = {"val_psnr": 30.0, "val_ssim": 0.9, "val_mae": 0.002, "val_dice": 0.10}
    b = {"val_psnr": 29.0, "val_ssim": 0.8, "val_mae": 0.001, "val_dice": 0.30}
    assert is_better(a, None) and is_better(a, None, "dice")
    assert is_better(a, b, "psnr") and not is_better(b, a, "psnr")
    assert is_better(a, b, "ssim") and not is_better(a, b, "mae")  # lower MAE wins
    assert is_better(b, a, "dice") and not is_better(a, b, "dice")
    assert not is_better(a, a, "dice")  # ties keep the earlier checkpoint
    assert not is_better({"epoch": 1}, None, "dice")  # no validation record: nothing to compare


# -- the loop ------------------------------------------------------------------------------

def test_train_writes_checkpoints_metrics_and_reloads(tiny_h5, tiny_refiner, tmp_path):
    out = tmp_path / "run"
    res = train(_cfg(tiny_h5, out, epochs=1))
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert rec["epoch"] == 1 and rec["step"] == 2  # 4 train samples, batch 2 -> 2 steps
    assert rec["val_n"] == 1 and all(np.isfinite(rec[k]) for k in ("val_psnr", "val_ssim", "val_mae", "val_dice"))
    assert 0.0 <= rec["val_dice"] <= 1.0
    # the data range ('auto') is the largest validation voxel, stated in every record
    val = data.TomopriorDataset(tiny_h5, split="val")
    assert rec["data_range"] == pytest.approx(max(float(val[i]["volume"].max()) for i in range(len(val))))
    _, extra = _state(out / "last.pt")
    assert extra["data_sha256"] == file_sha256(tiny_h5)
    assert extra["epoch"] == 1 and extra["step"] == 2 and set(extra["optimizers"]) == {"model"}
    assert TrainConfig.from_dict(extra["train_config"]).refiner == "test-train-tiny"
    # the checkpoint rebuilds the same model: same validation metrics, recomputed independently
    model = Refiner.from_checkpoint(out / "best.pt")
    vds = data.TomopriorDataset(tiny_h5, split="val", geometry_as="object")
    again = evaluate(model, vds, rec["data_range"])
    assert again["psnr"] == pytest.approx(rec["val_psnr"], rel=1e-6) and again["n"] == 1
    assert res["samples_per_s"] > 0
    # an existing run is never overwritten silently
    with pytest.raises(ValueError, match="resume"):
        train(_cfg(tiny_h5, out, epochs=1))


def test_select_dice_picks_the_epoch_with_the_best_validation_dice(tiny_h5, tiny_refiner, tmp_path):
    out = tmp_path / "run_dice"
    # a low bone threshold so the tiny network's output crosses it and Dice varies by epoch
    train(_cfg(tiny_h5, out, epochs=3, select="dice", bone_threshold=0.005))
    hist = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    dices = [h["val_dice"] for h in hist]
    want = hist[int(np.argmax(dices))]["epoch"]  # argmax: the first of equal maxima
    _, extra = _state(out / "best.pt")
    assert extra["epoch"] == want
    # the validation Dice is the metrics module's Dice of the stored model's output
    model = Refiner.from_checkpoint(out / "best.pt").eval()
    vds = data.TomopriorDataset(tiny_h5, split="val", geometry_as="object")
    item = vds[0]
    with torch.no_grad():
        x = item["xrays"][None]
        pred = model(x, item["geometry"], refiners.build_prior(x, item["geometry"]))[0, 0]
    ref = metrics.dice(pred, item["volume"].reshape(pred.shape), threshold=0.005)
    assert hist[want - 1]["val_dice"] == pytest.approx(ref, abs=1e-9)


def test_resume_after_interruption_equals_uninterrupted(tiny_h5, tiny_refiner, tmp_path):
    straight = tmp_path / "straight"
    train(_cfg(tiny_h5, straight, epochs=2))
    # interrupted inside epoch 1 (after step 1 of 2) and again inside epoch 2 (after step 3)
    parts = tmp_path / "parts"
    train(_cfg(tiny_h5, parts, epochs=2, max_steps=1))
    assert _state(parts / "last.pt")[1]["step_in_epoch"] == 1
    train(_cfg(tiny_h5, parts, epochs=2, max_steps=3), resume=True)
    train(_cfg(tiny_h5, parts, epochs=2), resume=True)
    sd_a, ex_a = _state(straight / "last.pt")
    sd_b, ex_b = _state(parts / "last.pt")
    assert ex_b["step"] == ex_a["step"] == 4
    for k in sd_a:
        assert torch.equal(sd_a[k], sd_b[k]), k
    for k, v in ex_a["optimizers"]["model"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], ex_b["optimizers"]["model"]["state"][k]["exp_avg_sq"])
    hist_a = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]
    hist_b = [json.loads(x) for x in (parts / "metrics.jsonl").read_text().splitlines()]
    assert [h["val_psnr"] for h in hist_a] == [h["val_psnr"] for h in hist_b]
    # the interrupted epochs log the loss over all their steps, not only those after resuming
    assert [h["train_loss"] for h in hist_a] == [h["train_loss"] for h in hist_b]
    # and the weights did change (the comparison is not vacuous)
    first = Refiner.from_checkpoint(straight / "last.pt")
    torch.manual_seed(0)
    assert not torch.equal(_TinyNet().head.weight, first.head.weight)


def test_resume_refuses_another_data_file(tiny_h5, tiny_refiner, tmp_path):
    out = tmp_path / "run"
    train(_cfg(tiny_h5, out, epochs=1, max_steps=1))
    other = tmp_path / "other.h5"
    data.generate(data.make_specs(6, seed=1, grid=32, binning=48, fractions=FRACTIONS), other)
    with pytest.raises(ValueError, match="differs from the data file"):
        train(_cfg(other, out, epochs=1), resume=True)
    with pytest.raises(ValueError, match="does not exist"):
        train(_cfg(tiny_h5, tmp_path / "nothing"), resume=True)


def test_resume_on_the_same_data_made_again(tiny_h5, tiny_refiner, tmp_path):
    """A study folder restored on another machine makes its data again: other bytes (write
    times, here also the compression), the same content. The run resumes on it and ends where
    the uninterrupted run ends."""
    straight = tmp_path / "straight"
    train(_cfg(tiny_h5, straight, epochs=1))
    parts = tmp_path / "parts"
    train(_cfg(tiny_h5, parts, epochs=1, max_steps=1))
    again = tmp_path / "again.h5"
    data.generate(data.make_specs(6, seed=0, grid=32, binning=48, fractions=FRACTIONS), again, compression="lzf")
    assert file_sha256(again) != file_sha256(tiny_h5)
    _, extra = _state(parts / "last.pt")
    with data.DatasetFile(tiny_h5) as ds:
        assert extra["data_content_sha256"] == ds.content_sha256()
    train(_cfg(again, parts, epochs=1), resume=True)
    sd_a, ex_a = _state(straight / "last.pt")
    sd_b, ex_b = _state(parts / "last.pt")
    assert ex_b["step"] == ex_a["step"] == 2
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_same_seed_same_weights(tiny_h5, tiny_refiner, tmp_path):
    train(_cfg(tiny_h5, tmp_path / "a", epochs=1, max_steps=1, seed=3))
    train(_cfg(tiny_h5, tmp_path / "b", epochs=1, max_steps=1, seed=3, workers=1))
    train(_cfg(tiny_h5, tmp_path / "c", epochs=1, max_steps=1, seed=4))
    a, b, c = (_state(tmp_path / n / "last.pt")[0] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)  # DataLoader workers do not change the result
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bp_prior_is_fitted_in_closed_form(tiny_h5, tmp_path):
    out = tmp_path / "bp"
    res = train(TrainConfig(data=str(tiny_h5), refiner="bp-prior", out=str(out), progress=False, batch_size=2))
    fitted = Refiner.from_checkpoint(out / "best.pt")
    # independent reference: BPPrior.calibrate (torch.linalg.lstsq on all voxels at once)
    ds = data.TomopriorDataset(tiny_h5, split="train", geometry_as="object")
    b = make_batch(_collate([ds[i] for i in range(len(ds))]), torch.device("cpu"))
    ref = refiners.load("bp-prior").calibrate(b.xrays, b.geometry, b.target)
    assert fitted.config.gain == pytest.approx(ref.config.gain, rel=1e-6)
    assert fitted.config.offset == pytest.approx(ref.config.offset, rel=1e-6, abs=1e-9)
    assert np.isfinite(res["best"]["val_psnr"])


def test_refiner_without_parameters_or_calibrate_is_rejected(tiny_h5, tmp_path):
    @dataclass
    class C:
        scale: float = 1.0

    class Fixed(Refiner):
        name = "test-train-fixed"
        config_class = C

        def forward(self, xrays, geometry, prior):
            return prior * self.config.scale

    refiners.register(Fixed)
    try:
        with pytest.raises(ValueError, match="no trainable parameters"):
            train(TrainConfig(data=str(tiny_h5), refiner="test-train-fixed", out=str(tmp_path / "r"), progress=False))
    finally:
        refiners.unregister("test-train-fixed")


def test_default_hooks_loss_finite_and_decreasing_on_one_batch(tiny_h5, tiny_refiner):
    ds = data.TomopriorDataset(tiny_h5, split="train", geometry_as="object")
    batch = make_batch(_collate([ds[0]]), torch.device("cpu"))
    torch.manual_seed(0)
    net = _TinyNet(dropout=0.0)
    hooks = find_hooks(net)
    assert type(hooks) is TrainingHooks  # no hooks module for this refiner: the default L1 + Adam
    ctx = StepContext(net, net, {}, {}, hooks.make_optimizers(net, {}, 3e-4, (0.5, 0.99), 0.0))
    losses = [hooks.training_step(ctx, batch)["loss"] for _ in range(8)]
    assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0]
    assert (np.diff(losses) < 0).sum() >= 6  # decreasing (Adam with beta1 = 0.5 may wobble once)
    # the statistic is the true L1 error of the model (checked against an independent evaluation)
    with torch.no_grad():
        l1 = (net(batch.xrays, batch.geometry, batch.prior) - batch.target).abs().mean()
    assert float(l1) < losses[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_code_path_world_size_one_gloo(tiny_h5, tiny_refiner, tmp_path, monkeypatch):
    """torchrun's environment with one process: the loop joins a gloo group, wraps the model
    in DistributedDataParallel and gives the same weights as the plain run."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(k, v)
    seen = {}
    orig = TrainingHooks.training_step

    def spy(self, ctx, batch):
        seen["ddp"] = type(ctx.forward).__name__
        seen["world"] = torch.distributed.get_world_size()
        seen["backend"] = torch.distributed.get_backend()
        return orig(self, ctx, batch)

    monkeypatch.setattr(TrainingHooks, "training_step", spy)
    train(_cfg(tiny_h5, tmp_path / "ddp", epochs=1, max_steps=1))
    assert seen == {"ddp": "DistributedDataParallel", "world": 1, "backend": "gloo"}
    assert not torch.distributed.is_initialized()  # the loop cleans up the group it made
    monkeypatch.undo()  # plain environment, real training_step
    train(_cfg(tiny_h5, tmp_path / "plain", epochs=1, max_steps=1))
    a, b = _state(tmp_path / "ddp" / "last.pt")[0], _state(tmp_path / "plain" / "last.pt")[0]
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)


# -- PSCT-Net through its hooks ---------------------------------------------------------------

@pytest.mark.slow
def test_psctnet_hooks_found_and_loss_decreases_on_one_batch(tiny_h5):
    pytest.importorskip("psctnet")
    from psctnet.hooks import PSCTNetHooks

    ds = data.TomopriorDataset(tiny_h5, split="train", geometry_as="object")
    batch = make_batch(_collate([ds[0], ds[1]]), torch.device("cpu"))
    torch.manual_seed(0)
    net = refiners.load("psctnet", **{k: tuple(v) if isinstance(v, list) else v for k, v in PSCT_MICRO.items()},
                        volume_shape=(32, 32, 32))
    hooks = find_hooks(net)
    assert isinstance(hooks, PSCTNetHooks)
    aux = hooks.build_aux(net)
    opts = hooks.make_optimizers(net, aux, 1e-3, (0.5, 0.99), 0.0)
    assert set(opts) == {"generator", "discriminator"}
    ctx = StepContext(net, net, aux, aux, opts)
    stats = [hooks.training_step(ctx, batch) for _ in range(4)]
    assert all(np.isfinite(s[k]) for s in stats for k in ("loss", "rec", "proj", "adv", "d_loss"))
    assert stats[-1]["rec"] < stats[0]["rec"] and stats[-1]["loss"] < stats[0]["loss"]


@pytest.mark.slow  # the default suite runs the same through the CLI (tests/cli/test_train_reconstruct.py)
def test_psctnet_one_epoch_at_32(tiny_h5, tmp_path):
    pytest.importorskip("psctnet")
    out = tmp_path / "psct"
    cfg = TrainConfig(data=str(tiny_h5), refiner="psctnet", refiner_config=dict(PSCT_MICRO), out=str(out), epochs=1,
                      batch_size=4, progress=False)
    res = train(cfg)
    rec = res["history"][0]
    assert rec["step"] == 1 and np.isfinite(rec["train_loss"]) and np.isfinite(rec["val_psnr"])
    _, extra = _state(out / "last.pt")
    assert set(extra["optimizers"]) == {"generator", "discriminator"} and "discriminator" in extra["aux"]
    net = Refiner.from_checkpoint(out / "last.pt")
    assert net.name == "psctnet" and tuple(net.config.volume_shape) == (32, 32, 32)  # taken from the data


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tiny_h5, tmp_path):
    """Two CPU processes under torchrun (DistributedDataParallel over gloo), 2 steps."""
    pytest.importorskip("psctnet")
    out = tmp_path / "ddp2"
    sets = [a for k, v in PSCT_MICRO.items() if k != "preset"
            for a in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tomoprior.cli.train", "--refiner", "psctnet", "--preset", "tiny", "--data", str(tiny_h5),
           "--out", str(out), "--epochs", "1", "--batch-size", "1", "--max-steps", "2", "--quiet", *sets]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, extra = _state(out / "last.pt")
    assert extra["world_size"] == 2 and extra["step"] == 2 and len(extra["rng"]) == 2


def test_export_weights_keeps_the_model_and_drops_resume_state(tiny_h5, tiny_refiner, tmp_path):
    out = tmp_path / "run_export"
    train(_cfg(tiny_h5, out, epochs=1))
    dst = export_weights(out / "last.pt", tmp_path / "shipped.pt", provenance={"command": "tomoprior train ...",
                                                                               "seed": 0})
    full, small = refiners.read_checkpoint(out / "last.pt"), refiners.read_checkpoint(dst)
    assert set(small["extra"]) == {"train_config", "data_sha256", "data_content_sha256", "epoch", "step", "best",
                                   "history", "world_size", "provenance"}
    assert "optimizers" in full["extra"] and "optimizers" not in small["extra"]
    assert small["extra"]["provenance"] == {"command": "tomoprior train ...", "seed": 0}
    for k, v in full["state_dict"].items():
        assert torch.equal(small["state_dict"][k], v)
    assert dst.stat().st_size < (out / "last.pt").stat().st_size
    a, b = Refiner.from_checkpoint(out / "last.pt"), Refiner.from_checkpoint(dst)
    assert b.checkpoint_extra["provenance"]["seed"] == 0 and a.name == b.name
    with pytest.raises(ValueError, match="JSON"):
        export_weights(out / "last.pt", tmp_path / "bad.pt", provenance={"x": object()})
    with pytest.raises(ValueError, match="differ"):
        export_weights(dst, dst)


# -- bad data, bad settings and faults -----------------------------------------------------------

def _copy_with_nonfinite(src: Path, dst: Path, split_index: int, value=float("nan")) -> int:
    """Copy ``src`` and put ``value`` into one voxel of the ``split_index``-th train sample;
    returns that sample's row in the file."""
    import h5py

    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "a") as f:
        rows = [i for i, s in enumerate(f["split"][()]) if s.decode() == "train"]
        row = rows[split_index]
        v = f["volume"][row]
        v[5, 6, 7] = value
        f["volume"][row] = v
    return row


def test_no_validation_split_is_a_clear_error(tiny_refiner, tmp_path):
    path = tmp_path / "noval.h5"
    data.generate(data.make_specs(3, seed=0, grid=32, binning=48, phantom="shepp_logan", supersample=1,
                                  fractions=(1.0, 0.0, 0.0)), path)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"no 'val' samples.*--split") as err:
        train(_cfg(path, out, epochs=1))
    assert str(path) in str(err.value)
    assert not out.exists()  # nothing half-made: not even an empty run folder


def test_diverging_run_is_a_clear_error_and_saves_nothing_non_finite(tiny_h5, tiny_refiner, tmp_path):
    from tomoprior.studies.training import TrainingDivergedError

    out = tmp_path / "run"
    train(_cfg(tiny_h5, out, epochs=2, max_steps=1))  # a good checkpoint first
    before = (out / "last.pt").read_bytes()
    with pytest.raises(TrainingDivergedError, match=r"--lr") as err:
        train(_cfg(tiny_h5, tmp_path / "run2", epochs=2, lr=1e30))
    assert "1e+30" in str(err.value) and "step" in str(err.value)
    assert not (tmp_path / "run2" / "last.pt").exists()
    assert (out / "last.pt").read_bytes() == before


@pytest.mark.parametrize("workers", [0, 1])
def test_nan_in_the_data_names_the_sample_not_the_refiner(tiny_h5, tiny_refiner, tmp_path, workers):
    bad = tmp_path / "nan.h5"
    # the 4th train sample: not read by the up-front check, found by the DataLoader (also in a worker)
    row = _copy_with_nonfinite(tiny_h5, bad, 3)
    with pytest.raises(data.DatasetFormatError) as err:
        train(_cfg(bad, tmp_path / "run", epochs=1, workers=workers))
    msg = str(err.value)
    assert f"sample {row}'s volume holds 1 NaN" in msg and str(bad) in msg
    assert "Traceback" not in msg and "diverged" not in msg


def test_preset_that_does_not_fit_the_data_says_what_fits(tiny_h5, tmp_path):
    pytest.importorskip("psctnet")
    cfg = TrainConfig(data=str(tiny_h5), refiner="psctnet", refiner_config={"preset": "paper"},
                      out=str(tmp_path / "paper"), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"preset 'paper' cannot train on") as err:
        train(cfg)
    msg = str(err.value)
    assert "(32, 32, 32)" in msg and "1x1x1 bottleneck" in msg and "--grid 64" in msg and "--preset tiny" in msg
    assert not (tmp_path / "paper").exists()
    # a volume_shape that contradicts the data is named too
    cfg = dataclasses.replace(cfg, refiner_config=dict(PSCT_MICRO, volume_shape=[64, 64, 64]))
    with pytest.raises(ValueError, match=r"configured for volumes \(64, 64, 64\) but .* holds \(32, 32, 32\)"):
        train(cfg)


def test_the_fit_check_leaves_the_run_unchanged(tiny_h5, tiny_refiner, tmp_path):
    """The up-front forward pass restores buffers and RNG states: same weights as without it."""
    from tomoprior.studies import training

    train(_cfg(tiny_h5, tmp_path / "a", epochs=1, max_steps=1))
    calls = []
    orig = training.check_fits
    training.check_fits = lambda *a, **k: calls.append(1)
    try:
        train(_cfg(tiny_h5, tmp_path / "b", epochs=1, max_steps=1))
    finally:
        training.check_fits = orig
    assert calls == [1]
    a, b = _state(tmp_path / "a" / "last.pt")[0], _state(tmp_path / "b" / "last.pt")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stop_request_saves_a_resumable_checkpoint(tiny_h5, tiny_refiner, tmp_path):
    straight = tmp_path / "straight"
    train(_cfg(tiny_h5, straight, epochs=2))
    stopped = tmp_path / "stopped"
    res = train(_cfg(tiny_h5, stopped, epochs=2), should_stop=lambda: True)
    assert res["stopped"] and res["steps"] == 1
    assert _state(stopped / "last.pt")[1]["step_in_epoch"] == 1
    res = train(_cfg(tiny_h5, stopped, epochs=2), resume=True)
    assert not res["stopped"] and res["steps"] == 4
    a, b = _state(straight / "last.pt")[0], _state(stopped / "last.pt")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = (straight / "metrics.jsonl").read_text().splitlines()
    log_b = (stopped / "metrics.jsonl").read_text().splitlines()
    drop = ("samples_per_s", "time_utc")
    assert [{k: v for k, v in json.loads(x).items() if k not in drop} for x in log_a] == \
        [{k: v for k, v in json.loads(x).items() if k not in drop} for x in log_b]


def test_unwritable_run_folder_is_refused_before_training(tiny_h5, tiny_refiner, tmp_path, monkeypatch):
    import errno
    import tempfile

    from tomoprior._atomic import NotWritableError

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        train(_cfg(tiny_h5, a_file, epochs=1))
    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir).resolve() == ro.resolve():
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(NotWritableError, match=r"cannot write to the run \(--out\) folder .*ro.*writable"):
        train(_cfg(tiny_h5, ro, epochs=1))
    assert list(ro.iterdir()) == []


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_h5, tiny_refiner, tmp_path, monkeypatch):
    from tomoprior import _atomic
    from tomoprior._atomic import DiskFullError

    out = tmp_path / "run"
    train(_cfg(tiny_h5, out, epochs=2, max_steps=1))
    before = (out / "last.pt").read_bytes()

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(_atomic, "disk_free", lambda folder: 1000)
    with pytest.raises(DiskFullError, match=r"last\.pt: the disk is full"):
        train(_cfg(tiny_h5, out, epochs=2), resume=True)
    assert (out / "last.pt").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "last.pt"]

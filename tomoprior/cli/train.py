"""``tomoprior train``: train a refiner on a tomoprior HDF5 dataset (see ``docs/training.md``).

Multi-process (DistributedDataParallel) training::

    torchrun --nproc_per_node 2 -m tomoprior.cli.train --refiner psctnet --data skulls.h5 --out run/
    tomoprior train --nproc 2 ...        # the same, launched for you

Exit codes: 0 trained; 1 the run diverged (NaN/inf loss or weights: lower --lr); 2 bad
usage, unreadable or unsuitable data, an unwritable run folder or a full disk; 128 + N when
stopped by signal N (SIGTERM 143, Ctrl-C 130): the first signal stops after the current step
and writes OUT/last.pt (continue with --resume), a second one stops at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import click

from .dataset import DataError, interrupted


class TrainingFailed(click.ClickException):
    """The run started but failed (diverged): exit code 1."""

    exit_code = 1


@contextlib.contextmanager
def _graceful_stop(state: dict):
    """SIGTERM / SIGINT: the first asks the loop to stop after the current step (``state``
    records the signal), a second raises at once. Not under torchrun (its agent signals every
    rank; ranks must stop at the same step)."""
    from .._atomic import Terminated

    if "WORLD_SIZE" in os.environ:
        yield
        return

    def handler(signum, frame):
        if state.get("signum") is not None:
            raise Terminated(signum)
        state["signum"] = signum
        click.echo(f"\n{signal.Signals(signum).name}: stopping after the current step and saving last.pt "
                   "(send it again to stop at once)", err=True)

    # an ignored SIGINT (a background job) stays ignored
    sigs = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler else [])
    saved = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _parse_set(items: tuple[str, ...]) -> dict:
    from .._yaml import load_yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key.isidentifier():
            raise click.BadParameter(f"{key!r} is not a config field name", param_hint="--set")
        try:
            out[key] = load_yaml(value, what=f"--set {key}")
        except ValueError as exc:
            raise click.BadParameter(f"cannot parse the value of {key}: {exc}", param_hint="--set") from exc
    return out


@click.command()
@click.option("--refiner", default="psctnet", show_default=True,
              help="Refiner name (tomoprior.refiners.available_refiners()).")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="HDF5 dataset (tomoprior dataset make): 'train' split trains, 'val' validates.")
@click.option("--preset", default=None, help="Refiner preset (PSCT-Net: tiny, paper or official).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Refiner config field (YAML value), repeatable, e.g. --set use_bim=false --set xray_size=32.")
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1),
              help="Samples per step per process.")
@click.option("--out", default="run", show_default=True, type=click.Path(file_okay=False),
              help="Run folder: last.pt, best.pt, metrics.jsonl, config.json.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt (same data file required).")
@click.option("--workers", default=0, show_default=True, type=click.IntRange(min=0), help="DataLoader workers.")
@click.option("--max-steps", default=None, type=click.IntRange(min=1),
              help="Stop after this many steps in total (the LR schedule still spans --epochs).")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Adam learning rate [default: the refiner's, else 2e-4].")
@click.option("--betas", default=None, help="Adam betas 'b1,b2' [default: the refiner's, else 0.5,0.99].")
@click.option("--decay-start", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Fraction of steps at a constant LR before the linear decay (1: constant).")
@click.option("--lr-end", default=0.0, show_default=True, type=click.FloatRange(0, 1),
              help="Final LR as a fraction of the initial one.")
@click.option("--data-range", default="auto", show_default=True,
              help="PSNR/SSIM peak in 1/mm, or 'auto' (largest validation voxel).")
@click.option("--save-every", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also write last.pt every N steps within an epoch (0: at epoch ends).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--nondeterministic", is_flag=True, help="Allow nondeterministic kernels (faster on GPU).")
@click.option("--nproc", default=1, show_default=True, type=click.IntRange(min=1),
              help="Launch this many processes with torchrun (DistributedDataParallel; gloo on CPU).")
@click.option("--select", default="psnr", show_default=True, type=click.Choice(["psnr", "ssim", "mae", "dice"]),
              help="Validation metric that picks best.pt (dice: bone Dice at --bone-threshold).")
@click.option("--bone-threshold", default=0.035, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Bone threshold in 1/mm for the validation Dice.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(refiner, data, preset, overrides, epochs, batch_size, out, seed, resume, workers, max_steps, lr, betas,
          decay_start, lr_end, data_range, save_every, device, nondeterministic, nproc, select, bone_threshold, quiet):
    """Train a refiner: Adam, constant-then-linear LR decay, validation PSNR/SSIM/MAE per epoch,
    atomic checkpoints OUT/last.pt and OUT/best.pt that resume exactly."""
    if nproc > 1:
        if "WORLD_SIZE" in os.environ:
            raise click.BadParameter("--nproc inside a torchrun launch; drop --nproc", param_hint="--nproc")
        _launch(nproc)
        return
    from .._atomic import Terminated
    from ..studies.training import TrainConfig, TrainingDivergedError
    from ..studies.training import train as run_training

    rc = _parse_set(overrides)
    if preset is not None:
        rc["preset"] = preset
    beta_pair = None
    if betas is not None:
        try:
            beta_pair = tuple(float(x) for x in betas.split(","))
        except ValueError as exc:
            raise click.BadParameter(f"expected 'b1,b2', got {betas!r}", param_hint="--betas") from exc
    if data_range != "auto":
        try:
            data_range = float(data_range)
        except ValueError as exc:
            raise click.BadParameter(f"a number in 1/mm or 'auto', got {data_range!r}",
                                     param_hint="--data-range") from exc
    stop: dict = {}
    try:
        cfg = TrainConfig(data=data, refiner=refiner, refiner_config=rc, out=out, epochs=epochs,
                          batch_size=batch_size, max_steps=max_steps, lr=lr, betas=beta_pair, decay_start=decay_start,
                          lr_end=lr_end, seed=seed, workers=workers, data_range=data_range, save_every=save_every,
                          deterministic=not nondeterministic, device=device, progress=not quiet,
                          select=select, bone_threshold=bone_threshold)
        with _graceful_stop(stop):
            summary = run_training(cfg, resume=resume, should_stop=lambda: stop.get("signum") is not None)
    except TrainingDivergedError as exc:
        raise TrainingFailed(str(exc)) from exc
    except (KeyboardInterrupt, Terminated) as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        raise interrupted(signum, f"stopped at once; {out}/last.pt holds the last saved step (if any); continue "
                                  "with --resume") from None
    except (ValueError, TypeError, OSError) as exc:
        raise DataError(str(exc)) from exc
    if summary.get("stopped"):
        raise interrupted(stop["signum"], f"stopped after step {summary['steps']}; {out}/last.pt holds it; continue "
                                          "with the same command and --resume")
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best"] or {}
        keys = ("epoch", "val_psnr", "val_ssim", "val_mae", "val_dice", "data_range")
        click.echo(json.dumps({"steps": summary["steps"], "epochs": summary["epochs"],
                               "samples_per_s": summary["samples_per_s"],
                               "best": {k: best[k] for k in keys if k in best}, "out": summary["out"]}))


def _launch(nproc: int) -> None:
    """Re-run this command under ``torch.distributed.run`` with ``nproc`` local processes."""
    args = list(sys.argv[1:])
    # drop "--nproc N" / "--nproc=N" and the verb (we call this module directly)
    cleaned, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        cleaned.append(a)
    if cleaned and cleaned[0] == "train":
        cleaned = cleaned[1:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "tomoprior.cli.train", *cleaned]
    rc = subprocess.call(cmd)
    if rc:
        raise click.ClickException(f"torchrun exited with status {rc}: {' '.join(cmd)}")


if __name__ == "__main__":  # torchrun -m tomoprior.cli.train ...
    train(prog_name="tomoprior train")

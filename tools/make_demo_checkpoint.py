"""Make the PSCT-Net demo weights shipped in ``refiners/psctnet/psctnet/weights/``.

Takes a run folder written by ``tomoprior train`` (its ``best.pt``), drops the resume state
(optimisers, discriminator, RNG: ``tomoprior.refiners.training.export_weights``) and stores
the provenance a reader needs to reproduce it: the dataset and training commands, the seeds,
the data file's SHA-256, the selected epoch and its validation metrics, and optionally the
test-split summary of a ``tomoprior evaluate`` JSON.

    python tools/make_demo_checkpoint.py --run /work/runs/n144/full \
        --data-command "tomoprior dataset make --n 144 --grid 64 --seed 2 --split 0.667,0.083,0.25 --out skulls.h5" \
        --train-command "tomoprior train ..." \
        --out refiners/psctnet/psctnet/weights/psctnet_tiny_demo.pt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tomoprior.refiners import read_checkpoint
from tomoprior.refiners.training import export_weights


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path, help="run folder of `tomoprior train` (uses best.pt)")
    ap.add_argument("--data-command", required=True, help="the `tomoprior dataset make` command of the data")
    ap.add_argument("--train-command", required=True, help="the `tomoprior train` command of the run")
    ap.add_argument("--evaluation", type=Path, default=None, help="a `tomoprior evaluate` result JSON (optional)")
    ap.add_argument("--note", default="", help="free text (machine, load, wall time)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)

    best = args.run / "best.pt"
    ckpt = read_checkpoint(best)
    extra = ckpt["extra"]
    chosen = json.loads(extra["best"]) if extra.get("best") else {}
    train_cfg = extra.get("train_config", {})
    provenance = {
        "what": "PSCT-Net tiny demo weights for tomoprior reconstruct --demo (synthetic 64^3 skulls, 3.75 mm voxels)",
        "data_command": args.data_command,
        "train_command": args.train_command,
        "data_sha256": extra.get("data_sha256"),
        "train_seed": train_cfg.get("seed"),
        "select": train_cfg.get("select", "psnr"),
        "selected_epoch": chosen.get("epoch"),
        "selected_step": chosen.get("step"),
        "validation": {k: chosen[k] for k in ("val_psnr", "val_ssim", "val_mae", "val_dice", "data_range")
                       if k in chosen},
        "samples_per_s": chosen.get("samples_per_s"),
        "note": args.note,
    }
    if args.evaluation is not None:
        res = json.loads(args.evaluation.read_text())
        provenance["test"] = {"data": res.get("data"), "split": res.get("split"),
                              "aggregates": res.get("aggregates", {}).get("all")}
    out = export_weights(best, args.out, provenance=provenance)
    print(json.dumps({"out": str(out), "bytes": out.stat().st_size, "provenance": provenance}, indent=1))


if __name__ == "__main__":
    main()

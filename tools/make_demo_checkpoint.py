"""Make the PSCT-Net demo weights shipped in ``refiners/psctnet/psctnet/weights/``.

Takes a run folder written by ``tomoprior train`` (its ``best.pt``), drops the resume state
(optimisers, discriminator, RNG: ``tomoprior.studies.training.export_weights``) and stores
the provenance a reader needs to reproduce it: the dataset and training commands, the seeds,
the data file's SHA-256, the selected epoch and its validation metrics, and optionally the
test-split summary of a ``tomoprior evaluate`` JSON.

    python tools/make_demo_checkpoint.py --run /work/runs/n144/full \
        --data-command "tomoprior dataset make --n 144 --grid 64 --seed 2 --split 0.667,0.083,0.25 --out skulls.h5" \
        --train-command "tomoprior train ..." \
        --out refiners/psctnet/psctnet/weights/psctnet_tiny_demo.pt

``--upgrade OLD.pt --out NEW.pt`` rewrites existing demo weights in the current checkpoint
format (format 2: SHA-256 checksums of the weights and config), keeping the provenance and
recording the upgrade in it, after checking that the rewritten file reconstructs the built-in
demo skull bit for bit as the old one did:

    python tools/make_demo_checkpoint.py --upgrade refiners/psctnet/psctnet/weights/psctnet_tiny_demo.pt \
        --out refiners/psctnet/psctnet/weights/psctnet_tiny_demo.pt
"""

from __future__ import annotations

import argparse
import datetime
import json
import warnings
from pathlib import Path

from tomoprior.refiners import CHECKPOINT_VERSION, CheckpointWarning, Refiner, read_checkpoint, write_checkpoint
from tomoprior.studies.training import export_weights


def upgrade(old: Path, out: Path) -> dict:
    """Rewrite ``old`` in the current checkpoint format (see the module docstring); returns a
    summary. Refuses (ValueError) when the rewritten file does not give identical outputs."""
    import torch

    from tomoprior.cli.reconstruct import demo_sample

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        ckpt = read_checkpoint(old)
        before = Refiner.from_checkpoint(old).eval()
    case = demo_sample()
    x = case["xrays"][None].to(torch.float32)
    with torch.no_grad():
        ref = before.reconstruct(x, case["geometry"])
    payload = dict(ckpt)
    extra = dict(payload.get("extra", {}))
    prov = dict(extra.get("provenance", {}))
    prov.setdefault("format_upgrades", [])
    prov["format_upgrades"] = [*prov["format_upgrades"], {
        "from_format_version": int(ckpt["format_version"]), "to_format_version": CHECKPOINT_VERSION,
        "date": datetime.date.today().isoformat(),
        "check": "identical reconstruction of the built-in demo skull (tomoprior reconstruct --demo) before and after",
    }]
    extra["provenance"] = prov
    payload["extra"] = extra
    payload["state_dict"] = {k: v.detach().clone().contiguous() for k, v in ckpt["state_dict"].items()}
    tmp = out.with_name(out.name + ".upgrade-check.pt")
    try:
        write_checkpoint(payload, tmp)
        after = Refiner.from_checkpoint(tmp).eval()
        with torch.no_grad():
            got = after.reconstruct(x, case["geometry"])
        if not torch.equal(ref, got):
            raise ValueError(f"the rewritten {old} reconstructs differently (max |diff| "
                             f"{float((ref - got).abs().max()):.3g}); not written")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    new = read_checkpoint(out)
    return {"out": str(out), "bytes": out.stat().st_size, "format_version": new["format_version"],
            "weights_sha256": new["weights_sha256"], "identical_outputs": True}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="run folder of `tomoprior train` (uses best.pt)")
    ap.add_argument("--upgrade", type=Path, default=None,
                    help="rewrite these existing demo weights in the current checkpoint format instead")
    ap.add_argument("--data-command", help="the `tomoprior dataset make` command of the data")
    ap.add_argument("--train-command", help="the `tomoprior train` command of the run")
    ap.add_argument("--evaluation", type=Path, default=None, help="a `tomoprior evaluate` result JSON (optional)")
    ap.add_argument("--note", default="", help="free text (machine, load, wall time)")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    if args.upgrade is not None:
        print(json.dumps(upgrade(args.upgrade, args.out), indent=1))
        return
    if args.run is None or args.data_command is None or args.train_command is None:
        ap.error("--run, --data-command and --train-command are required (or --upgrade OLD.pt)")

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

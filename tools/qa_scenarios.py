"""Run ``tomoprior calibrate`` on the QA scenarios a physicist meets and print the verdict table.

Images are simulated like the main job (``tomoprior validate``: miscalibrated PA + lateral,
768^2 pixels of 0.4 mm, heel effect, blur, 1000 photons per pixel, pixel-area integration);
each scenario is one ``tomoprior calibrate`` run in a subprocess, so the exit codes are the
real ones. Usage::

    python tools/qa_scenarios.py --out /tmp/qa-scenarios        # prints a Markdown table, writes scenarios.json

Scenarios: the images as taken (PASS), frontal and lateral swapped, the same image twice, a
second exposure of the same view, a DICOM lateral without positioner angles (refused, then
accepted with the angle flags), 8 beads occluded per view with a stray blob 3-5 px from each,
a blank image (no beads), a tolerance file with a wrong unit, and a baseline 8 mm away.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np


def _images(folder: Path, seed: int):
    from tomoprior.phantoms import load
    from tomoprior.validation import pipeline as pl

    cfg = pl.MainJobConfig(seed=seed)
    nominal, true = pl.main_job_geometries(cfg)
    counts, _ = pl.simulate_radiographs(load(cfg.phantom), true, cfg)
    np.save(folder / "frontal.npy", counts[0])
    np.save(folder / "lateral.npy", counts[1])
    return nominal, true, counts


def _write_dicom(path: Path, image: np.ndarray, *, angles: bool) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.DistanceSourceToDetector, ds.ImagerPixelSpacing = "1500", ["0.4", "0.4"]
    if angles:
        ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = "90", "0"
    ds.PixelData = np.ascontiguousarray(np.clip(image, 0, 65535).astype(np.uint16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _occluded(folder: Path, true, counts, seed: int) -> list[Path]:
    from tomoprior.calibration import bead_design

    design = bead_design("bead_cage")
    rng = np.random.default_rng(seed)
    out = []
    for v, name in enumerate(("frontal", "lateral")):
        img = counts[v].copy()
        miss = rng.choice(len(design), size=8, replace=False)
        pts = true.views[v].project_points(design.positions[miss]).numpy()
        rows, cols = np.mgrid[0:img.shape[0], 0:img.shape[1]]
        flat = float(np.median(img))
        for c, r in pts:
            disc = (cols - c) ** 2 + (rows - r) ** 2 <= 7.0**2
            img[disc] = rng.poisson(flat, int(disc.sum()))
        ang, rad = rng.uniform(0, 2 * np.pi, 8), rng.uniform(3.0, 5.0, 8)
        for c, r in pts + np.c_[np.cos(ang) * rad, np.sin(ang) * rad]:
            img = img * np.exp(-0.6 * np.exp(-((cols - c) ** 2 + (rows - r) ** 2) / (2 * 1.5**2)))
        path = folder / f"{name}_occluded.npy"
        np.save(path, np.round(img))
        out.append(path)
    return out


def _calibrate(args: list, out: Path) -> dict:
    cmd = [sys.executable, "-m", "tomoprior", "calibrate", *map(str, args), "--phantom", "bead_cage", "--out",
           str(out), "--quiet", "--no-pdf"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    rec = {"exit": p.returncode, "verdict": None, "reason": None, "heldout_rms_px": None,
           "triangulation_rms_mm": None, "traceback": "Traceback" in p.stderr}
    rep = out / "report.json"
    if rep.exists() and p.returncode in (0, 1):
        d = json.loads(rep.read_text())
        v = d.get("verdict") or {}
        rec["verdict"] = v.get("verdict")
        rec["reason"] = (v.get("reasons") or [None])[0]
        res = d.get("calibration_result") or {}
        rec["heldout_rms_px"] = res.get("heldout_rms_px")
        rec["triangulation_rms_mm"] = res.get("triangulation_rms_mm")
        rec["geometry_files"] = sorted(x.name for x in out.glob("geometry*.yaml"))
    else:
        msg = [line for line in p.stderr.splitlines() if line.startswith("Error")]
        rec["reason"] = msg[-1][7:] if msg else p.stderr.strip()[-300:]
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Working folder (images, reports, scenarios.json).")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    nominal, true, counts = _images(a.out, a.seed)
    f, lat = a.out / "frontal.npy", a.out / "lateral.npy"
    again = np.random.default_rng(a.seed + 1).poisson(np.clip(counts[1], 0, None)).astype(float)
    np.save(a.out / "lateral_again.npy", again)
    _write_dicom(a.out / "lateral_noangles.dcm", counts[1], angles=False)
    occ = _occluded(a.out, true, counts, a.seed + 2)
    np.save(a.out / "blank.npy", np.random.default_rng(3).poisson(1000.0, counts[0].shape).astype(float))
    (a.out / "bad_units.yaml").write_text("heldout_rms: 0.1 mm\n")
    shifted = true.parameters[0].replace(source_to_detector=float(true.parameters[0].source_to_detector) - 8.0)
    import tomoprior as tp

    tp.BiplanarGeometry(nominal.grid, [shifted, true.parameters[1]]).save(a.out / "baseline_8mm.yaml")
    scenarios = [
        ("images as taken", ["--images", f, lat]),
        ("frontal and lateral swapped", ["--images", lat, f]),
        ("the same image twice", ["--images", f, f]),
        ("a second exposure of the same view", ["--images", lat, a.out / "lateral_again.npy"]),
        ("DICOM lateral without positioner angles", ["--images", f, a.out / "lateral_noangles.dcm"]),
        ("... with --primary-angles 0,90 --secondary-angles 0,0",
         ["--images", f, a.out / "lateral_noangles.dcm", "--primary-angles", "0,90", "--secondary-angles", "0,0"]),
        ("8 beads occluded per view + a stray blob 3-5 px from each", ["--images", *occ]),
        ("no beads in the frontal image", ["--images", a.out / "blank.npy", lat]),
        ("tolerance file with a wrong unit", ["--images", f, lat, "--tolerances", a.out / "bad_units.yaml"]),
        ("baseline 8 mm shorter source-to-detector", ["--images", f, lat, "--baseline", a.out / "baseline_8mm.yaml"]),
    ]
    results = []
    print("| scenario | exit | verdict | held-out RMS px | triangulation RMS mm | first reason |")
    print("| --- | --- | --- | --- | --- | --- |")
    for k, (name, args) in enumerate(scenarios):
        rec = _calibrate(args, a.out / f"report_{k}")
        rec["scenario"] = name
        results.append(rec)
        h = "-" if rec["heldout_rms_px"] is None else f"{rec['heldout_rms_px']:.3f}"
        t = "-" if rec["triangulation_rms_mm"] is None else f"{rec['triangulation_rms_mm']:.3f}"
        reason = (rec["reason"] or "").replace("|", "/")
        print(f"| {name} | {rec['exit']} | {rec['verdict'] or '-'} | {h} | {t} | {reason[:160]} |", flush=True)
    (a.out / "scenarios.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

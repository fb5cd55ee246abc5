"""Figures and numbers of docs/epipolar.md, from the library itself.

Writes ``epipolar_sensitivity.png`` (relative RMS residual against each miscalibration of the
frontal view), ``epipolar_residuals.png`` (per-plane derivatives and residuals, exact and
miscalibrated) and ``epipolar_jacobian.png`` (singular values of the residual's Jacobian
w.r.t. the 18 view parameters), and prints the tables of the document. About 1-2 minutes on
2 cores.

Usage::

    python docs/figures/make_epipolar_figures.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tomoprior as tp
from tomoprior.geometry import ParametricGeometry
from tomoprior.phantoms import Ellipsoid, Phantom
from tomoprior.validation import epipolar_consistency

HERE = Path(__file__).resolve().parent
FIELDS = tp.ViewParameters.SCALAR_FIELDS
ANGLES = set(tp.ViewParameters.ANGLE_FIELDS)
SWEEPS = {
    "source_to_detector": ("mm", [0, 2.5, 5, 10, 20]),
    "source_to_isocenter": ("mm", [0, 2.5, 5, 10, 20]),
    "u0": ("mm", [0, 1, 2, 4, 8]),
    "v0": ("mm", [0, 0.25, 0.5, 1, 2]),
    "detector_rotation": ("deg", [0, 0.125, 0.25, 0.5, 1]),
    "detector_tilt_u": ("deg", [0, 0.25, 0.5, 1, 2]),
    "detector_tilt_v": ("deg", [0, 0.5, 1, 2, 4]),
    "primary_angle": ("deg", [0, 0.5, 1, 2, 4]),
    "secondary_angle": ("deg", [0, 0.125, 0.25, 0.5, 1]),
}


def main() -> None:
    torch.set_num_threads(2)
    geom = tp.BiplanarGeometry.from_parameters(binning=6)  # 256 x 256 pixels of 1.2 mm
    ph = Phantom([Ellipsoid((8, -5, 6), (55, 65, 75), 0.02, angles=(0.3, 0.4, 0.2)),
                  Ellipsoid((-20, 10, -15), (15, 20, 25), 0.01, angles=(1.0, 0.2, 0.5))])
    images = ph.line_integrals(geom)

    # 1. sensitivity to each miscalibration of the frontal view
    fig, axes = plt.subplots(3, 3, figsize=(11, 8.5), sharey=True)
    print("| parameter (frontal view) | " + " | ".join(f"step {i}" for i in range(1, 5)) + " |")
    floor = float(epipolar_consistency(images, geom).relative)
    for ax, (name, (unit, values)) in zip(axes.flat, SWEEPS.items()):
        key = name + ("_deg" if unit == "deg" else "")
        rel = [float(epipolar_consistency(images, geom.perturbed({"frontal": {key: x}})).relative) for x in values]
        ax.plot(values, rel, "o-")
        ax.axhline(0.02, color="C3", lw=0.8, ls="--")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"error ({unit})", fontsize=8)
        ax.set_yscale("log")
        print(f"| {name} | " + " | ".join(f"{x:g} {unit}: {r:.1e}" for x, r in zip(values[1:], rel[1:])) + " |")
    for ax in axes[:, 0]:
        ax.set_ylabel("relative RMS residual")
    fig.suptitle(f"Epipolar consistency vs one miscalibration of the frontal view (256^2 pixels, exact data; "
                 f"floor {floor:.1e}, dashed: default tolerance 0.02)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "epipolar_sensitivity.png", dpi=90)
    plt.close(fig)

    # 2. one pair, exact and miscalibrated
    exact = epipolar_consistency(images, geom).pairs[0]
    wrong = epipolar_consistency(images, geom.perturbed({"frontal": {"source_to_detector": 10.0}})).pairs[0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    k = np.degrees(exact.kappa.numpy())
    top.plot(k, exact.derivative_a.numpy(), label="from the frontal view")
    top.plot(k, exact.derivative_b.numpy(), "--", label="from the lateral view")
    top.set_ylabel("d/drho of the plane integral")
    top.legend(fontsize=8)
    bottom.plot(k, exact.residual.numpy(), ".", ms=3, label=f"true geometry (relative {float(exact.relative):.1e})")
    bottom.plot(np.degrees(wrong.kappa.numpy()), wrong.residual.numpy(), ".", ms=3,
                label=f"frontal source_to_detector +10 mm (relative {float(wrong.relative):.1e})")
    bottom.set_xlabel("plane angle kappa about the baseline (deg)")
    bottom.set_ylabel("residual")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "epipolar_residuals.png", dpi=90)
    plt.close(fig)

    # 3. Jacobian of the residual vector w.r.t. the 18 parameters (mm and mrad) at the truth
    base = geom.parameters

    def residual(x):
        ps = [p.replace(**{f: getattr(p, f) + x[9 * i + j] * (1e-3 if f in ANGLES else 1.0)
                           for j, f in enumerate(FIELDS)}) for i, p in enumerate(base)]
        return epipolar_consistency(images, ParametricGeometry(geom.grid, ps), n_planes=128).pairs[0].residual

    J = torch.autograd.functional.jacobian(residual, torch.zeros(18, dtype=torch.float64))
    _, S, Vh = torch.linalg.svd(J, full_matrices=False)
    rel = (S / S[0]).numpy()
    null = Vh[rel < 1e-9]
    print(f"\nsingular values / largest: {', '.join(f'{v:.1e}' for v in rel)}")
    print(f"exact null space: {len(null)} directions")
    print("\n| view | parameter | RMS residual per mm or mrad | share in the null space |")
    names = [(p.name, f) for p in base for f in FIELDS]
    for i, (view, f) in enumerate(names):
        e = torch.zeros(18, dtype=torch.float64)
        e[i] = 1.0
        gain = float(torch.linalg.norm(J @ e)) / math.sqrt(J.shape[0])
        share = float(torch.linalg.norm(null @ e)) ** 2
        print(f"| {view} | {f} | {gain:.2e} | {100 * share:.0f} % |")
    weak = Vh[(rel >= 1e-9) & (rel < 1e-3)]
    print("\nweakly observable directions (largest components):")
    for s, v in zip(rel[(rel >= 1e-9) & (rel < 1e-3)], weak):
        top = sorted(range(18), key=lambda i: -abs(float(v[i])))[:4]
        print(f"  {s:.1e}: " + ", ".join(f"{names[i][0]}.{names[i][1]} {float(v[i]):+.2f}" for i in top))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.semilogy(np.arange(1, 19), np.maximum(rel, 1e-18), "o")
    ax.axhline(1e-9, color="0.5", lw=0.8, ls="--")
    ax.set_xlabel("singular value index")
    ax.set_ylabel("singular value / largest")
    ax.set_title("Jacobian of one pair's residuals w.r.t. 18 view parameters (mm, mrad)", fontsize=9)
    fig.tight_layout()
    fig.savefig(HERE / "epipolar_jacobian.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""Draw docs/figures/skull_sutures_drr.png: are the sutures and fontanelles of the procedural
6-month skull visible in plain DRRs?

Rows: frontal and lateral DRRs (line integrals, mu at 60 keV x mm) of one skull (6 months,
normal, seed 5, anatomy v2) on the default dataset grid (128^3 voxels of 1.875 mm, binning 6:
256^2 pixels) and on a 256^3 grid of 0.94 mm (binning 3: 512^2 pixels). Columns: the whole DRR
in a bone window; the upper vault magnified in a narrow window; an unsharp-masked display (the
DRR minus its Gaussian blur of 1/64 of the field), the way edges are read on a radiograph.
The titles give the suture signal against quantum noise at the ``realistic`` dose.

Run from the repository root: ``python docs/figures/make_suture_figure.py`` (about 40 s of CPU).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.ndimage import gaussian_filter

import tomoprior as tp
from tomoprior._atomic import atomic_path
from tomoprior.data.realism import REALISTIC_PHOTONS_PER_MM2
from tomoprior.phantoms.skull import default_grid, make_skull

OUT = Path(__file__).with_name("skull_sutures_drr.png")
AGE, SEED = 0.5, 5


def _closed(skull):
    """The same skull with every suture and fontanelle closed (for the signal of the open ones)."""
    v = skull._vault
    v.sutures = {k: dataclasses.replace(s, width=0.0) for k, s in v.sutures.items()}
    v.fontanelles = []
    return skull


def drrs(n: int, binning: int):
    grid = default_grid(n)
    geom = tp.BiplanarGeometry.from_parameters(grid=grid, binning=binning)
    open_ = tp.project(make_skull(age_years=AGE, seed=SEED).rasterize(grid), geom).numpy()
    closed = tp.project(_closed(make_skull(age_years=AGE, seed=SEED)).rasterize(grid), geom).numpy()
    pitch = float(geom.views[0].u.norm())
    return grid, open_, closed - open_, pitch


def noise_sigma(p: np.ndarray, pitch_mm: float) -> np.ndarray:
    """Standard deviation of -log(raw / flat) from Poisson noise at the realistic dose: 1 / sqrt(N0 exp(-p))."""
    n0 = REALISTIC_PHOTONS_PER_MM2 * pitch_mm ** 2
    return 1.0 / np.sqrt(n0 * np.exp(-p))


def main() -> None:
    rows = []
    for n, binning in ((128, 6), (256, 3)):
        grid, drr, signal, pitch = drrs(n, binning)
        for v, view in enumerate(("frontal", "lateral")):
            rows.append((f"{n}^3, {grid.spacing[0]:.2f} mm voxels, {drr.shape[-1]}^2 px, {view}", drr[v], signal[v],
                         pitch))
    fig, axes = plt.subplots(len(rows), 3, figsize=(12.0, 4.0 * len(rows)))
    for r, (title, img, signal, pitch) in enumerate(rows):
        size = img.shape[0]
        head = img > 0.05
        lo, hi = np.percentile(img[head], [1, 99.8])
        axes[r, 0].imshow(img, cmap="gray", vmin=lo, vmax=hi)
        axes[r, 0].set_title(f"{title}\nbone window", fontsize=8)
        # the upper vault, where the sagittal / coronal sutures and the anterior fontanelle are
        rows_with_head = np.nonzero(head.any(axis=1))[0]
        top = int(rows_with_head[0])
        r0, r1 = max(0, top - size // 32), min(size, top + size // 3)
        cols = np.nonzero(head[r0:r1].any(axis=0))[0]
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        crop = img[r0:r1, c0:c1]
        lo_c, hi_c = np.percentile(crop[crop > 0.05], [5, 99.5])
        axes[r, 1].imshow(crop, cmap="gray", vmin=lo_c, vmax=hi_c, extent=(c0, c1, r1, r0))
        sig = signal[r0:r1, c0:c1]
        k = np.unravel_index(int(np.argmax(sig)), sig.shape)
        snr = float(sig[k] / noise_sigma(crop[k], pitch))
        axes[r, 1].set_title(f"upper vault, narrow window\nopen-suture deficit up to {float(sig.max()):.2f} "
                             f"= {snr:.0f} x the noise at the realistic dose", fontsize=8)
        hp = img - gaussian_filter(img, sigma=size / 64)
        s = float(np.percentile(np.abs(hp[head]), 99))
        axes[r, 2].imshow(hp, cmap="gray", vmin=-s, vmax=s)
        axes[r, 2].set_title("unsharp-masked (edges)", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Procedural skull, {AGE * 12:.0f} months, seed {SEED}: open sutures and fontanelles in plain DRRs",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    with atomic_path(OUT) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

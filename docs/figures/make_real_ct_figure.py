"""Draw docs/figures/real_cts.png: DRRs of the shipped real CTs, with the isocenter at the origin
and aimed at the volume (``isocenter="volume"``).

Run from the repository root: ``python docs/figures/make_real_ct_figure.py``.
"""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import tomoprior as tp
from tomoprior._atomic import atomic_path

OUT = Path(__file__).with_name("real_cts.png")


def main() -> None:
    fig, axes = plt.subplots(2, 3, figsize=(10.5, 8.0))
    for row, name in zip(axes, tp.data.real_cts()):
        vol = tp.data.real_ct(name)  # attenuation at 60 keV, 1/mm
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", tp.GeometryWarning)  # the un-aimed case is the point
            origin = tp.BiplanarGeometry.from_parameters(grid=vol.grid, binning=8)
        aimed = tp.BiplanarGeometry.from_parameters(grid=vol.grid, binning=8, isocenter="volume")
        lost, drr = tp.project(vol.data, origin), tp.project(vol.data, aimed)
        vmax = float(drr.max())
        centre = ", ".join(f"{c:.0f}" for c in vol.grid.center)
        panels = [(lost[0], f"{name}: frontal, isocenter at the origin\n{origin.coverage()[0]:.0%} of the volume "
                            f"seen (centre {centre} mm)"),
                  (drr[0], f"{name}: frontal, isocenter='volume'"),
                  (drr[1], f"{name}: lateral, isocenter='volume'")]
        for ax, (img, title) in zip(row, panels):
            ax.imshow(img.numpy(), cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.suptitle("Line integrals (mu at 60 keV x mm) of the shipped CTs, default geometry at binning 8", fontsize=10)
    fig.tight_layout(h_pad=2.5)
    with atomic_path(OUT, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=72)
    print(OUT)


if __name__ == "__main__":
    main()

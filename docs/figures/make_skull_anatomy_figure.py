"""Draw docs/figures/skull_anatomy.png: frontal and lateral DRRs of the shipped adult CT
(``cthead``) beside the procedural skull, anatomy ``"v1"`` and ``"v2"`` (1 year, normal,
seed 0), and the 6-month skull's open sutures as the difference of the DRRs with all sutures
and fontanelles closed minus the DRRs as they are (v1 and v2), all on the default 128^3 grid
of 1.875 mm voxels and at binning 6 (256^2 pixels).

Run from the repository root: ``python docs/figures/make_skull_anatomy_figure.py``.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import dataclasses

import matplotlib.pyplot as plt

import tomoprior as tp
from tomoprior._atomic import atomic_path
from tomoprior.phantoms.skull import default_grid, make_skull

OUT = Path(__file__).with_name("skull_anatomy.png")


def _closed(skull):
    """The same skull with every suture and fontanelle closed (a what-if for the difference image)."""
    v = skull._vault
    v.sutures = {k: dataclasses.replace(s, width=0.0) for k, s in v.sutures.items()}
    v.fontanelles = []
    return skull


def main() -> None:
    ct = tp.data.real_ct("cthead")
    g_ct = tp.BiplanarGeometry.from_parameters(grid=ct.grid, binning=6, isocenter="volume")
    grid = default_grid(128)
    geom = tp.BiplanarGeometry.from_parameters(grid=grid, binning=6)
    rows = [("cthead (adult CT)", tp.project(ct.data, g_ct), None)]
    for anatomy in ("v1", "v2"):
        vol = make_skull(age_years=1.0, seed=0, anatomy=anatomy).rasterize(grid)
        rows.append((f"procedural, 1 year, anatomy {anatomy}", tp.project(vol, geom), None))
    diffs = []
    for anatomy in ("v1", "v2"):
        open_ = tp.project(make_skull(age_years=0.5, seed=0, anatomy=anatomy).rasterize(grid), geom)
        closed = tp.project(_closed(make_skull(age_years=0.5, seed=0, anatomy=anatomy)).rasterize(grid), geom)
        diffs.append((anatomy, closed - open_))
    fig, axes = plt.subplots(3, 4, figsize=(13.0, 10.0))
    for r, (title, drr, _) in enumerate(rows):
        vmax = float(drr.max())
        for v, view in enumerate(("frontal", "lateral")):
            ax = axes[r, v]
            ax.imshow(drr[v].numpy(), cmap="gray", vmin=0, vmax=vmax)
            ax.set_title(f"{title}: {view}", fontsize=9)
    for r, (anatomy, diff) in enumerate(diffs):
        for v, view in enumerate(("frontal", "lateral")):
            ax = axes[r, 2 + v]
            ax.imshow(diff[v].numpy(), cmap="magma", vmin=0, vmax=0.3)
            ax.set_title(f"6 months, {anatomy}, {view}: sutures closed minus open\n"
                         f"(line integral; sum {float(diff[v].sum()):.0f}, max {float(diff[v].max()):.2f})",
                         fontsize=8)
    for ax in axes[2, 2:]:
        ax.set_visible(False)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Line integrals (mu at 60 keV x mm), default geometry at binning 6; cthead is an adult, "
                 "the procedural skulls 1 year (left) and 6 months (right)", fontsize=10)
    fig.tight_layout(h_pad=2.0)
    with atomic_path(OUT, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=72)
    print(OUT)


if __name__ == "__main__":
    main()

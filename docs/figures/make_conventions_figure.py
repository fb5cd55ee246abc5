"""Draw docs/figures/conventions.png: the default bi-planar geometry and the pixel convention.

Run from the repository root: ``python docs/figures/make_conventions_figure.py``.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

import tomoprior as tp
from tomoprior._atomic import atomic_path

COLOURS = {"frontal": "tab:blue", "lateral": "tab:orange"}


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


def axial_panel(ax, geom) -> None:
    """Top view (looking down from superior onto the x-y plane)."""
    for view in geom.views:
        col = COLOURS[view.name]
        s = view.source.numpy()
        rows, cols = view.shape
        ends = view.pixel_positions(_t([rows / 2, rows / 2]), _t([-0.5, cols - 0.5])).numpy()
        ax.plot(ends[:, 0], ends[:, 1], color=col, lw=4, solid_capstyle="butt")
        ax.plot(*s[:2], "o", color=col, ms=8)
        for e in ends:
            ax.plot([s[0], e[0]], [s[1], e[1]], color=col, lw=0.6, alpha=0.5)
        ax.annotate(f"{view.name} source", s[:2], textcoords="offset points", xytext=(6, 6), color=col, fontsize=8)
        ax.annotate(f"{view.name} detector", ends.mean(0)[:2], textcoords="offset points", xytext=(6, -12),
                    color=col, fontsize=8)
        u = view.u.numpy()
        start = view.pixel_positions(_t([rows / 2]), _t([-0.5])).numpy()[0]
        ax.annotate("", start[:2] + u[:2] * 120, start[:2], arrowprops=dict(arrowstyle="->", color=col))
        ax.annotate("u", start[:2] + u[:2] * 125, color=col, fontsize=8)
    lo, hi = geom.grid.bounds()
    ax.add_patch(plt.Rectangle((lo[0], lo[1]), hi[0] - lo[0], hi[1] - lo[1], fill=False, color="0.3"))
    ax.annotate("", (200, 0), (0, 0), arrowprops=dict(arrowstyle="->"))
    ax.annotate("", (0, 200), (0, 0), arrowprops=dict(arrowstyle="->"))
    ax.text(205, -10, "x: patient Left", fontsize=8)
    ax.text(8, 205, "y: Posterior", fontsize=8)
    ax.text(-120, -150, "volume box\n(192 mm)", fontsize=7, color="0.3")
    ax.set_aspect("equal")
    ax.set_xlim(-1100, 650)
    ax.set_ylim(-650, 1100)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_title("Axial view from above (z = Superior out of the page)\n"
                 "PA frontal: source posterior; left lateral: detector on the left", fontsize=9)
    ax.grid(alpha=0.3)


def detector_panel(ax) -> None:
    """The pixel convention of one detector, as seen from the source."""
    rows, cols = 6, 8
    for r in range(rows + 1):
        ax.plot([-0.5, cols - 0.5], [r - 0.5, r - 0.5], color="0.8", lw=0.8)
    for c in range(cols + 1):
        ax.plot([c - 0.5, c - 0.5], [-0.5, rows - 0.5], color="0.8", lw=0.8)
    cc, rr = np.meshgrid(np.arange(cols), np.arange(rows))
    ax.plot(cc.ravel(), rr.ravel(), ".", color="0.5", ms=3)
    ax.plot(0, 0, "ks", ms=6)
    ax.annotate("pixel (r=0, c=0)", (0, 0), textcoords="offset points", xytext=(-10, -16), fontsize=8)
    ax.annotate("", (1, 0), (0, 0), arrowprops=dict(arrowstyle="->", lw=2, color="tab:red"))
    ax.annotate("", (0, 1), (0, 0), arrowprops=dict(arrowstyle="->", lw=2, color="tab:green"))
    ax.text(1.05, -0.15, "u: (0,0) -> (0,1)\n|u| = column pitch", color="tab:red", fontsize=8)
    ax.text(-0.45, 1.25, "v: (0,0) -> (1,0)\n|v| = row pitch", color="tab:green", fontsize=8)
    centre = ((cols - 1) / 2, (rows - 1) / 2)
    ax.plot(*centre, "k+", ms=14, mew=2)
    ax.annotate("detector_center\n((cols-1)/2, (rows-1)/2)", centre, textcoords="offset points", xytext=(8, 6),
                fontsize=8)
    pp = (centre[0] + 1.6, centre[1] - 1.1)
    ax.plot(*pp, "o", mfc="none", mec="tab:purple", ms=10, mew=2)
    ax.annotate("central ray: centre +\ndetector offset (u0, v0) mm", pp,
                textcoords="offset points", xytext=(8, -22), color="tab:purple", fontsize=8)
    ax.set_xlim(-1, cols + 1.5)
    ax.set_ylim(rows + 0.2, -1.2)  # rows grow downward, as images are shown
    ax.set_aspect("equal")
    ax.set_xlabel("column c")
    ax.set_ylabel("row r")
    ax.set_title("Pixel (r, c) centre = detector_center + (c-(cols-1)/2) u + (r-(rows-1)/2) v\n"
                 "(ASTRA cone_vec identical); projections are (views, rows, cols)", fontsize=9)


def draw(path: Path) -> None:
    geom = tp.BiplanarGeometry.from_parameters(binning=8)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 6.2), dpi=100)
    axial_panel(a, geom)
    detector_panel(b)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


if __name__ == "__main__":
    draw(Path(__file__).with_name("conventions.png"))

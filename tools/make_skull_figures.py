"""Figures of the procedural pediatric skull, one per variant: ``docs/figures/skull_<variant>.png``.

Each figure shows three orthogonal slices of the attenuation volume (axial through the
vault centre, coronal through the ears, sagittal 15 mm left of the midline), an isosurface
of the bone (marching cubes on the bone fraction, rendered with matplotlib's
Poly3DCollection) seen from the front-left, the same surface from above (vault outline,
sutures and fontanelles), and the measured indices. It also prints a Markdown table of
the indices (implicit surface and 64^3 / 128^3 rasters of ``default_grid``) and the
rasterisation times, for ``docs/skull.md``.

Usage::

    PYTHONPATH=. python tools/make_skull_figures.py [--out docs/figures] [--age 1.0] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from PIL import Image
from skimage import measure

from tomoprior._atomic import write_bytes_atomic
from tomoprior.geometry.grid import VolumeGrid
from tomoprior.phantoms.skull import VARIANTS, default_grid, make_skull, measure_shape_indices

TITLES = {
    "normal": "normal",
    "sagittal": "sagittal synostosis: scaphocephaly",
    "metopic": "metopic synostosis: trigonocephaly",
    "unicoronal": "left unicoronal synostosis: anterior plagiocephaly",
    "bicoronal": "bicoronal synostosis: brachycephaly",
    "lambdoid": "left lambdoid synostosis: posterior plagiocephaly",
}


def head_grid(skull, spacing: float) -> VolumeGrid:
    lo, hi = skull.bounding_box()
    lo, hi = lo - 4.0, hi + 4.0
    shape = tuple(int(np.ceil((hi[i] - lo[i]) / spacing)) for i in (2, 1, 0))
    centre = tuple(float(c) for c in (lo + hi) / 2)
    return VolumeGrid(shape=shape, spacing=(spacing,) * 3, center=centre)


def render_surface(ax, verts, faces, elev, azim, title):
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
    el, az = np.radians(elev), np.radians(azim)
    view = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    light = view + np.array([0.3, -0.2, 0.5])
    light /= np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.abs(n @ light)
    colour = np.array([0.93, 0.89, 0.80])
    pc = Poly3DCollection(tri, facecolors=np.clip(shade[:, None] * colour, 0, 1), edgecolors="none")
    ax.add_collection3d(pc)
    lo, hi = verts.min(0), verts.max(0)
    mid, half = (lo + hi) / 2, (hi - lo).max() / 2
    ax.set_xlim(mid[0] - half, mid[0] + half)
    ax.set_ylim(mid[1] - half, mid[1] + half)
    ax.set_zlim(mid[2] - half, mid[2] + half)
    ax.view_init(elev=elev, azim=azim)
    ax.set_box_aspect((1, 1, 1), zoom=1.45)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)


def figure(variant: str, age: float, seed: int, out: Path, spacing: float = 1.5) -> dict:
    skull = make_skull(age_years=age, variant=variant, seed=seed)
    grid = head_grid(skull, spacing)
    vol = skull.rasterize(grid, supersample=2).numpy()
    lm = skull.landmarks
    k = round(float(grid.world_to_index(lm["center"] + np.array([0, 0, 8.0]))[0]))
    j_ear = round(float(grid.world_to_index(lm["center"] + np.array([0, 5.0, 0]))[1]))
    i_sag = round(float(grid.world_to_index(lm["center"] + np.array([15.0, 0, 0]))[2]))
    sz, sy, sx = grid.spacing
    nz, ny, nx = grid.shape
    ext_xy = (0, nx * sx, ny * sy, 0)
    kw = dict(cmap="gray", vmin=0.0, vmax=0.055, interpolation="nearest")

    fig = plt.figure(figsize=(12.0, 7.4))
    ax = fig.add_axes((0.04, 0.52, 0.28, 0.4))
    # axial: anterior up, patient's left on the image right (viewed from above)
    ax.imshow(vol[k], extent=ext_xy, **kw)
    ax.set_title("axial 8 mm above the vault centre (from above, anterior up, L right)", fontsize=8)
    ax = fig.add_axes((0.36, 0.52, 0.28, 0.4))
    # coronal viewed from the front: patient's left on the image right, superior up
    ax.imshow(vol[:, j_ear, :][::-1], extent=(0, nx * sx, 0, nz * sz), **kw)
    ax.set_title("coronal (from the front, L right)", fontsize=8)
    ax = fig.add_axes((0.68, 0.52, 0.3, 0.4))
    ax.imshow(vol[:, :, i_sag][::-1], extent=(0, ny * sy, 0, nz * sz), **kw)
    ax.set_title("sagittal 15 mm left (anterior left)", fontsize=8)
    for a in fig.axes:
        a.tick_params(labelsize=6)

    sgrid = head_grid(skull, 2.0)
    frac = skull.bone_fraction(sgrid, supersample=2).numpy()
    verts, faces, _, _ = measure.marching_cubes(np.pad(frac, 1), level=0.35)
    verts = (verts - 1)[:, ::-1] * np.array(sgrid.spacing_xyz) + np.array(sgrid.voxel_center(0, 0, 0))
    ax = fig.add_axes((0.0, 0.0, 0.36, 0.43), projection="3d")
    # camera at azimuth -60 deg: +x (patient's left) and -y (anterior), i.e. front-left
    render_surface(ax, verts, faces, elev=15, azim=-60, title="bone isosurface (from the front-left)")
    ax = fig.add_axes((0.33, 0.0, 0.36, 0.43), projection="3d")
    top = verts[:, 2] > lm["center"][2] - 25.0
    keep = top[faces].all(axis=1)
    render_surface(ax, verts, faces[keep], elev=90, azim=-90, title="top view (anterior down, L right)")

    g64, g128 = default_grid(64), default_grid(128)
    t0 = time.perf_counter()
    skull.rasterize(g64, supersample=2)
    t64 = time.perf_counter() - t0
    t0 = time.perf_counter()
    skull.rasterize(g128, supersample=2)
    t128 = time.perf_counter() - t0
    r64 = measure_shape_indices(skull.bone_mask(g64), g64)
    r128 = measure_shape_indices(skull.bone_mask(g128), g128)
    ind = skull.shape_indices()
    p = skull.parameters
    text = (
        f"age {p.age_years:g} y, seed {p.seed}, side {p.side}\n"
        f"fused: {', '.join(p.fused_sutures) or 'none'}\n"
        f"head circumference {ind['head_circumference_cm']:.1f} cm\n"
        f"vault {ind['length_mm']:.0f} x {ind['width_mm']:.0f} mm, thickness {skull.thickness_mm:.1f} mm\n"
        f"cephalic index {ind['cephalic_index']:.1f} (surface)\n"
        f"   {r128['cephalic_index']:.1f} (128^3 mask), {r64['cephalic_index']:.1f} (64^3)\n"
        f"CVAI {ind['cvai']:.1f} %  (128^3: {r128['cvai']:.1f} %)\n"
        f"frontal ratio {ind['frontal_ratio']:.2f}  (128^3: {r128['frontal_ratio']:.2f})\n"
        f"attenuation at {p.energy_kev:g} keV (1/mm):\n"
        f"   bone {skull.attenuation['cortical_bone']:.4f}, brain {skull.attenuation['brain']:.4f}"
    )
    ax = fig.add_axes((0.69, 0.02, 0.31, 0.44))
    ax.axis("off")
    ax.text(0.0, 1.0, text, va="top", ha="left", family="monospace", fontsize=8.5, transform=ax.transAxes)
    fig.suptitle(f"Procedural pediatric skull: {TITLES[variant]}", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    png = io.BytesIO()
    img.save(png, format="PNG", optimize=True)
    path = out / f"skull_{variant}.png"
    write_bytes_atomic(path, png.getvalue())
    return {
        "variant": variant,
        "ci_surface": ind["cephalic_index"],
        "ci_128": r128["cephalic_index"],
        "ci_64": r64["cephalic_index"],
        "cvai": ind["cvai"],
        "cvai_128": r128["cvai"],
        "frontal": ind["frontal_ratio"],
        "frontal_128": r128["frontal_ratio"],
        "hc": ind["head_circumference_cm"],
        "t64": t64,
        "t128": t128,
        "kb": len(png.getvalue()) / 1024,
        "path": path,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/figures"))
    ap.add_argument("--age", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the timings are for one core
    rows = [figure(v, args.age, args.seed, args.out) for v in args.variants]
    print("| variant | CI surface | CI 128^3 | CI 64^3 | CVAI % (128^3) | frontal ratio (128^3) | HC cm |"
          " 64^3 s | 128^3 s | PNG kB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['variant']} | {r['ci_surface']:.1f} | {r['ci_128']:.1f} | {r['ci_64']:.1f} | "
              f"{r['cvai']:.1f} ({r['cvai_128']:.1f}) | {r['frontal']:.2f} ({r['frontal_128']:.2f}) | {r['hc']:.1f} | "
              f"{r['t64']:.2f} | {r['t128']:.2f} | {r['kb']:.0f} |")


if __name__ == "__main__":
    main()

"""Recover a source-to-detector distance error by gradient descent through the projector.

The DRR of a phantom is differentiable in the physical view parameters. Here the
"measured" frontal image is simulated with source_to_detector = 1512 mm while our model
believes 1500 mm; minimising the image difference with autograd finds the truth. This is
the mechanism calibration and 2D/3D pose refinement build on.

    python examples/gradient_wrt_geometry.py
"""

from __future__ import annotations

import torch

import tomoprior as tp


def main() -> None:
    grid = tp.VolumeGrid((64, 64, 64), (3.0, 3.0, 3.0))
    phantom = tp.phantoms.Phantom.load("shepp_logan_3d_modified")
    volume = phantom.rasterize(grid, supersample=2, dtype=torch.float64)
    base = tp.geometry.default_frontal(detector_shape=(128, 128), pixel_pitch=2.4)
    measured = tp.project(volume, tp.Geometry(grid, [base.replace(source_to_detector=1512.0).to_view()]))

    sdd = torch.tensor(1500.0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([sdd], lr=2.0)
    for it in range(60):
        opt.zero_grad()
        model = tp.project(volume, tp.Geometry(grid, [base.replace(source_to_detector=sdd).to_view()]))
        loss = (model - measured).square().mean()
        loss.backward()
        opt.step()
        if it % 10 == 0 or it == 59:
            print(f"iter {it:3d}  loss {loss.item():.3e}  source_to_detector {sdd.item():.3f} mm")
    print(f"true 1512.000 mm, recovered {float(sdd):.3f} mm")


if __name__ == "__main__":
    main()

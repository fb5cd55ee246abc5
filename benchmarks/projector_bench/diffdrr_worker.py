"""The DiffDRR side of the benchmark: times DiffDRR's renderers on the benchmark's volume and
geometry.

Self-contained on purpose: it needs only numpy, torch, torchio and diffdrr (all pulled in by
``pip install diffdrr``), never tomoprior, because DiffDRR pulls a newer torch and so usually
lives in its own virtual environment. The benchmark imports :func:`run_diffdrr` when
``import diffdrr`` works in its own interpreter, and otherwise runs this file as a script in
the interpreter given by ``--diffdrr-python``::

    python diffdrr_worker.py config.json     # prints BENCHMARK_RESULT {json}

The geometry is handed over as tomoprior's View vectors and turned into DiffDRR's camera
here: DRR(subject, sdd, height, delx, width, dely, reverse_x_axis=False) puts the source at
the camera origin and pixel (r, c) at ((c - (W-1)/2) delx, -(r - (H-1)/2) dely, sdd); a pose
matrix [R | t] maps that into the world, so t = source and the columns of R are the unit u,
-v and beam directions. The subject comes from diffdrr.data.read() on a torchio ScalarImage
whose affine maps voxel indices to the same world millimetres.
"""

import json
import sys
import time

import numpy as np
import torch

RESULT_MARKER = "BENCHMARK_RESULT "


def _status_kb(key):
    """A ``/proc/self/status`` field in kB (Linux), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None


def _reset_peak():
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _operations(drr, pose, kwargs, density, cotangent):
    """``prepare(op)``: untimed set-up of one run of ``op`` with renderer ``drr``, on a fresh
    copy of ``density``; returns the zero-argument call to time."""

    def forward():
        with torch.no_grad():
            return drr(pose, **kwargs)

    def prepare(op):
        drr.density = density.clone()
        if op == "forward":
            return forward
        drr.density.requires_grad_(True)
        if op == "back":
            img = drr(pose, **kwargs)
            return lambda: img.backward(cotangent)

        def step():
            loss = (drr(pose, **kwargs) * cotangent).sum()
            loss.backward()
        return step

    return prepare


def run_diffdrr(cfg):
    """Time each renderer of ``cfg["renderers"]`` on the three operations; returns the results
    (plain JSON types) and saves each renderer's forward projection next to ``cfg["image_prefix"]``."""
    import diffdrr
    import torchio
    from diffdrr.data import read
    from diffdrr.drr import DRR
    from diffdrr.pose import RigidTransform

    torch.set_num_threads(cfg["threads"])
    vol = np.load(cfg["volume"]).astype(np.float32)  # (nz, ny, nx)
    weights = torch.from_numpy(np.load(cfg["weights"]).astype(np.float32))  # (views, rows, cols)
    nz, ny, nx = vol.shape
    sx, sy, sz = cfg["spacing_xyz"]
    cx, cy, cz = cfg["center_xyz"]
    # torchio wants (channels, x, y, z) and an affine from those indices to world mm
    data = torch.from_numpy(vol).permute(2, 1, 0).contiguous()[None]
    affine = np.eye(4)
    affine[:3, :3] = np.diag([sx, sy, sz])
    affine[:3, 3] = [cx - (nx - 1) / 2 * sx, cy - (ny - 1) / 2 * sy, cz - (nz - 1) / 2 * sz]
    subject = read(torchio.ScalarImage(tensor=data, affine=affine), orientation=None, center_volume=False)

    mats, sdds, notes = [], [], []
    rows, cols = cfg["views"][0]["shape"]
    pitch_u = pitch_v = None
    for view in cfg["views"]:
        s, c, u, v = (np.asarray(view[k], dtype=np.float64) for k in ("source", "detector_center", "u", "v"))
        if tuple(view["shape"]) != (rows, cols):
            raise ValueError("DiffDRR renders all poses of one DRR on the same detector")
        pitch_u, pitch_v = float(np.linalg.norm(u)), float(np.linalg.norm(v))
        eu, ev = u / pitch_u, v / pitch_v
        beam = -np.cross(eu, ev)
        beam /= np.linalg.norm(beam)
        sdd = float((c - s) @ beam)
        offset = (c - s) - sdd * beam
        if np.linalg.norm(offset) > 1e-6 * sdd:
            notes.append("detector offset (principal point off the detector centre): not mapped to DiffDRR")
        sdds.append(sdd)
        m = np.eye(4)
        m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = eu, -ev, beam, s
        mats.append(m)
    if max(sdds) - min(sdds) > 1e-6 * max(sdds):
        raise ValueError("DiffDRR renders all poses of one DRR with one source-to-detector distance")
    pose = RigidTransform(torch.tensor(np.stack(mats), dtype=torch.float32))
    cotangent = weights[:, None]  # DiffDRR images are (poses, 1, rows, cols)
    density = data[0].clone()  # our attenuation per mm, not read()'s HU -> [0, 1] density

    out = {"version": diffdrr.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "notes": notes, "results": []}
    for renderer in cfg["renderers"]:
        drr = DRR(subject, sdd=sdds[0], height=rows, width=cols, delx=pitch_u, dely=pitch_v,
                  reverse_x_axis=False, renderer=renderer)
        drr.density = density.clone()
        kwargs = {"n_points": cfg["n_points"]} if renderer == "trilinear" else {}
        prepare = _operations(drr, pose, kwargs, density, cotangent)

        with torch.no_grad():
            image = drr(pose, **kwargs)[:, 0].numpy()
        np.save(cfg["image_prefix"] + renderer + ".npy", image)
        for op in ("forward", "back", "fwd+bwd"):
            run = prepare(op)
            measured = cfg["memory"] and _reset_peak()
            before = _status_kb("VmRSS")
            t0 = time.perf_counter()
            run()
            warmup = time.perf_counter() - t0
            peak = _status_kb("VmHWM")
            del run
            repeats = cfg["repeats"]
            planned = repeats
            if warmup * repeats > cfg["budget"]:
                planned = max(1, min(repeats, int(cfg["budget"] // max(warmup, 1e-9))))
            times, cpu = [], []
            for _ in range(planned):
                run = prepare(op)
                c0 = time.process_time()
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
                del run
            samples = None
            n_rays = len(cfg["views"]) * rows * cols
            if renderer == "trilinear":
                samples = n_rays * cfg["n_points"]
            elif renderer == "siddon":
                samples = n_rays * (nx + ny + nz + 2)  # one sample per pair of plane crossings
            out["results"].append({
                "impl": "diffdrr-" + renderer, "op": op, "times_s": times, "cpu_s": cpu, "warmup_s": warmup,
                "repeats": planned, "repeats_reduced": planned < repeats, "samples": samples,
                "peak_extra_mb": max(0.0, (peak - before) / 1024.0) if measured and peak and before else None,
            })
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        config = json.load(fh)
    print(RESULT_MARKER + json.dumps(run_diffdrr(config)), flush=True)

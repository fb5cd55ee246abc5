"""Reconstruction metrics computed the way the public PSCT-Net evaluation computes them.

Numbers in the PSCT-Net paper (Kim et al., "PSCT-Net: Geometry-Aware Pediatric Skull CT
Reconstruction via Differentiable Back-Projection and Attention-Guided Refinement"; public code
``DYDevelop/PSCT-Net``, whose metrics descend from X2CT-GAN's) are not comparable with
:func:`tomoprior.metrics.psnr` / :func:`tomoprior.metrics.ssim`: the conventions differ in ways
that move slice PSNR by tens of dB on sparse volumes. The functions here reproduce that
evaluation (our own implementation, checked numerically against theirs) so that a tomoprior
reconstruction can be put next to a published number. Each takes one volume pair
``(nz, ny, nx)`` (torch tensor or numpy array) and returns floats; a dataset figure is the
mean over volumes of the per-volume values, which is what their test loop prints.

Their evaluation pipeline (:func:`official_scores` runs all of it):

1. Volumes are in [0, 1]: the CT clipped to ``[0, 2500]`` (their ``CT_MIN_MAX``) and divided
   by 2500 (PSCT-Net's skull data: bone only, ``HU > 200``, min-max scaled to [0, 1]). The
   prediction is clipped to [0, 1]; the reference is not.
2. MAE and MSE on these [0, 1] volumes (printed as ``MAE0``, ``MSE0``).
3. Both volumes multiplied by 2500 and **truncated to integers** (``int32``, towards zero).
4. On the integer volumes, with peak 2500: PSNR3D (one MSE over the volume), the slice PSNR
   (three orientations, 100 dB for slices that are identical), the 2D SSIM, MAE and MSE.

How the conventions differ from ours (:mod:`tomoprior.metrics.intensity`):

=====================  ========================================  ===========================================
quantity               tomoprior (``psnr`` / ``ssim``)            official PSCT-Net
=====================  ========================================  ===========================================
identical volumes      PSNR ``inf``                              100 dB
slice PSNR             one axis (``axis=0`` default); slices      mean of the three axes' slice averages;
                       identical in both are left out             identical slices count as 100 dB each
SSIM window            Gaussian, sigma 1.5, 11 taps, population   uniform 7 x 7, sample covariance
                       covariance (Wang et al. 2004)              (scikit-image's default)
SSIM dimensionality    3D window, or 2D per slice of one axis     2D per slice; see :func:`official_ssim`
                                                                  for which planes
intensity              float values as given                      ``[0, 1]`` values x 2500, truncated to
                                                                  integers before PSNR / SSIM
=====================  ========================================  ===========================================

The empty-slice rule makes an all-zero prediction score well on sparse targets (a skull is
mostly background): every slice that holds no bone in the target counts 100 dB, whatever
happens elsewhere. :func:`official_slice_psnr` documents the size of the effect.

LPIPS (their last column) needs the pretrained AlexNet weights of the ``lpips`` package, which
are not available here, so it is not provided.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import uniform_filter

from ._arrays import as_array, same_shape

__all__ = [
    "EMPTY_SLICE_PSNR_DB",
    "OFFICIAL_PEAK",
    "OFFICIAL_SSIM_WINDOW",
    "official_cosine_similarity",
    "official_mae",
    "official_mse",
    "official_psnr_3d",
    "official_scores",
    "official_slice_psnr",
    "official_ssim",
]

#: Peak value of the official PSNR and SSIM: [0, 1] volumes are scaled to [0, 2500].
OFFICIAL_PEAK = 2500.0
#: PSNR (dB) the official code gives a slice (or volume) whose MSE is exactly 0.
EMPTY_SLICE_PSNR_DB = 100.0
#: Side of the uniform SSIM window (scikit-image's default when no Gaussian is asked for).
OFFICIAL_SSIM_WINDOW = 7


def _pair(prediction, target, ndim: int = 3) -> tuple[np.ndarray, np.ndarray]:
    a = as_array(prediction, "prediction", ndim=ndim)
    b = as_array(target, "target", ndim=ndim)
    same_shape(a, b)  # also refuses empty volumes
    return a, b


def _peak(data_range) -> float:
    try:
        value = float(data_range)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"data_range must be a number (the peak value), got {data_range!r}") from exc
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"data_range must be positive and finite, got {data_range!r}")
    return value


def _psnr_100(mse: np.ndarray, peak: float) -> np.ndarray:
    """``20 log10(peak / sqrt(mse))`` elementwise, exactly 100 dB where ``mse == 0``."""
    mse = np.asarray(mse, dtype=np.float64)
    zero = mse == 0
    out = 20.0 * np.log10(peak / np.sqrt(np.where(zero, 1.0, mse)))
    return np.where(zero, EMPTY_SLICE_PSNR_DB, out)


def official_mae(prediction, target) -> float:
    """Mean absolute error over all voxels, in the units of the inputs.

    The same as :func:`tomoprior.metrics.mae` without a mask; the official evaluation reports it
    twice: on the [0, 1] volumes (``MAE0``) and on the integer [0, 2500] volumes (``MAE``), see
    :func:`official_scores`.
    """
    a, b = _pair(prediction, target)
    return float(np.abs(a - b).mean())


def official_mse(prediction, target) -> float:
    """Mean squared error over all voxels, in squared units of the inputs (``MSE0`` on [0, 1],
    ``MSE`` on the integer [0, 2500] volumes in :func:`official_scores`)."""
    a, b = _pair(prediction, target)
    return float(((a - b) ** 2).mean())


def official_cosine_similarity(prediction, target) -> float:
    """Cosine of the angle between the two volumes flattened to vectors, ``<p, t> / (|p| |t|)``.

    Defined in the official metrics (X2CT-GAN reports it) but not called by PSCT-Net's test
    script. Not translation invariant: background values weigh in.

    Raises
    ------
    ValueError
        When either volume is all zero: the cosine is undefined there (the official code returns
        NaN with a warning).
    """
    a, b = _pair(prediction, target)
    na, nb = float(np.linalg.norm(a.ravel())), float(np.linalg.norm(b.ravel()))
    if na == 0 or nb == 0:
        which = "prediction" if na == 0 else "target"
        raise ValueError(f"{which} is all zero: the cosine similarity of a zero vector is undefined")
    return float(np.dot(a.ravel(), b.ravel()) / (na * nb))


def official_psnr_3d(prediction, target, data_range: float = OFFICIAL_PEAK) -> float:
    """The official ``PSNR3D``: ``20 log10(data_range / sqrt(MSE))`` with one MSE over the
    whole volume, in dB.

    Equals :func:`tomoprior.metrics.psnr` with ``reduction="volume"`` except for identical
    volumes, which score exactly 100 dB here and ``inf`` there. The official evaluation applies it
    to the integer [0, 2500] volumes with ``data_range=2500`` (:func:`official_scores`).

    >>> import numpy as np
    >>> official_psnr_3d(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    100.0
    >>> round(official_psnr_3d(np.full((2, 2, 2), 25.0), np.zeros((2, 2, 2))), 6)  # 2500 / 25 = 100
    40.0
    """
    peak = _peak(data_range)
    a, b = _pair(prediction, target)
    return float(_psnr_100(((a - b) ** 2).mean(), peak))


def official_slice_psnr(prediction, target, data_range: float = OFFICIAL_PEAK) -> dict[str, float]:
    """The official slice PSNR (their ``PSNR-1/2/3`` and ``PSNR-avg``; the PSCT-Net paper's "PSNR").

    For each axis ``k`` of the ``(nz, ny, nx)`` volume: the MSE of every 2D slice perpendicular
    to ``k``, its PSNR ``20 log10(data_range / sqrt(MSE))``, **100 dB for a slice whose MSE is
    exactly 0**, and the mean over the slices. ``mean`` is the mean of the three axes' values.

    Differences from ``tomoprior.metrics.psnr(..., reduction="slice")``: ours averages one axis
    and leaves identical slices out (they carry no information about the reconstruction); the
    official one averages all three axes and counts every identical slice as 100 dB. On sparse
    volumes (bone only) most slices near the borders are empty in both, so the official figure
    rewards predicting nothing there: an all-zero prediction of a 128^3 procedural skull's bone
    window scores 57.0 dB official slice PSNR against 28.0 dB PSNR3D, and more than a blurred copy
    of the target (55.1 dB; ``docs/metrics.md``). Report it only next to a volume PSNR.

    Parameters
    ----------
    prediction, target : array or tensor ``(nz, ny, nx)``
    data_range : float
        Peak value in the units of the inputs; 2500 for the official integer volumes, 1 for
        [0, 1] volumes (the official code truncates to integers first: :func:`official_scores`).

    Returns
    -------
    dict with ``axis0`` (slices ``v[i, :, :]``, their ``PSNR-1``), ``axis1`` (``v[:, j, :]``,
    ``PSNR-2``), ``axis2`` (``v[:, :, k]``, ``PSNR-3``) and ``mean`` (``PSNR-avg``), dB.

    >>> import numpy as np
    >>> t = np.zeros((4, 4, 4)); t[0, 0, 0] = 1.0
    >>> r = official_slice_psnr(np.zeros_like(t), t, data_range=1.0)  # 1 of 4 slices differs per axis
    >>> round(r["axis0"], 4), round(r["mean"], 4)  # (3 * 100 + 10 log10(16)) / 4
    (78.0103, 78.0103)
    """
    peak = _peak(data_range)
    a, b = _pair(prediction, target)
    sq = (a - b) ** 2
    out = {}
    for k in range(3):
        others = tuple(d for d in range(3) if d != k)
        out[f"axis{k}"] = float(_psnr_100(sq.mean(axis=others), peak).mean())
    out["mean"] = float(np.mean([out["axis0"], out["axis1"], out["axis2"]]))
    return out


def _ssim_stack(a: np.ndarray, b: np.ndarray, peak: float, win: int) -> np.ndarray:
    """Mean 2D SSIM of each image of the stacks ``(n, rows, cols)``: uniform ``win x win``
    window with mirrored borders (scipy ``mode="reflect"``), sample covariances
    (``win^2 / (win^2 - 1)``), K1 = 0.01, K2 = 0.03, border of ``(win - 1) / 2`` left out of the
    mean."""
    if min(a.shape[1:]) < win:
        raise ValueError(f"official SSIM uses a {win} x {win} window but the slices are only {a.shape[1:]} voxels; "
                         f"the volume needs at least {win} voxels along every axis")
    size = (1, win, win)
    f = lambda x: uniform_filter(x, size=size, mode="reflect")  # noqa: E731
    ux, uy = f(a), f(b)
    cov = win * win / (win * win - 1.0)
    vx = cov * (f(a * a) - ux * ux)
    vy = cov * (f(b * b) - uy * uy)
    vxy = cov * (f(a * b) - ux * uy)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    r = (win - 1) // 2
    return s[:, r:s.shape[1] - r, r:s.shape[2] - r].mean(axis=(1, 2), dtype=np.float64)


def official_ssim(prediction, target, data_range: float = OFFICIAL_PEAK) -> dict[str, float]:
    """The official SSIM (their ``SSIM-1/2/3`` and ``SSIM-avg``; the PSCT-Net paper's "SSIM").

    2D SSIM of slices averaged over the slices, with scikit-image's defaults: a uniform 7 x 7
    window, sample covariances, K1 = 0.01, K2 = 0.03, mirrored borders, and a 3-voxel border left
    out of each slice's mean. Ours (:func:`tomoprior.metrics.ssim`) uses the Gaussian window of
    Wang et al. (sigma 1.5, population covariances) and by default a 3D window.

    Which slices: the official code means to take the three orientations, but it passes
    ``channel_axis=True`` to scikit-image (>= 0.19), which reads it as axis 1 of the array it is
    given; after its transpositions the images are

    - ``ssim1`` (their "depth"): the ``(ny, nz)`` images ``v[:, :, k].T``, one per ``k``;
    - ``ssim2`` (their "height"): the ``(nz, ny)`` images ``v[:, :, k]``, the same slices
      transposed, so ``ssim2 == ssim1`` up to rounding;
    - ``ssim3`` (their "width"): the ``(nz, nx)`` images ``v[:, j, :]``, one per ``j``;

    and ``mean = (ssim1 + ssim2 + ssim3) / 3``. The axial slices ``v[i, :, :]`` never enter. We
    reproduce that, so the numbers match theirs.

    Parameters
    ----------
    prediction, target : array or tensor ``(nz, ny, nx)``, at least 7 voxels along every axis
    data_range : float
        Peak value (2500 for the official integer volumes).

    Returns
    -------
    dict with ``ssim1``, ``ssim2``, ``ssim3``, ``mean``.
    """
    peak = _peak(data_range)
    a, b = _pair(prediction, target)
    w = OFFICIAL_SSIM_WINDOW
    # images v[:, :, k]: stack index k first
    ak, bk = np.ascontiguousarray(a.transpose(2, 0, 1)), np.ascontiguousarray(b.transpose(2, 0, 1))
    s2 = float(_ssim_stack(ak, bk, peak, w).mean())
    s1 = float(_ssim_stack(np.ascontiguousarray(ak.transpose(0, 2, 1)), np.ascontiguousarray(bk.transpose(0, 2, 1)),
                           peak, w).mean())
    s3 = float(_ssim_stack(np.ascontiguousarray(a.transpose(1, 0, 2)), np.ascontiguousarray(b.transpose(1, 0, 2)),
                           peak, w).mean())
    return {"ssim1": s1, "ssim2": s2, "ssim3": s3, "mean": (s1 + s2 + s3) / 3.0}


def _unit_volume(x, name: str) -> np.ndarray:
    """``x`` as a finite 3D numpy array in its own floating precision (float32 stays float32,
    as the network output the official code scales)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold numbers, got dtype {arr.dtype}")
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if arr.ndim != 3:
        raise ValueError(f"{name} must be a volume (nz, ny, nx), got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values; metrics need finite inputs")
    return arr


def official_scores(prediction, target) -> dict[str, float]:
    """Every number of the official PSCT-Net test script except LPIPS, for one volume pair.

    Parameters
    ----------
    prediction, target : array or tensor ``(nz, ny, nx)``, values in [0, 1]
        The official normalised volumes: CT clipped to [0, 2500] and divided by 2500 (for
        tomoprior volumes: ``tomoprior.studies.evaluation.to_bone_window(mu) / 2500``). The
        prediction is clipped to [0, 1] as theirs is; the target must already lie in [0, 1].
        Scaling to [0, 2500] is done in the inputs' own precision (float32 stays float32, as in
        the official script), then truncated to integers.

    Returns
    -------
    dict of floats:

    - ``mae0``, ``mse0``: on the [0, 1] volumes;
    - ``mae``, ``mse``: on the integer [0, 2500] volumes;
    - ``psnr_3d``: :func:`official_psnr_3d`, peak 2500 (their ``psnr-3d``);
    - ``psnr_1``, ``psnr_2``, ``psnr_3``, ``psnr_avg``: :func:`official_slice_psnr` (``psnr_avg``
      is the paper's "PSNR");
    - ``ssim_1``, ``ssim_2``, ``ssim_3``, ``ssim_avg``: :func:`official_ssim` (``ssim_avg`` is the
      paper's "SSIM").

    Raises
    ------
    ValueError
        Shapes differ or are not 3D, values not finite, or the target outside [0, 1] (normalise
        it first: clip to [0, 2500] in its CT units and divide by 2500).
    """
    p = _unit_volume(prediction, "prediction")
    t = _unit_volume(target, "target")
    same_shape(p, t)
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        raise ValueError(f"target must be the official [0, 1] volume, got values in [{lo:.6g}, {hi:.6g}]; clip it to "
                         f"[0, 2500] in its CT units and divide by 2500 (tomoprior: to_bone_window(mu) / 2500)")
    p = np.clip(p, 0, 1)
    out = {"mae0": official_mae(p, t), "mse0": official_mse(p, t)}
    pi = np.trunc(p * p.dtype.type(OFFICIAL_PEAK)).astype(np.float64)
    ti = np.trunc(t * t.dtype.type(OFFICIAL_PEAK)).astype(np.float64)
    out["mae"], out["mse"] = official_mae(pi, ti), official_mse(pi, ti)
    out["psnr_3d"] = official_psnr_3d(pi, ti, OFFICIAL_PEAK)
    sp = official_slice_psnr(pi, ti, OFFICIAL_PEAK)
    out.update(psnr_1=sp["axis0"], psnr_2=sp["axis1"], psnr_3=sp["axis2"], psnr_avg=sp["mean"])
    ss = official_ssim(pi, ti, OFFICIAL_PEAK)
    out.update(ssim_1=ss["ssim1"], ssim_2=ss["ssim2"], ssim_3=ss["ssim3"], ssim_avg=ss["mean"])
    return out

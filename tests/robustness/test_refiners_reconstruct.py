"""Robustness of ``tomoprior reconstruct``: image files of random shape, dtype and
content, and faults while writing (SIGTERM, kill -9, a full disk, a read-only folder).

Every bad input must end in exit code 2 with one message naming the file and the fix, no
traceback and no output; every fault must leave the previous outputs intact and, once the
command has run again, no temporary behind. The NIfTI and its PNG are written together or
not at all.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tomoprior as tp
from tests.conftest import default_sigint_in_child
from tomoprior.cli import reconstruct as rec
from tomoprior.cli.reconstruct import MAX_LINE_INTEGRAL, NEGATIVE_TOLERANCE, read_xray, reconstruct

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 16^3 grid, two 48^2 views, the line integrals of a cube as .npy, the geometry YAML."""
    folder = tmp_path_factory.mktemp("case")
    geom = tp.BiplanarGeometry.from_parameters(binning=32, grid=tp.VolumeGrid((16, 16, 16), (12, 12, 12)))
    geom.save(folder / "geom.yaml")
    vol = torch.zeros(16, 16, 16)
    vol[4:12, 4:12, 4:12] = 0.02
    xr = tp.project(vol, geom)
    paths = []
    for v in range(2):
        np.save(folder / f"v{v}.npy", xr[v].numpy())
        paths.append(str(folder / f"v{v}.npy"))
    return {"folder": folder, "geometry": str(folder / "geom.yaml"), "xrays": paths, "shape": tuple(xr.shape[1:])}


def _invoke(args):
    return CliRunner().invoke(reconstruct, [str(a) for a in args])


def _clean_error(res, *words):
    """Exit 2, a message naming ``words``, no traceback (click's SystemExit only)."""
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and "Aborted!" not in res.output and "imageio" not in res.output
    for w in words:
        assert w in res.output, (w, res.output)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


# -- images of random shape, dtype and content ---------------------------------------------------

dtypes = st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.float64,
                          np.complex64, np.bool_])
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@FAST
@given(arr=dtypes.flatmap(lambda dt: hnp.arrays(dt, shapes)))
def test_npy_of_any_shape_dtype_content_is_read_or_refused_by_name(arr, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, arr)
    try:
        out = read_xray(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    # accepted: a 2D real image, used as is, finite and plausible line integrals
    assert arr.ndim == 2 and min(arr.shape) >= 2 and arr.dtype.kind in "iuf"
    assert out.dtype == np.float32 and out.shape == arr.shape and np.isfinite(out).all()
    np.testing.assert_array_equal(out, arr.astype(np.float64).astype(np.float32))
    peak = float(np.abs(out).max())
    assert out.min() >= -NEGATIVE_TOLERANCE * peak - 1e-6 and out.max() <= MAX_LINE_INTEGRAL


@FAST
@given(arr=st.sampled_from([np.uint8, np.uint16]).flatmap(
    lambda dt: hnp.arrays(dt, st.sampled_from([(1, 7), (6, 5), (4, 4, 3), (5, 3, 4), (3, 3, 2), (8, 8)]))),
    fmt=st.sampled_from([".png", ".tif"]))
def test_intensity_images_become_non_negative_line_integrals(arr, fmt, tmp_path):
    from PIL import Image

    path = tmp_path / f"x{fmt}"
    if fmt == ".png":  # grey 8/16-bit, or 8-bit grey+alpha, RGB, RGBA (Pillow picks the mode)
        Image.fromarray(arr if arr.ndim == 2 else arr.astype(np.uint8)).save(path)
    else:
        import tifffile

        with warnings.catch_warnings():  # tifffile's note on how it stores (h, w, 2..4) arrays
            warnings.simplefilter("ignore", DeprecationWarning)
            tifffile.imwrite(path, arr)
    try:
        with warnings.catch_warnings():  # a constant image says it holds no attenuation: expected here
            warnings.simplefilter("ignore", UserWarning)
            out = read_xray(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    assert out.ndim == 2 and min(out.shape) >= 2 and np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= -np.log(1e-6) + 1e-4  # -ln(I / I0) with I0 = the maximum


@FAST
@given(blob=st.binary(max_size=300), suffix=st.sampled_from([".npy", ".png", ".tif", ".tiff"]),
       keep_header=st.booleans())
def test_random_and_truncated_files_are_refused_by_name(blob, suffix, keep_header, tmp_path):
    headers = {".npy": b"\x93NUMPY\x01\x00", ".png": b"\x89PNG\r\n\x1a\n", ".tif": b"II*\x00",
               ".tiff": b"MM\x00*"}
    path = tmp_path / f"x{suffix}"
    path.write_bytes((headers[suffix] if keep_header else b"") + blob)
    try:
        out = read_xray(path)
    except ValueError as exc:
        assert str(path) in str(exc)
        return
    assert out.ndim == 2 and np.isfinite(out).all()  # random bytes that happen to be a valid image


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=st.sampled_from([np.float32, np.float64, np.int16, np.complex64]).flatmap(
    lambda dt: hnp.arrays(dt, st.sampled_from([(48, 48), (24, 24), (48, 24), (2, 48, 48)]))))
def test_cli_with_random_images_exits_0_or_2_and_writes_nothing_on_error(case, arr, tmp_path):
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example
    bad = tmp_path / "view0.npy"
    np.save(bad, arr)
    out = tmp_path / "vol.nii.gz"
    res = _invoke(["--xrays", bad, case["xrays"][1], "--geometry", case["geometry"], "--refiner", "bp-prior",
                   "--out", out])
    assert res.exit_code in (0, 2), res.output + repr(res.exception)
    assert isinstance(res.exception, (SystemExit, type(None))), repr(res.exception)
    if res.exit_code == 2:
        assert str(bad) in res.output
        assert not out.exists() and not (tmp_path / "vol.png").exists()
    else:
        assert out.is_file() and (tmp_path / "vol.png").is_file()
    assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == (["view0.npy", "vol.nii.gz", "vol.png"]
                                                          if res.exit_code == 0 else ["view0.npy"])


# -- the sweep's cases, one by one ----------------------------------------------------------------

def test_issue_11_input_cases(case, tmp_path):
    g, (a, b) = case["geometry"], case["xrays"]
    out = tmp_path / "v.nii.gz"
    base = ["--geometry", g, "--refiner", "bp-prior", "--out", out]
    (tmp_path / "empty.png").write_bytes(b"")
    _clean_error(_invoke(["--xrays", tmp_path / "empty.png", b, *base]), "empty.png is empty (0 bytes)")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    _clean_error(_invoke(["--xrays", tmp_path / "corrupt.png", b, *base]), "corrupt.png: cannot read the .png",
                 "export it again")
    (tmp_path / "empty.npy").write_bytes(b"")
    _clean_error(_invoke(["--xrays", tmp_path / "empty.npy", b, *base]), "empty.npy is empty")
    np.save(tmp_path / "neg.npy", -np.load(a))
    _clean_error(_invoke(["--xrays", tmp_path / "neg.npy", b, *base]), "neg.npy", "negative", "sign")
    np.save(tmp_path / "cplx.npy", np.load(a).astype(np.complex64))
    _clean_error(_invoke(["--xrays", tmp_path / "cplx.npy", b, *base]), "cplx.npy", "complex")
    np.save(tmp_path / "huge.npy", np.load(a) * 1e6)
    _clean_error(_invoke(["--xrays", tmp_path / "huge.npy", b, *base]), "huge.npy", "not line integrals")
    small = np.load(a)[::2, ::2]
    np.save(tmp_path / "small.npy", small)
    np.save(tmp_path / "small1.npy", np.load(b)[::2, ::2])
    _clean_error(_invoke(["--xrays", tmp_path / "small.npy", tmp_path / "small1.npy", *base]), "small.npy",
                 "(24, 24)", "(48, 48)", "--resample")
    assert not out.exists() and _leftovers(tmp_path) == []
    ok = _invoke(["--xrays", tmp_path / "small.npy", tmp_path / "small1.npy", *base, "--resample"])
    assert ok.exit_code == 0, ok.output
    assert "resampled from (24, 24) to the detector's (48, 48)" in ok.output and out.is_file()


def test_existing_outputs_are_refused_unless_overwrite(case, tmp_path):
    out = tmp_path / "v.nii.gz"
    args = ["--xrays", *case["xrays"], "--geometry", case["geometry"], "--refiner", "bp-prior", "--out", out]
    assert _invoke(args).exit_code == 0
    (tmp_path / "v.png").write_bytes(b"my own figure")
    before = out.read_bytes()
    _clean_error(_invoke(args), "already exist", "--overwrite")
    assert out.read_bytes() == before and (tmp_path / "v.png").read_bytes() == b"my own figure"
    assert _invoke([*args, "--overwrite"]).exit_code == 0
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"
    _clean_error(_invoke([*args, "--png", out, "--overwrite"]), "must end in .png")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is missing")
def test_device_without_cuda_is_a_clear_error(case, tmp_path):
    args = ["--xrays", *case["xrays"], "--geometry", case["geometry"], "--refiner", "bp-prior",
            "--out", tmp_path / "v.nii.gz"]
    _clean_error(_invoke([*args, "--device", "cuda"]), "--device cuda: CUDA is not available", "use cpu")
    _clean_error(_invoke([*args, "--device", "banana"]), "'banana' is not a device")
    assert not (tmp_path / "v.nii.gz").exists()


def test_untyped_set_values_are_refused(case, tmp_path):
    args = ["--xrays", *case["xrays"], "--geometry", case["geometry"], "--out", tmp_path / "v.nii.gz"]
    _clean_error(_invoke([*args, "--refiner", "bp-prior", "--set", "clamp_min=banana"]),
                 "BPPriorConfig.clamp_min must be a number or None, got 'banana'")
    pytest.importorskip("psctnet")
    _clean_error(_invoke([*args, "--refiner", "psctnet", "--set", "use_bim=banana"]),
                 "PSCTNetConfig.use_bim must be a bool")


# -- faults while writing -------------------------------------------------------------------------

def _previous_outputs(case, folder: Path) -> tuple[list, dict]:
    args = ["--xrays", *case["xrays"], "--geometry", case["geometry"], "--refiner", "bp-prior",
            "--out", folder / "v.nii.gz"]
    assert _invoke(args).exit_code == 0
    return args, {p: p.read_bytes() for p in (folder / "v.nii.gz", folder / "v.png")}


def _intact(previous: dict) -> bool:
    return all(p.read_bytes() == data for p, data in previous.items())


def test_disk_full_while_writing_the_png_writes_neither(case, tmp_path, monkeypatch):
    args, previous = _previous_outputs(case, tmp_path)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rec, "_render_slices_png", full)
    _clean_error(_invoke([*args, "--overwrite"]), "the disk is full", "v.png", "previous file is unchanged")
    assert _intact(previous) and _leftovers(tmp_path) == []
    (tmp_path / "v.nii.gz").unlink()
    (tmp_path / "v.png").unlink()
    _clean_error(_invoke(args), "the disk is full")
    assert list(tmp_path.iterdir()) == []  # neither file: never a NIfTI without its PNG


def test_failed_rename_rolls_back_the_files_already_renamed(case, tmp_path, monkeypatch):
    args, previous = _previous_outputs(case, tmp_path)
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == 2:  # the PNG, after the NIfTI was already in place
            raise OSError(errno.EROFS, "Read-only file system")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    _clean_error(_invoke([*args, "--overwrite"]), "cannot write", "nothing was written")
    assert calls[:2] == ["v.nii.gz", "v.png"]
    assert _intact(previous) and _leftovers(tmp_path) == []


def _mount_tmpfs(folder: Path, options: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if not shutil.which("mount") or (hasattr(os, "geteuid") and os.geteuid() != 0):
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 4 KiB tmpfs (too small for the PNG), or skip where mounting is not allowed."""
    folder = tmp_path / "small"
    if not _mount_tmpfs(folder, "size=4k"):
        pytest.skip("cannot mount a tmpfs here (needs root); the injected ENOSPC test covers the logic")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / "ro"
    if not _mount_tmpfs(folder, "ro,size=4k"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_really_full_disk(case, small_disk):
    args = ["--xrays", *case["xrays"], "--geometry", case["geometry"], "--refiner", "bp-prior",
            "--out", small_disk / "v.nii.gz"]
    _clean_error(_invoke(args), "the disk is full", "free")
    assert list(small_disk.iterdir()) == []


def test_read_only_output_folder(case, read_only):
    args = ["--xrays", *case["xrays"], "--geometry", case["geometry"], "--refiner", "bp-prior",
            "--out", read_only / "v.nii.gz"]
    _clean_error(_invoke(args), "cannot write to the output folder", str(read_only), "writable")


RUNNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import tomoprior.cli.reconstruct as r
    render = r._render_slices_png
    def slow(*args, **kwargs):
        render(*args, **kwargs)
        Path(sys.argv[1]).write_text("staged")  # the NIfTI and the PNG temporaries exist now
        time.sleep(120)
    r._render_slices_png = slow
    from tomoprior.cli.main import main
    sys.exit(main(sys.argv[2:]))
""")


def _start_and_wait(tmp_path, args) -> tuple[subprocess.Popen, Path]:
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, str(runner), str(marker), "reconstruct", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint_in_child)
    for _ in range(1200):  # waits for an event, not a duration: the write has started
        if marker.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()
    return proc, marker


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_killed_while_writing(case, tmp_path, how):
    work = tmp_path / "out"
    work.mkdir()
    args, previous = _previous_outputs(case, work)
    proc, _ = _start_and_wait(tmp_path, [*args, "--overwrite"])
    assert _leftovers(work)  # the temporaries being written
    proc.send_signal(getattr(signal, how))
    _, stderr = proc.communicate(timeout=60)
    assert _intact(previous)
    if how == "SIGTERM":
        assert proc.returncode == 128 + signal.SIGTERM
        assert "terminated by SIGTERM; nothing was written" in stderr and "Traceback" not in stderr
        assert _leftovers(work) == []
    else:
        assert proc.returncode == -signal.SIGKILL  # nothing can run; the temporaries stay until the next run
        assert _leftovers(work)
        assert _invoke([*args, "--overwrite"]).exit_code == 0
        assert _leftovers(work) == []  # the next write removed what the killed process left


def test_the_png_path_is_checked_before_any_work(case, tmp_path):
    args = ["--xrays", *case["xrays"], "--geometry", case["geometry"], "--refiner", "bp-prior",
            "--out", tmp_path / "v.nii.gz"]
    _clean_error(_invoke([*args, "--png", tmp_path / "missing" / "v.png"]), "does not exist")
    _clean_error(_invoke([*args, "--png", tmp_path / "v.jpg"]), "must end in .png")
    assert list(tmp_path.iterdir()) == []


def test_nifti_round_trip_unchanged(case, tmp_path):
    """The NIfTI the staged writer produces is the one tomoprior.data reads back."""
    from tomoprior import data, refiners

    out = tmp_path / "v.nii.gz"
    assert _invoke(["--xrays", *case["xrays"], "--geometry", case["geometry"], "--refiner", "bp-prior",
                    "--out", out]).exit_code == 0
    vol = data.load_nifti(out, units="mu_per_mm")
    geom = tp.Geometry.load(case["geometry"])
    x = torch.from_numpy(np.stack([np.load(p) for p in case["xrays"]]))[None]
    expected = refiners.load("bp-prior", normalization="chord").reconstruct(x, geom)[0, 0]
    torch.testing.assert_close(vol.data, expected, atol=1e-6, rtol=0)

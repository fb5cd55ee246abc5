"""Robustness of ``tomoprior evaluate`` and its API: unknown groups, unavailable
devices, non-finite weights, unwritable result folders, SIGTERM during a run.

Each must be an exit code 2 (or a ValueError in the API) with a message naming the input and
the fix, checked before the evaluation runs where it can be, with no traceback and no
temporary left in the results folder.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import default_sigint_in_child
from tomoprior import data, refiners
from tomoprior.cli.evaluate import evaluate as evaluate_cmd
from tomoprior.studies.evaluation import GROUPS, check_group, compare_markdown, evaluate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval") / "tiny.h5"
    specs = data.make_specs(4, seed=3, grid=16, binning=48, variants=["normal", "sagittal"],
                            fractions=(0.5, 0.0, 0.5), supersample=1)
    data.generate(specs, path)
    return path


def _run(*args):
    return CliRunner().invoke(evaluate_cmd, [str(a) for a in args])


def _clean_error(res, *words):
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    for w in words:
        assert w in res.output, (w, res.output)


@settings(max_examples=60, deadline=None)
@given(group=st.one_of(st.text(max_size=12), st.sampled_from([*GROUPS, "variant:sagittal", "variant:", "Normal",
                                                              "variant:banana", " all "])))
def test_check_group_accepts_exactly_the_documented_groups(group):
    from tomoprior.data.synthetic import available_variants

    valid = {*GROUPS, *(f"variant:{v}" for v in available_variants("skull"))}
    if group.strip() in valid:
        assert check_group(group) == group.strip()
    else:
        with pytest.raises(ValueError, match="valid groups: all, normal, craniosynostosis, variant:"):
            check_group(group)


def test_unknown_group_is_refused_before_any_evaluation(tiny, tmp_path):
    res = _run("--data", tiny, "--refiner", "bp-prior", "--groups", "all,banana", "--out", tmp_path / "res")
    _clean_error(res, "unknown group 'banana'", "valid groups", "variant:sagittal")
    assert "| bp-prior |" not in res.output and not (tmp_path / "res").exists()
    _clean_error(_run("--data", tiny, "--refiner", "bp-prior", "--groups", ","), "at least one group")
    r = evaluate(refiners.load("bp-prior", normalization="chord"), tiny, max_samples=1)
    with pytest.raises(ValueError, match="unknown group 'banana'"):
        compare_markdown([r], group="banana")
    assert "| bp-prior | 0 |" in compare_markdown([r], group="variant:metopic")  # valid, none in the split


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is missing")
def test_unavailable_device_is_named(tiny):
    _clean_error(_run("--data", tiny, "--refiner", "bp-prior", "--device", "cuda"), "--device cuda",
                 "CUDA is not available", "use cpu")
    _clean_error(_run("--data", tiny, "--refiner", "bp-prior", "--device", "cuda:3"), "CUDA is not available")
    with pytest.raises(ValueError, match="device cuda: CUDA is not available"):
        evaluate(refiners.load("bp-prior"), tiny, device="cuda")


def test_non_finite_weights_blame_the_checkpoint_not_the_features(tiny, tmp_path):
    psctnet = pytest.importorskip("psctnet")
    net = psctnet.PSCTNet(preset="tiny", volume_shape=(16, 16, 16), xray_size=16, enc3d_widths=(8, 8),
                          enc2d_widths=(8, 8), dense_layers=1, agp_dim=16, agp_heads=2, bim_d_state=4)
    payload = net.checkpoint_dict()
    payload["state_dict"]["stem3d.0.weight"] = torch.full_like(payload["state_dict"]["stem3d.0.weight"],
                                                                  float("nan"))
    ckpt = refiners.write_checkpoint(payload, tmp_path / "diverged.pt")
    res = _run("--data", tiny, "--refiner", "psctnet", "--checkpoint", ckpt)
    _clean_error(res, "diverged.pt", "weights are not finite", "stem3d.0.weight", "earlier checkpoint")
    assert "features" not in res.output
    with torch.no_grad():  # the API names the refiner and the checkpoint it says it came from
        net.stem3d[0].weight.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"refiner 'psctnet' \(checkpoint run/x\.pt\): the weights are not finite"):
        evaluate(net, tiny, checkpoint="run/x.pt")


def test_result_folder_that_cannot_be_written_is_refused_first(tiny, tmp_path):
    (tmp_path / "afile").write_text("x")
    _clean_error(_run("--data", tiny, "--refiner", "bp-prior", "--out", tmp_path / "afile"), "is a file")
    _clean_error(_run("--data", tiny, "--refiner", "bp-prior", "--out", tmp_path / "afile" / "sub"),
                 "cannot write results to")


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    ok = shutil.which("mount") and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=4k", "tmpfs", str(folder)],
                                                  capture_output=True).returncode == 0
    if not ok:
        pytest.skip("cannot mount a read-only tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_read_only_result_folder(tiny, read_only):
    res = _run("--data", tiny, "--refiner", "bp-prior", "--out", read_only / "results")
    _clean_error(res, "cannot write results to", "choose a writable folder")
    res = _run("--data", tiny, "--refiner", "bp-prior", "--out", read_only)
    _clean_error(res, "cannot write", str(read_only))


def test_disk_full_while_saving_results(tiny, tmp_path, monkeypatch):
    import errno

    from tomoprior.studies import evaluation

    def full(self, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(evaluation.EvaluationResult, "save", full)
    res = _run("--data", tiny, "--refiner", "bp-prior", "--max-samples", "1", "--no-fit-bp-prior",
               "--out", tmp_path / "res")
    _clean_error(res, "the disk is full", "bp-prior.json")
    assert [p.name for p in (tmp_path / "res").iterdir()] == []


RUNNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import tomoprior.studies.evaluation as ev
    run = ev._run_refiner
    def slow(*args, **kwargs):
        out = run(*args, **kwargs)
        Path(sys.argv[1]).write_text("running")
        time.sleep(120)
        return out
    ev._run_refiner = slow
    from tomoprior.cli.main import main
    sys.exit(main(sys.argv[2:]))
""")


def test_sigterm_during_evaluation(tiny, tmp_path):
    out = tmp_path / "res"
    runner, marker = tmp_path / "runner.py", tmp_path / "marker"
    runner.write_text(RUNNER)
    proc = subprocess.Popen([sys.executable, str(runner), str(marker), "evaluate", "--data", str(tiny), "--refiner",
                             "bp-prior", "--no-fit-bp-prior", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint_in_child)
    for _ in range(1200):  # until the evaluation runs (an event, not a duration)
        if marker.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert marker.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "terminated by SIGTERM" in stderr and "Traceback" not in stderr
    assert [p.name for p in Path(out).iterdir()] == []  # no half-written results, no temporaries

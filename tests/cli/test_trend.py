"""``tomoprior trend``: exit codes, the printed table, warnings and the written files.

The reports are small hand-written report.json files (see tests/validation/test_trend.py);
no calibration runs here.
"""

import json

import pytest
from click.testing import CliRunner

from tests.validation.test_trend import drifting_series, fake_report
from tomoprior.cli.main import cli


def run(*args):
    return CliRunner().invoke(cli, ["trend", *map(str, args)])


def test_trend_writes_the_page_and_prints_the_runs_in_date_order(tmp_path):
    drifting_series(tmp_path / "qa", n=3)
    out = tmp_path / "trend"
    r = run(tmp_path / "qa", "--out", out)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["date", "verdict"]
    assert [ln.split()[0] for ln in lines[1:4]] == ["2026-03-01", "2026-03-08", "2026-03-15"]
    assert "0.050" in lines[1] and lines[-1] == f"trend: {out / 'trend.html'}"
    files = {p.name for p in out.iterdir()}
    assert {"trend.html", "trend.json", "rms_trend.png", "trend_0_frontal.png", "trend_1_lateral.png"} <= files
    assert len(json.loads((out / "trend.json").read_text())["runs"]) == 3


def test_explicit_files_and_a_skipped_non_report(tmp_path):
    a = fake_report(tmp_path / "a" / "report.json", acquisition_date="2026-01-01")
    other = tmp_path / "settings.json"
    other.write_text(json.dumps({"schema": "something else"}))
    r = run(a, other, "--out", tmp_path / "t")
    assert r.exit_code == 0, r.output
    assert f"warning: skipped {other}" in r.stderr and "not a tomoprior QA report" in r.stderr
    assert str(a) in r.stdout


def test_tolerance_file_sets_the_band(tmp_path):
    drifting_series(tmp_path / "qa", n=2, step=1.0)
    tol = tmp_path / "qa.yaml"
    tol.write_text("drift:\n  source_to_detector: 0.5 mm\n")
    r = run(tmp_path / "qa", "--out", tmp_path / "t", "--tolerances", tol)
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "t" / "trend.json").read_text())
    assert d["bands"]["frontal"]["source_to_detector"]["half_width"] == pytest.approx(0.5)
    assert len(d["outside_band"]) == 2


@pytest.mark.parametrize("case", ["missing path", "no report", "only non-reports", "bad tolerances", "out is a file",
                                  "out under a file", "no arguments"])
def test_bad_usage_exits_2_with_a_message_and_writes_nothing(tmp_path, case):
    good = fake_report(tmp_path / "qa" / "r" / "report.json")
    out = tmp_path / "t"
    args = [good, "--out", out]
    if case == "missing path":
        args = [tmp_path / "nope", "--out", out]
        expect = "does not exist"
    elif case == "no report":
        (tmp_path / "empty").mkdir()
        args = [tmp_path / "empty", "--out", out]
        expect = "no readable tomoprior QA report"
    elif case == "only non-reports":
        bad = tmp_path / "bad.json"
        bad.write_text("{oops")
        args = [bad, "--out", out]
        expect = "no readable tomoprior QA report"
    elif case == "bad tolerances":
        tol = tmp_path / "qa.yaml"
        tol.write_text("heldout_rms: 0.1\n")  # no unit
        args += ["--tolerances", tol]
        expect = "has no unit"
    elif case == "out is a file":
        out.write_text("x")
        expect = "is a file"
    elif case == "out under a file":
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" / "t"
        args = [good, "--out", out]
        expect = "cannot write"
    else:
        args = ["--out", out]
        expect = "Missing argument"
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert expect in r.output and "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert not (out.is_dir() and any(out.iterdir()))


def test_trend_is_listed_in_the_help():
    r = CliRunner().invoke(cli, ["--help"])
    assert r.exit_code == 0 and "trend" in r.output

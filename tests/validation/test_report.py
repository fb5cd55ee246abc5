"""Report writing: self-contained HTML, strict JSON, PNG figures, atomic folder updates."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from tomoprior.validation import report as rp
from tomoprior.validation.report import Figure, Report, residual_figure, write_report


def _report(n_fig=2, value=1.5):
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 1, (64, 80))
    obs = rng.uniform(5, 60, (10, 2))
    res = rng.normal(0, 0.1, (10, 2))
    res[3] = np.nan
    figs = []
    for i in range(n_fig):
        png, _ = residual_figure(img, obs, res, title=f"view {i}", heldout=np.arange(10) < 2)
        figs.append(Figure(f"fig_{i}.png", f"caption {i} <&>", png))
    return Report(
        title="Test <report>", summary=[("rms px", value), ("converged", True)],
        tables=[("per view", [{"view": "frontal", "rms": 0.1, "ok": False}, {"view": "lateral", "rms": float("nan")}])],
        figures=figs, numbers={"rms": value, "nan": float("nan"), "arr": np.arange(3), "nested": {"x": np.float32(2)}},
        texts=[("geometry", "schema: x\n")], notes=["fit did not converge"],
    )


def test_report_is_self_contained_and_numbers_are_strict_json(tmp_path):
    out = tmp_path / "rep"
    html_path = write_report(_report(), out, extra_files={"geometry.yaml": "a: 1\n"})
    assert html_path == out / "report.html"
    text = html_path.read_text()
    # no external assets: every image is inline, no links or scripts
    assert not re.search(r"""(src|href)=['"](?!data:)""", text)
    assert "<link" not in text and "<script" not in text
    imgs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(imgs) == 2
    for b64, name in zip(imgs, ["fig_0.png", "fig_1.png"]):
        raw = base64.b64decode(b64)
        assert raw == (out / name).read_bytes()
        assert Image.open(io.BytesIO(raw)).size[0] > 100
    assert "Test &lt;report&gt;" in text and "caption 0 &lt;&amp;&gt;" in text
    assert "fit did not converge" in text and 'class="bad"' in text  # a False cell is flagged
    data = json.loads((out / "report.json").read_text())  # strict: NaN would be invalid
    assert data["rms"] == 1.5 and data["nan"] is None and data["arr"] == [0, 1, 2] and data["nested"]["x"] == 2.0
    assert data["software"]["numpy"] == np.__version__ and data["figures"]["fig_1.png"] == "caption 1 <&>"
    assert (out / "geometry.yaml").read_text() == "a: 1\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_failed_write_leaves_previous_report_untouched(tmp_path, monkeypatch):
    out = tmp_path / "rep"
    write_report(_report(value=1.0), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real = rp.write_bytes_atomic

    def flaky(path, data):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(rp, "write_bytes_atomic", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_report(_report(value=2.0), out)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # and a fresh folder is not created at all on failure
    calls["n"] = 0
    with pytest.raises(OSError):
        write_report(_report(), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_replacing_a_report_updates_every_file(tmp_path):
    out = tmp_path / "rep"
    write_report(_report(value=1.0), out)
    (out / "unrelated.txt").write_text("keep me")
    write_report(_report(value=3.0), out)
    assert json.loads((out / "report.json").read_text())["rms"] == 3.0
    assert (out / "unrelated.txt").read_text() == "keep me"


def test_bad_targets_raise(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        write_report(_report(n_fig=0), f)
    r = _report(n_fig=0)
    r.figures = [Figure("../escape.png", "x", b"")]
    with pytest.raises(ValueError, match="plain file name"):
        write_report(r, tmp_path / "x")
    r.figures = [Figure("a.png", "x", b""), Figure("a.png", "y", b"")]
    with pytest.raises(ValueError, match="unique"):
        write_report(r, tmp_path / "x")


def test_residual_figure_scale_and_magnification():
    img = np.zeros((100, 200))
    obs = np.array([[50.0, 50.0], [100.0, 40.0]])
    res = np.array([[0.1, 0.0], [0.0, 0.2]])
    png, mag = residual_figure(img, obs, res, title="t")
    # default: the 90th-percentile residual (rounded up to 0.2 px) spans 6 % of the width
    assert mag == pytest.approx(0.06 * 200 / 0.2)
    assert Image.open(io.BytesIO(png)).format == "PNG"
    _, mag2 = residual_figure(img, obs, res, title="t", magnify=50.0)
    assert mag2 == 50.0


def test_versions_and_nice_scale():
    v = rp.software_versions()
    assert v["tomoprior"] and v["python"]
    assert rp._nice_scale(np.array([0.03, 0.07])) == pytest.approx(0.1)
    assert rp._nice_scale(np.array([3.0])) == pytest.approx(5.0)

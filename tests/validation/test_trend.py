"""Trend of past calibration QA reports: collecting report.json files, ordering, bands, output.

The reports are written by hand (the keys a real ``report.json`` of ``tomoprior validate``
holds, reduced to what the trend reads), so no calibration runs here.
"""

import datetime
import json
import warnings

import pytest

from tomoprior.geometry.parameters import default_frontal, default_lateral
from tomoprior.validation import qa
from tomoprior.validation.trend import (
    ReportSkipped,
    TrendWarning,
    collect_reports,
    drift_band,
    parse_date,
    trend_report,
)

SDD = 1500.0


def fake_report(path, *, sdd_shift=0.0, acquisition_date=None, created="2026-01-01T08:00:00+00:00",
                verdict="PASS", heldout=0.05, tri=0.012, views=("frontal", "lateral"), uncertainty=True,
                tolerances=None, u0_mm=0.2):
    """Write a minimal QA report.json shaped like a real one; returns its path.

    ``sdd_shift`` (mm) is added to every view's source-to-detector distance; the pixel pitch
    is 0.2 mm, so ``u0_mm = 0.2`` is a detector offset of 1 px.
    """
    params, items = [], [
        {"name": "fit_converged", "view": None, "value": True, "unit": "", "limit": True, "comparison": "==",
         "pass": True, "reason": None, "group": "sanity"},
        {"name": "heldout_rms", "view": None, "value": heldout, "unit": "px", "limit": 0.1, "comparison": "<=",
         "pass": heldout <= 0.1, "reason": None, "group": "statistics"},
        {"name": "triangulation_rms", "view": None, "value": tri, "unit": "mm", "limit": 0.2, "comparison": "<=",
         "pass": True, "reason": None, "group": "statistics"},
    ]
    for k, name in enumerate(views):
        base = default_lateral if name == "lateral" else default_frontal
        p = base(name=name, source_to_detector=SDD + sdd_shift, u0=u0_mm, v0=-0.4)
        unc = {"primary_angle_deg": 0.001, "secondary_angle_deg": 0.001, "source_to_isocenter": 0.2,
               "source_to_detector": 0.3, "u0": 0.002, "v0": 0.002, "detector_rotation_deg": 0.0007,
               "detector_tilt_u_deg": 0.015, "detector_tilt_v_deg": 0.014, "u0_px": 0.01, "v0_px": 0.01}
        view = {"parameters": p.to_dict(), "rms_px": 0.04, "max_px": 0.1}
        if uncertainty:
            view["uncertainty"] = unc
        params.append(view)
        items.append({"name": "heldout_rms", "view": name, "value": heldout + 0.01 * (k + 1), "unit": "px",
                      "limit": 0.1, "comparison": "<=", "pass": True, "reason": None, "group": "statistics"})
    tol = qa.Tolerances.default().to_dict() if tolerances is None else tolerances
    d = {
        "verdict": {"verdict": verdict, "pass": verdict == "PASS", "views": dict.fromkeys(views, verdict),
                    "reasons": [], "items": items, "tolerances": tol, "tolerances_source": "built-in defaults",
                    "notes": []},
        "summary": {"views": list(views), "heldout_rms_px": heldout, "triangulation_rms_mm": tri},
        "signoff": {"phantom": "bead_cage", **({"acquisition_date": acquisition_date} if acquisition_date else {})},
        "reprojection": {"views": [{"name": n, "rms_heldout_px": heldout} for n in views]},
        "calibration_result": {"schema": "tomoprior.calibration", "schema_version": 1, "heldout_rms_px": heldout,
                               "triangulation_rms_mm": tri, "views": params},
        "created_utc": created,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return path


def drifting_series(root, n=4, step=1.0):
    """``n`` weekly reports, source-to-detector drifting ``step`` mm per run; written out of order."""
    paths = []
    for i in reversed(range(n)):
        day = datetime.date(2026, 3, 1) + datetime.timedelta(weeks=i)
        paths.append(fake_report(root / f"run{chr(ord('a') + (n - 1 - i))}" / "report.json", sdd_shift=step * i,
                                 acquisition_date=day.isoformat()))
    return paths


# -- reading ----------------------------------------------------------------------------------

def test_collect_orders_by_acquisition_date_and_reads_values(tmp_path):
    drifting_series(tmp_path)
    recs = collect_reports(tmp_path)
    assert [r.date.strftime("%Y-%m-%d") for r in recs] == ["2026-03-01", "2026-03-08", "2026-03-15", "2026-03-22"]
    assert all(r.date_source == "acquisition_date" for r in recs)
    sdd = [r.view("frontal").values["source_to_detector"] for r in recs]
    assert sdd == pytest.approx([1500.0, 1501.0, 1502.0, 1503.0])
    v = recs[0].view("lateral")
    assert v.values["u0"] == pytest.approx(1.0) and v.values["v0"] == pytest.approx(-2.0)  # px at 0.2 mm pitch
    assert v.values["primary_angle"] == pytest.approx(90.0)  # degrees
    assert v.sigma["source_to_detector"] == pytest.approx(0.3) and v.sigma["u0"] == pytest.approx(0.01)
    assert v.sigma["detector_tilt_u"] == pytest.approx(0.015)
    assert recs[0].heldout_rms_px == pytest.approx(0.05) and recs[0].triangulation_rms_mm == pytest.approx(0.012)
    assert recs[0].view("frontal").heldout_rms_px == pytest.approx(0.06)  # from the per-view verdict item
    assert recs[0].verdict == "PASS"


def test_created_utc_orders_reports_without_acquisition_date(tmp_path):
    a = fake_report(tmp_path / "x" / "report.json", created="2026-05-02T10:00:00+00:00", sdd_shift=2)
    b = fake_report(tmp_path / "y" / "report.json", created="2026-05-01T10:00:00+00:00")
    c = fake_report(tmp_path / "z" / "report.json", acquisition_date="20260430")  # DICOM DA form
    recs = collect_reports([a, tmp_path / "y", c])
    assert [r.path for r in recs] == [c, b, a]
    assert [r.date_source for r in recs] == ["acquisition_date", "created_utc", "created_utc"]


def test_non_reports_are_skipped_with_a_warning_naming_them(tmp_path):
    fake_report(tmp_path / "good" / "report.json")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "report.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "report.json").write_text("{not json")
    stray = tmp_path / "numbers.json"
    stray.write_text("[1, 2]")
    with pytest.warns(ReportSkipped) as rec:
        recs = collect_reports([tmp_path, stray])
    text = " | ".join(str(w.message) for w in rec)
    assert len(recs) == 1
    assert str(tmp_path / "other" / "report.json") in text and "not a tomoprior QA report" in text
    assert str(tmp_path / "broken" / "report.json") in text and str(stray) in text


def test_hidden_staging_folders_and_duplicates_are_ignored(tmp_path):
    p = fake_report(tmp_path / "r" / "report.json")
    fake_report(tmp_path / ".r.staging-abc" / "report.json")
    assert len(collect_reports([tmp_path, p])) == 1


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        collect_reports([tmp_path / "nope"])
    assert collect_reports(tmp_path) == []  # an empty folder: nothing, no error


def test_missing_uncertainties_and_different_view_names(tmp_path):
    fake_report(tmp_path / "a" / "report.json", acquisition_date="2026-01-01", uncertainty=False)
    fake_report(tmp_path / "b" / "report.json", acquisition_date="2026-01-08", views=("AP", "LAT"))
    recs = collect_reports(tmp_path)
    assert recs[0].view("frontal").sigma["source_to_detector"] is None
    assert [v.name for v in recs[1].views] == ["AP", "LAT"]
    out = trend_report(recs, tmp_path / "trend")
    files = {p.name for p in out.parent.iterdir()}
    assert {"trend_0_frontal.png", "trend_1_lateral.png", "trend_2_AP.png", "trend_3_LAT.png",
            "rms_trend.png", "trend.html", "trend.json"} <= files


def test_a_report_of_a_calibration_that_could_not_be_fitted_is_a_failed_run(tmp_path):
    fake_report(tmp_path / "a" / "report.json", acquisition_date="2026-01-01")
    failed = {"verdict": {"verdict": "FAIL", "pass": False, "views": {}, "reasons": ["too few beads"],
                          "items": [], "tolerances": None}, "summary": {"views": [], "geometry_file": None},
              "signoff": {"acquisition_date": "2026-01-08"}, "created_utc": "2026-01-08T09:00:00+00:00"}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "report.json").write_text(json.dumps(failed))
    recs = collect_reports(tmp_path)
    assert [r.verdict for r in recs] == ["PASS", "FAIL"] and recs[1].views == []
    trend_report(recs, tmp_path / "t")
    runs = json.loads((tmp_path / "t" / "trend.json").read_text())["runs"]
    assert runs[1]["verdict"] == "FAIL" and runs[1]["heldout_rms_px"] is None


def test_parse_date_forms():
    assert parse_date("2026-12-02").isoformat() == "2026-12-02T00:00:00+00:00"
    assert parse_date("20261202").isoformat() == "2026-12-02T00:00:00+00:00"
    assert parse_date("2026-12-02T09:30:00+01:00").utcoffset().total_seconds() == 3600
    assert parse_date("last tuesday") is None and parse_date(None) is None


# -- bands and output -------------------------------------------------------------------------

def test_drift_beyond_the_band_is_marked(tmp_path):
    drifting_series(tmp_path / "in", n=4, step=1.0)  # default drift limit 2 mm: runs 3 and 4 exceed it
    out = trend_report(collect_reports(tmp_path / "in"), tmp_path / "trend")
    d = json.loads((out.parent / "trend.json").read_text())
    assert d["schema"] == "tomoprior.qa-trend"
    band = d["bands"]["frontal"]["source_to_detector"]
    assert band["center"] == pytest.approx(1500.0) and band["half_width"] == pytest.approx(2.0)
    flagged = [(x["view"], x["parameter"], x["change"]) for x in d["outside_band"]]
    assert sorted(flagged) == sorted([(v, "source_to_detector", pytest.approx(c)) for v in ("frontal", "lateral")
                                      for c in (3.0,)])
    assert len(d["runs"]) == 4 and d["runs"][0]["views"][0]["values"]["source_to_detector"] == pytest.approx(1500)
    html = out.read_text()
    assert "Values outside their tolerance band" in html and "data:image/png;base64," in html
    assert html.count("<figure>") == 3 and "1503.0000" in html


def test_band_exactly_at_the_limit_is_inside_and_tolerances_can_be_given(tmp_path):
    drifting_series(tmp_path / "in", n=3, step=1.0)
    recs = collect_reports(tmp_path / "in")
    trend_report(recs, tmp_path / "t1")  # 2 mm change at a 2 mm limit: inside
    assert json.loads((tmp_path / "t1" / "trend.json").read_text())["outside_band"] == []
    tight = qa.Tolerances.from_dict({"drift": {"source_to_detector": "0.5 mm", "u0": "0.1 mm"}}, where="test")
    trend_report(recs, tmp_path / "t2", tolerances=tight)
    d = json.loads((tmp_path / "t2" / "trend.json").read_text())
    assert len(d["outside_band"]) == 4 and d["tolerances_source"] == "test"
    assert d["bands"]["frontal"]["u0"]["half_width"] == pytest.approx(0.5)  # 0.1 mm at 0.2 mm pitch = 0.5 px


def test_tolerances_come_from_the_newest_report(tmp_path):
    tol = qa.Tolerances.default().to_dict()
    tol["drift"]["source_to_detector"] = "5 mm"
    tol["heldout_rms"] = "0.3 px"
    fake_report(tmp_path / "old" / "report.json", acquisition_date="2026-01-01")
    fake_report(tmp_path / "new" / "report.json", acquisition_date="2026-02-01", tolerances=tol, sdd_shift=4)
    trend_report(collect_reports(tmp_path), tmp_path / "t")
    d = json.loads((tmp_path / "t" / "trend.json").read_text())
    assert d["bands"]["lateral"]["source_to_detector"]["half_width"] == pytest.approx(5.0)
    assert d["outside_band"] == [] and d["tolerances"]["heldout_rms"] == "0.3 px"


def test_drift_band_units():
    assert drift_band(qa.Quantity(0.1, "mm"), "u0", (0.2, 0.4)) == pytest.approx(0.25)  # col pitch
    assert drift_band(qa.Quantity(0.1, "mm"), "v0", (0.2, 0.4)) == pytest.approx(0.5)  # row pitch
    assert drift_band(qa.Quantity(3, "arcmin"), "detector_rotation") == pytest.approx(0.05)
    assert drift_band(qa.Quantity(0.2, "cm"), "source_to_detector") == pytest.approx(2.0)
    assert drift_band(None, "u0") is None


def test_one_report_still_makes_a_page(tmp_path):
    p = fake_report(tmp_path / "only" / "report.json", verdict="FAIL", heldout=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no matplotlib warning (singular limits, ...) with one point
        out = trend_report(collect_reports(p), tmp_path / "t")
    html = out.read_text()
    assert "no trend yet" in html and "FAIL" in html
    assert (tmp_path / "t" / "rms_trend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_records_and_a_file_in_the_way(tmp_path):
    with pytest.raises(ValueError, match="no QA report"):
        trend_report([], tmp_path / "t")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        trend_report(collect_reports(fake_report(tmp_path / "r" / "report.json")), tmp_path / "f")


def test_rewriting_removes_figures_of_a_previous_trend(tmp_path):
    fake_report(tmp_path / "in" / "a" / "report.json", views=("AP",))
    trend_report(collect_reports(tmp_path / "in"), tmp_path / "t")
    assert (tmp_path / "t" / "trend_0_AP.png").exists()
    (tmp_path / "in" / "a" / "report.json").unlink()
    fake_report(tmp_path / "in" / "b" / "report.json", views=("frontal",))
    trend_report(collect_reports(tmp_path / "in"), tmp_path / "t")
    assert not (tmp_path / "t" / "trend_0_AP.png").exists() and (tmp_path / "t" / "trend_0_frontal.png").exists()


def test_unreadable_date_damaged_report_and_mixed_systems_warn(tmp_path):
    a = fake_report(tmp_path / "a" / "report.json", acquisition_date="next week",
                    created="2026-02-01T00:00:00+00:00")
    b = fake_report(tmp_path / "b" / "report.json", acquisition_date="2026-01-01")
    d = json.loads(b.read_text())
    d["signoff"]["serial"] = "SN-2"
    b.write_text(json.dumps(d))
    d = json.loads(a.read_text())
    d["signoff"]["serial"] = "SN-1"
    a.write_text(json.dumps(d))
    c = fake_report(tmp_path / "c" / "report.json")
    d = json.loads(c.read_text())
    d["reprojection"]["views"] = 3.5
    d["calibration_result"]["views"][0]["parameters"]["source_to_detector"] = "far"
    c.write_text(json.dumps(d))
    with pytest.warns(TrendWarning) as rec:
        recs = collect_reports(tmp_path)
    text = " | ".join(str(w.message) for w in rec)
    assert "cannot read the acquisition date 'next week'" in text
    assert f"skipped {c}" in text and "2 different X-ray systems (SN-1, SN-2)" in text
    assert [r.path for r in recs] == [b, a] and recs[1].date_source == "created_utc"
    assert [r.system for r in recs] == ["SN-2", "SN-1"]

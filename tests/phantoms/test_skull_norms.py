"""The procedural skull against the shipped pediatric cranial norms (Porras et al.): the
reader, the measurements, and the tolerances the growth model is held to (means over seeds
within 10 % of the norm for bone thickness and intracranial volume, within 2 points of the
cephalic index)."""

from __future__ import annotations

import numpy as np
import pytest

from tomoprior.phantoms.skull import VARIANTS, cranial_measures, cranial_norms, make_skull
from tomoprior.phantoms.skull.norms import MEASURES, NORM_AGE_RANGE, norm_curve

THICKNESS = ("frontal_thickness_mm", "parietal_thickness_mm", "occipital_thickness_mm")


def _deviation(measure: str, value: float, norm: float) -> float:
    """Relative deviation, or index points for the cephalic index."""
    return value - norm if measure == "cephalic_index" else (value - norm) / norm


def _limit(measure: str) -> float:
    return 2.0 if measure == "cephalic_index" else 0.10


# -- the reader ------------------------------------------------------------------------------------


def test_norm_tables_read_by_age_and_sex():
    # rows of the published tables at 1 year
    assert cranial_norms(1.0, "female") == {"frontal_thickness_mm": 2.04, "parietal_thickness_mm": 1.83,
                                            "occipital_thickness_mm": 1.88, "cephalic_index": 81.4,
                                            "intracranial_volume_ml": 829.14}
    assert cranial_norms(1.0, "male")["intracranial_volume_ml"] == 913.71
    # None: the mean of both sexes; between rows: linear
    assert norm_curve("cephalic_index", 1.0) == pytest.approx((81.4 + 82.18) / 2)
    assert norm_curve("intracranial_volume_ml", 0.05, "male") == pytest.approx((377.81 + 492.62) / 2)
    ages = np.linspace(*NORM_AGE_RANGE, 11)
    for m in MEASURES:
        v = norm_curve(m, ages, "female")
        assert v.shape == (11,) and np.all(np.isfinite(v))
    # boys' heads are bigger, bones thicken and the index falls with age
    assert np.all(norm_curve("intracranial_volume_ml", ages, "male") > norm_curve("intracranial_volume_ml", ages,
                                                                                   "female"))
    assert np.all(np.diff(norm_curve("parietal_thickness_mm", ages)) > 0)
    assert np.all(np.diff(norm_curve("cephalic_index", ages)) < 0)


@pytest.mark.parametrize("args, match", [
    (("cephalic_index", 11.0), "age_years must be in \\[0, 10\\]"),
    (("cephalic_index", float("nan")), "age_years"),
    (("cephalic_index", 1.0, "boy"), "sex must be 'female', 'male' or None"),
    (("head_length", 1.0), "measure must be one of"),
])
def test_norm_reader_errors_are_clear(args, match):
    with pytest.raises(ValueError, match=match):
        norm_curve(*args)


def test_sex_is_a_validated_parameter():
    with pytest.raises(ValueError, match="sex must be 'female', 'male' or None"):
        make_skull(sex="f")
    with pytest.raises(ValueError, match="needs anatomy 'v2'"):
        make_skull(sex="male", anatomy="v1")
    boy, girl = make_skull(sex="male", seed=None), make_skull(sex="female", seed=None)
    assert boy.to_dict()["parameters"]["sex"] == "male" and "sex" not in make_skull(seed=None).to_dict()["parameters"]
    assert boy.shape_indices()["head_circumference_cm"] > girl.shape_indices()["head_circumference_cm"] + 1.0


def test_anatomy_v1_keeps_its_growth_curves():
    """v1 (the first model, kept for the PSCT-Net demo weights) does not follow the norms: its
    1-year-old has a 2.3 mm vault (2.6 mm frontal) and cephalic index 79."""
    v1 = make_skull(age_years=1.0, seed=None, anatomy="v1")
    got = v1.cranial_measures(n_directions=1000)
    assert got["cephalic_index"] == pytest.approx(79.0, abs=0.5)
    assert got["parietal_thickness_mm"] == pytest.approx(2.3, abs=0.1) and got["frontal_thickness_mm"] > 2.4
    assert v1.bone_thickness_mm is None and "bone_thickness_mm" not in v1.to_dict()


# -- the phantom against the norms ------------------------------------------------------------------


@pytest.mark.parametrize("age", [0.25, 1.0, 4.0])
@pytest.mark.parametrize("sex", ["female", "male"])
def test_mean_anatomy_hits_the_norms(age, sex):
    """Without seeded variation the normal skull carries the norms themselves: thickness and
    volume within 2 %, the cephalic index within 0.5 points."""
    got = make_skull(age_years=age, sex=sex, seed=None).cranial_measures(n_directions=1500)
    norm = cranial_norms(age, sex)
    for m in MEASURES:
        limit = 0.5 if m == "cephalic_index" else 0.02
        assert abs(_deviation(m, got[m], norm[m])) < limit, (m, got[m], norm[m])


@pytest.mark.parametrize("age", [0.25, 1.0, 4.0])
def test_seed_means_are_within_the_tolerance(age):
    """Four seeds (coarse): their mean within the tolerance of the norm (sexes averaged)."""
    values = {m: [] for m in MEASURES}
    for seed in range(4):
        got = cranial_measures(make_skull(age_years=age, seed=seed), n_directions=1000)
        for m in MEASURES:
            values[m].append(got[m])
    for m in MEASURES:
        dev = _deviation(m, float(np.mean(values[m])), norm_curve(m, age))
        assert abs(dev) <= _limit(m), (m, np.mean(values[m]), norm_curve(m, age))
    # and they vary: the seed moves size, thickness and index
    assert np.std(values["intracranial_volume_ml"]) > 10.0 and np.std(values["cephalic_index"]) > 0.3


def test_measurements_respond_to_the_anatomy():
    """The measures are measurements, not echoes of the targets: a thicker vault, a given
    index and a bigger head show up in them."""
    base = make_skull(age_years=1.0, seed=None).cranial_measures(n_directions=1000)
    wide = make_skull(age_years=1.0, seed=None, cephalic_index=90.0).cranial_measures(n_directions=1000)
    big = make_skull(age_years=1.0, seed=None, head_circumference_cm=49.0).cranial_measures(n_directions=1000)
    old = make_skull(age_years=5.0, seed=None).cranial_measures(n_directions=1000)
    assert wide["cephalic_index"] == pytest.approx(90.0, abs=0.5)
    assert big["intracranial_volume_ml"] == pytest.approx(base["intracranial_volume_ml"] * (49.0 / 45.5) ** 3,
                                                          rel=0.03)
    for m in THICKNESS:
        assert old[m] > base[m] + 0.5
    assert base["frontal_thickness_mm"] > base["parietal_thickness_mm"]
    with pytest.raises(ValueError, match="n_directions"):
        cranial_measures(make_skull(seed=None), n_directions=10)


def test_craniosynostoses_keep_their_shapes():
    """The variants deviate from the norms by design (their index is the variant's), with
    the normal bone thickness."""
    ci = {v: cranial_measures(make_skull(age_years=1.0, variant=v, seed=None), 1000) for v in VARIANTS}
    assert ci["sagittal"]["cephalic_index"] < 70 < 90 < ci["bicoronal"]["cephalic_index"]
    for v in VARIANTS:
        assert ci[v]["parietal_thickness_mm"] == pytest.approx(ci["normal"]["parietal_thickness_mm"], rel=0.02)
        assert 0.8 < ci[v]["intracranial_volume_ml"] / ci["normal"]["intracranial_volume_ml"] < 1.2, v


@pytest.mark.slow
@pytest.mark.parametrize("sex", ["female", "male"])
def test_twenty_seed_means_are_within_the_tolerance(sex):
    """The full comparison of docs/skull.md: 20 seeds at 0.25-6 years."""
    bad = []
    for age in (0.25, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0):
        values = {m: [] for m in MEASURES}
        for seed in range(20):
            got = cranial_measures(make_skull(age_years=age, sex=sex, seed=seed), n_directions=2000)
            for m in MEASURES:
                values[m].append(got[m])
        for m in MEASURES:
            dev = _deviation(m, float(np.mean(values[m])), norm_curve(m, age, sex))
            if abs(dev) > _limit(m):
                bad.append((age, m, dev))
    assert not bad, bad

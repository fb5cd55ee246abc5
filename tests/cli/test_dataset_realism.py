"""``tomoprior dataset make --realism``: presets, a settings file, and clear exit-2 errors."""

from __future__ import annotations

from click.testing import CliRunner

from tomoprior.cli.dataset import dataset as dataset_cli
from tomoprior.data import DatasetFile

SMALL = ["--grid", "16", "--binning", "32", "--phantom", "shepp_logan", "--quiet"]


def _make(tmp_path, *args):
    return CliRunner().invoke(dataset_cli, ["make", "--n", "1", "--out", str(tmp_path / "d.h5"), *SMALL, *args])


def test_realism_file_sets_the_effects_and_provenance_records_them(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("preset: realistic\nradiograph: {scatter: {spr: 0.4}}\nmotion: {translation_mm: 2}\n")
    res = _make(tmp_path, "--realism", str(f))
    assert res.exit_code == 0, res.output
    with DatasetFile(tmp_path / "d.h5") as ds:
        aug = ds.provenance(0)["augmentation"]
    assert aug["physics"]["scatter"]["spr"] == 0.4
    assert aug["motion"]["size"] == {"rotation_deg": 0.0, "translation_mm": 2.0}
    assert aug["pose"]["size"] == {"rotation_deg": 3.0, "translation_mm": 5.0}


def test_bad_realism_settings_exit_2_with_the_reason(tmp_path):
    f = tmp_path / "r.yaml"
    for text, words in (("photons_per_mm2: -100\n", "photons_per_mm2"),
                        ("radiograph: {photons_per_pixel: -1}\n", "photons_per_pixel"),
                        ("preset: realistic\nscater: {spr: 1}\n", "unknown realism setting"),
                        ("radiograph: {scatter: {sprr: 1}}\n", "unknown scatter setting")):
        f.write_text(text)
        res = _make(tmp_path, "--realism", str(f))
        assert res.exit_code == 2, res.output
        assert words in res.output and "Traceback" not in res.output
    for arg, words in (("photorealistic", "must be one of"), (str(tmp_path / "missing.yaml"), "does not exist")):
        res = _make(tmp_path, "--realism", arg)
        assert res.exit_code == 2 and words in res.output, res.output
    res = _make(tmp_path, "--realism", "realistic", "--kind", "radiograph", "--photons", "50")
    assert res.exit_code == 2 and "conflict" in res.output, res.output
    assert not (tmp_path / "d.h5").exists()

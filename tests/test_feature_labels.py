"""The feature label table: one label and unit per served feature, no other names, and display
names a reader can tell apart."""
from __future__ import annotations

from runtimes.feature_labels import FEATURE_LABELS, display_name
from runtimes.schema import DIAGNOSTICS, FEATURES, KNOWN_FEATURES, WITH_DIAGNOSTICS


def test_every_feature_has_a_label_and_a_unit_entry():
    assert set(FEATURE_LABELS) >= set(WITH_DIAGNOSTICS)
    assert len(WITH_DIAGNOSTICS) == len(FEATURES) + len(DIAGNOSTICS) == 69
    for name in WITH_DIAGNOSTICS:
        label, unit = FEATURE_LABELS[name]
        assert isinstance(label, str) and label.strip() == label and label
        assert unit is None or (isinstance(unit, str) and unit.strip() == unit and unit)


def test_no_entry_for_a_name_that_is_not_a_feature():
    assert set(FEATURE_LABELS) == set(WITH_DIAGNOSTICS) == set(KNOWN_FEATURES)
    assert "koi_score" not in FEATURE_LABELS and "koi_fpflag_co" not in FEATURE_LABELS


def test_display_names_are_unique_and_readable():
    names = [display_name(feature) for feature in WITH_DIAGNOSTICS]
    assert len(set(names)) == len(names)
    assert len({name.lower() for name in names}) == len(names)
    assert not any(name.startswith("koi_") for name in names)


def test_display_name_puts_the_unit_in_parentheses():
    assert display_name("koi_period") == "orbital period (days)"
    assert display_name("koi_prad") == "planet radius (Earth radii)"
    assert display_name("koi_model_snr") == "transit signal-to-noise"
    assert display_name("koi_dicco_msky").endswith(" (arcsec)")
    assert display_name("koi_prad_err1") == "planet radius, upper uncertainty (Earth radii)"


def test_an_unknown_name_is_shown_as_it_is():
    assert display_name("not_a_feature") == "not_a_feature"

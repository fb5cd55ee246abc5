"""Renamed public functions keep their old name for one release: the old name warns with a
``DeprecationWarning`` that names the replacement, and returns what the new name returns."""

from __future__ import annotations

import warnings

import pytest

from tomoprior import phantoms, projectors, refiners
from tomoprior._deprecation import deprecated_alias

RENAMED = [
    (phantoms, "available", "available_phantoms"),
    (projectors, "available", "available_backends"),
    (refiners, "available", "available_refiners"),
]


@pytest.mark.parametrize(("module", "old", "new"), RENAMED, ids=[f"{m.__name__}.{o}" for m, o, _ in RENAMED])
def test_old_name_warns_and_returns_the_same(module, old, new):
    expected = getattr(module, new)()
    assert expected  # a non-empty list here, so "the same" is not two empty lists
    with pytest.warns(DeprecationWarning, match=rf"{module.__name__}\.{old}\(\) is deprecated.*"
                                                rf"use {module.__name__}\.{new}\(\) instead"):
        got = getattr(module, old)()
    assert got == expected
    # still importable by the old name, but no longer advertised
    assert old not in module.__all__ and new in module.__all__


def test_the_three_names_mean_different_things():
    # the reason for the renames: one name "available" meant phantom files, backends and refiners
    assert "shepp_logan_3d" in phantoms.available_phantoms()
    assert "reference" in projectors.available_backends()
    assert "bp-prior" in refiners.available_refiners()


def test_alias_passes_arguments_and_warns_at_the_callers_line():
    def scale(x, *, by=2):
        """Multiply."""
        return x * by

    alias = deprecated_alias(scale, "pkg.old_scale", "pkg.scale")
    assert alias.__name__ == "old_scale" and "pkg.scale" in alias.__doc__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert alias(3, by=5) == 15
    assert len(caught) == 1 and caught[0].category is DeprecationWarning
    assert caught[0].filename == __file__  # stacklevel points at the user's call, not the alias

"""Shared fixtures: the smoke synthetic atlas is generated once per test session (about 15 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smoke_atlas(tmp_path_factory) -> Path:
    """The synthetic atlas of the smoke profile, seed 0 (the DHARANI layout; not DHARANI data)."""
    from cytoclip.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "smoke", "smoke", seed=0, workers=2, progress=False)


# `make test` runs the suite on every core (pytest-xdist, work stealing). The whole-study test alone takes about
# half of the suite's time, so it starts first: the other tests share the remaining cores around it.
LONGEST_FIRST = ("tests/test_notebooks.py::test_whole_study_smoke_and_book",)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.nodeid not in LONGEST_FIRST)  # stable: the rest keep their order

"""Shared fixtures: the smoke synthetic atlas is generated once per test session (about 15 s on 2 cores)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one xdist worker per core: each worker (and the kernels and processes it starts) keeps to
    # one thread, or two multi-threaded torch processes on the same cores spin-wait (one test took 7x longer)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


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

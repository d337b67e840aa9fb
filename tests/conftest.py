"""Shared fixtures: the smoke synthetic atlas is generated once per test session (about 15 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smoke_atlas(tmp_path_factory) -> Path:
    """The synthetic atlas of the smoke profile, seed 0 (the DHARANI layout; not DHARANI data)."""
    from cytoclip.synth import generate

    return generate(tmp_path_factory.mktemp("synth") / "smoke", "smoke", seed=0, workers=2, progress=False)

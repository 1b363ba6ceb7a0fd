"""Shared fixtures: one Ray per test session (ray.init costs ~3 s on 2 cores)."""
from __future__ import annotations

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray started once for the whole test session."""
    import ray

    from pipeline.runtime import init_ray

    init_ray(address=None, num_cpus=int(os.environ.get("GRISTMILL_TEST_CPUS", "2")), quiet=True)
    yield ray
    ray.shutdown()

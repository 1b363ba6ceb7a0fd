"""Helpers shared by tests that compare output trees."""
from __future__ import annotations

import contextlib
import hashlib
import pathlib

import pytest


def tree_digest(root: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path: two trees are byte-identical when equal."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def distributed_if(on: bool):
    """While `on`, global steps run their Ray Data plan even on a small input
    (GRISTMILL_IN_MEMORY_MB=0); else the default limit holds (a small input runs in memory), so a
    test comparing two runs compares the two paths too."""
    with pytest.MonkeyPatch.context() as mp:
        if on:
            mp.setenv("GRISTMILL_IN_MEMORY_MB", "0")
        else:
            mp.delenv("GRISTMILL_IN_MEMORY_MB", raising=False)
        yield

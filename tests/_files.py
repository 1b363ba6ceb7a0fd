"""Helpers shared by tests that compare output trees."""
from __future__ import annotations

import hashlib
import pathlib


def tree_digest(root: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path: two trees are byte-identical when equal."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}

"""Golden vectors: the wire formats every part of Ferry is checked against."""

from __future__ import annotations

import json
from pathlib import Path

VECTORS_DIR = Path(__file__).parent


def load(relative_path: str) -> dict:
    """A golden-vector file under tests/vectors/."""
    return json.loads((VECTORS_DIR / relative_path).read_text())

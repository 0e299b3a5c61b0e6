"""Where ../shared lives: the one setting (CUSTOM_SHARED) that points tests and benchmarks at real models and data."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """CUSTOM_SHARED, default ``../shared`` beside the checkout (the layout on every machine and in CI)."""
    return Path(os.environ.get("CUSTOM_SHARED", ROOT.parent / "shared")).resolve()

"""Where ../shared lives: the one setting (CUSTOM_SHARED) that points tests and benchmarks at real models and data."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    """CUSTOM_SHARED, default ``../shared`` beside the checkout (the layout on every machine and in CI)."""
    return Path(os.environ.get("CUSTOM_SHARED", ROOT.parent / "shared")).resolve()


def source_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the checkout's root first on PYTHONPATH, so a subprocess can run `python -m testing.<tool>` (the
    harness is not installed with the package) whatever its working directory."""
    paths = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return {**env, "PYTHONPATH": os.pathsep.join(paths)}

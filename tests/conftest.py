"""Shared test fixtures: where ../shared lives, and the real models and clips in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from testing.shared import ROOT, shared_dir

__all__ = ["ROOT", "shared_dir"]

# Fixtures that start real services live in their own modules: a real mosquitto on loopback, a PulseAudio virtual mic.
pytest_plugins = [
    "testing.broker",
    "testing.secure_broker",
    "testing.audio",
    "testing.daemon",
    "testing.postgres",
    "testing.ingest",
    "testing.dashboard",
]


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "models").is_dir():
        pytest.fail(f"shared data not found at {path}: set CUSTOM_SHARED to the folder holding models/ and data/")
    return path


@pytest.fixture(scope="session")
def yamnet_bundle(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped-default bundle, built once per test session with the real converter command."""
    from custom.convert.cli import main as convert

    out = tmp_path_factory.mktemp("bundles") / "yamnet"
    # the one command that makes the default bundle; --quick (documented) trains the head on fewer recordings;
    # --backbone yamnet: the tests written against this fixture expect YAMNet (EfficientAT heads: tests/test_head.py)
    status = convert(["default-bundle", "--shared", str(shared), "--quick", "--backbone", "yamnet", "--out", str(out)])
    assert status == 0
    return out

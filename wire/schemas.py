"""The JSON schemas of what a sensor sends (`event.schema.json`, `summary.schema.json`, beside this file).

The daemon's tests validate every event they see against them and the ingest validates every message it receives
(its judge widens the `schema_version` pin), so the two sides read one file, shipped in every install.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

EVENT = "event.schema.json"
SUMMARY = "summary.schema.json"


def load(name: str) -> dict[str, Any]:
    """The parsed schema `name` (EVENT or SUMMARY), read from the installed package."""
    schema: dict[str, Any] = json.loads(resources.files(__package__).joinpath(name).read_text())
    return schema

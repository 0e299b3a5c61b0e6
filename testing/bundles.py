"""Bundle surgery for tests: break or change one thing in a copy of a real bundle's manifest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from custom.daemon.model.bundle import MANIFEST_NAME


def edit_manifest(bundle: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    """Apply `edit` to the parsed manifest.json of the bundle folder and write it back."""
    path = bundle / MANIFEST_NAME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2) + "\n")  # as write_bundle lays it out: one key per line

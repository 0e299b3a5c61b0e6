"""Config shapes for tests: every setting's key path, and Hypothesis strategies for arbitrary YAML-like trees
built from real key names (so fuzzing reaches the validators, not only the unknown-key check)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from hypothesis import strategies as st

from custom.daemon.config import Config


def leaf_fields(cls: Any = Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """(key path, field) for every setting, walking nested sections."""
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            yield from leaf_fields(type(default), path + ".")
        else:
            yield path, f


KEYS = sorted({part for path, _ in leaf_fields() for part in path.split(".")} | {"x", "Siren"})
scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=True) | st.text(max_size=8)
keys = st.sampled_from(KEYS) | st.text(max_size=5)
trees = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(keys, kids, max_size=5), max_leaves=20
)

"""The AudioSet ontology: which labels are descendants of our classes.

Models and annotators often name the specific child ("Bark", "Police car (siren)") rather than the parent class we
report, so both the YAMNet class mapping and the AudioSet training labels count a descendant as its ancestor.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


class Ontology:
    def __init__(self, entries: Iterable[dict]) -> None:
        entries = list(entries)
        self._children = {e["id"]: list(e.get("child_ids", [])) for e in entries}
        self._parents: dict[str, list[str]] = {}
        for parent, children in self._children.items():
            for child in children:
                self._parents.setdefault(child, []).append(parent)
        self._by_name = {e["name"]: e["id"] for e in entries}

    def mid(self, name: str) -> str:
        """The mid of a display name, e.g. "Music" -> "/m/04rlf"."""
        if name not in self._by_name:
            raise KeyError(f"{name!r} is not in the AudioSet ontology")
        return self._by_name[name]

    def ancestors(self, mid: str) -> set[str]:
        """Every label above `mid` (a label may have several parents)."""
        found: set[str] = set()
        stack = list(self._parents.get(mid, []))
        while stack:
            parent = stack.pop()
            if parent not in found:
                found.add(parent)
                stack.extend(self._parents.get(parent, []))
        return found

    @classmethod
    def load(cls, path: Path | str) -> Ontology:
        with open(path, encoding="utf-8") as handle:
            return cls(json.load(handle))

    def descendants(self, mid: str) -> list[str]:
        """All labels below `mid` (children, grandchildren, ...), without `mid` itself; order is stable."""
        if mid not in self._children:
            raise KeyError(f"{mid} is not in the AudioSet ontology")
        found: list[str] = []
        seen = {mid}
        stack = list(reversed(self._children[mid]))
        while stack:
            child = stack.pop()
            if child in seen:
                continue
            seen.add(child)
            found.append(child)
            stack.extend(reversed(self._children.get(child, [])))
        return found

    def with_descendants(self, mid: str) -> list[str]:
        return [mid, *self.descendants(mid)]

"""Docs name config keys that exist: a key renamed in the code must not live on in the README.

Convention the docs follow (and this test relies on): a config key is written in backticks as its key path, e.g.
`mqtt.port` or `spool.max_rows: 5`; a field of a published message is written with the message's name first, e.g.
`health.audio.down_since`, so it cannot be taken for the `audio` config section.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from custom.daemon.config import Config
from custom.ingest.config import IngestConfig
from testing.shared import ROOT

SENSOR_DOCS = ("README.md", "deploy/OPERATING.md", "FAULTS.md", "bench/RESULTS.md")
INGEST_DOCS = ("ingest/README.md",)
# a backticked key path, optionally followed by a value (`spool.max_rows: 5`, `window.hop_s=5`)
KEY_PATH = re.compile(r"`((?:ingest\.)?[a-z_]+(?:\.[a-z_0-9]+)+)(?:[:= ][^`]*)?`")


def key_paths(cls: type) -> set[str]:
    paths = set()
    for f in dataclasses.fields(cls):
        paths.add(f.name)
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            paths |= {f"{f.name}.{sub}" for sub in key_paths(f.default_factory)}
    return paths


def named_keys(doc: str, sections: set[str], strip: str = "") -> list[tuple[int, str]]:
    """(line, key path) for every backticked key path whose first part is a config section."""
    text = (ROOT / doc).read_text()
    found = []
    for match in KEY_PATH.finditer(text):
        key = match.group(1).removeprefix(strip)
        if key.split(".")[0] in sections:
            found.append((text[: match.start()].count("\n") + 1, key))
    return found


@pytest.mark.parametrize(("docs", "cls", "strip"), [(SENSOR_DOCS, Config, ""), (INGEST_DOCS, IngestConfig, "ingest.")])
def test_config_keys_named_in_docs_exist(docs: tuple[str, ...], cls: type, strip: str) -> None:
    known = key_paths(cls)
    sections = {key.split(".")[0] for key in known if "." in key}
    named = {doc: named_keys(doc, sections, strip) for doc in docs}
    assert sum(len(keys) for keys in named.values()) >= 3, "the docs name config keys: the pattern must find them"
    unknown = [f"{doc}:{line}: `{key}`" for doc, keys in named.items() for line, key in keys if key not in known]
    assert not unknown, "docs name config keys that do not exist:\n" + "\n".join(unknown)


@pytest.mark.parametrize("doc", ["SECURITY.md", "FAULTS.md"])
def test_the_tests_a_doc_names_exist(doc: str) -> None:
    """`test_x.py::test_y` (and `::test_z` after it, the same file) in the threat and fault tables name real tests:
    a renamed test cannot leave a defence claimed but uncovered."""
    text = (ROOT / doc).read_text()
    named: list[tuple[str, str]] = []
    current = ""
    for match in re.finditer(r"`(test_\w+\.py)?::(test_\w+)", text):
        current = match.group(1) or current
        named.append((current, match.group(2)))
    assert len(named) >= (10 if doc == "SECURITY.md" else 5), named
    missing = [f"{f}::{t}" for f, t in named if f"def {t}(" not in (ROOT / "tests" / f).read_text()]
    assert not missing, f"{doc} names tests that do not exist: {missing}"


# The packages whose every module the README's layout tables name; a row is `| ... | `dir/` | ... modules ... |`.
LAYOUT_PACKAGES = ("wire", "daemon", "ingest", "convert")
LAYOUT_ROW = re.compile(r"^\|(?:[^|\n]*\|)?\s*`([a-z_/]+/)`\s*\|(.*)$", re.MULTILINE)


def layout_rows() -> dict[str, str]:
    """Directory -> the text of every layout row that names it (a directory may span floors)."""
    text = (ROOT / "README.md").read_text()
    layout = text[text.index("\n## Layout") :]
    rows: dict[str, str] = {}
    for directory, cells in LAYOUT_ROW.findall(layout):
        rows[directory] = rows.get(directory, "") + cells
    return rows


def test_layout_tables_name_every_module() -> None:
    """A newcomer looks for a module in the README's layout: each one is named in the row of its own directory
    (the deepest directory with a row), so a module added, moved or renamed without the table fails here."""
    rows = layout_rows()
    assert {f"{package}/" for package in LAYOUT_PACKAGES} <= set(rows), "every package has a layout row"
    missing = []
    for package in LAYOUT_PACKAGES:
        for module in sorted((ROOT / package).rglob("*.py")):
            if module.name == "__init__.py" or module.name == "__main__.py":
                continue
            parts = module.relative_to(ROOT).parts[:-1]
            directory = next(d for d in ("/".join(parts[:n]) + "/" for n in range(len(parts), 0, -1)) if d in rows)
            if f"`{module.stem}`" not in rows[directory]:
                missing.append(f"{module.relative_to(ROOT)} (row `{directory}`)")
    assert not missing, "README.md's layout does not name:\n" + "\n".join(missing)

"""`custom-convert default-bundle --commit-dir models/default`: the built bundle as the repository commits it.

Only the trained part (the head, a few KB) and the manifest are committed; each backbone file is replaced by a recipe
in the manifest's provenance (`assembly`: the published model in ../shared it is made from, that model's sha256 and
the tensors exposed as extra outputs), from which `custom-sensord bundle assemble` rebuilds it byte for byte
without TensorFlow. The manifest keeps every file's sha256, so the assembled backbone is checked like any bundle file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from custom.daemon.model.assemble import ASSEMBLY_KEY, Derived, assemble, expose_outputs
from custom.daemon.model.bundle import MANIFEST_NAME, sha256_file

SHARED_MODELS = "models"  # where the published backbones live under ../shared


def _backbones(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(backbone file in the bundle, the provenance of how it was made) for each backbone of a v1 or v2 bundle."""
    provenance = manifest.get("provenance", {})
    if manifest["format_version"] == 2:
        sources = provenance.get("backbones", {})
        return [(m["model"]["file"], sources.get(m["backbone"], {})) for m in manifest["members"]]
    return [(manifest["models"]["backbone"]["file"], provenance)]


def _recipe(bundle: Path, shared: Path, file: str, made_from: dict[str, Any]) -> Derived:
    """How `file` is rebuilt from ../shared: a published model copied as is, or one with its embedding exposed."""
    built = sha256_file(bundle / file)
    source_info = made_from.get("source_model", {})
    name = source_info.get("file", file)
    source = shared / SHARED_MODELS / name
    if not source.is_file():
        raise ValueError(f"{file}: its published model {source} is missing")
    digest = sha256_file(source)
    if digest == built:
        return Derived(file, f"{SHARED_MODELS}/{name}", digest, ())
    tensor = made_from.get("embedding", {}).get("tensor")
    if tensor is None:
        raise ValueError(f"{file}: differs from {source} and its provenance names no exposed tensor")
    item = Derived(file, f"{SHARED_MODELS}/{name}", digest, (int(tensor),))
    if sha256_file(bundle / file) != _sha256(expose_outputs(source.read_bytes(), item.expose_outputs)):
        raise ValueError(f"{file}: exposing tensor {tensor} of {source} does not give the bundle's file")
    return item


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commit(bundle: Path, shared: Path, out: Path) -> None:
    """Write `bundle` into `out` as committed files (manifest with its assembly recipe + everything that is not a
    backbone), then assemble it once from ../shared to prove the recipe gives back the same bundle."""
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    recipes = [_recipe(bundle, shared, file, made_from) for file, made_from in _backbones(manifest)]
    manifest.setdefault("provenance", {})[ASSEMBLY_KEY] = {r.file: r.as_dict() for r in recipes}
    staged = out.with_name(f".{out.name}.new")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    derived = {r.file for r in recipes}
    for name in sorted(manifest["files"]):
        if name not in derived:
            shutil.copyfile(bundle / name, staged / name)
    (staged / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    check = staged / ".assembled"
    assemble(staged, shared, check)
    shutil.rmtree(check)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staged, out)

"""Assemble a ready bundle from a prebuilt one (committed head + manifest) and the published backbones, without
TensorFlow.

The default bundle's trained part is a few KB: its head. The backbone it runs on is a published model (in
../shared/models) with its embedding exposed as an extra output, which is a flatbuffer edit, not training. So the
repository commits the head and the bundle's manifest (`models/default/`, written by `custom-convert default-bundle
--commit-dir`), and a sensor rebuilds the backbone file here: check the published file's sha256 against the one the
manifest recorded, make the same edit with the flatbuffer schema that the TFLite runtime ships, and let
`load_bundle` check the result against the manifest's own sha256. A quickstart or an install then needs neither
TensorFlow nor minutes of training, and a backbone that is not the one the head learnt from is refused before it
runs.

    custom-sensord bundle assemble --prebuilt models/default --shared ../shared --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custom.wire import exitcodes

from .bundle import MANIFEST_NAME, BundleError, load_bundle, sha256_file

ASSEMBLY_KEY = "assembly"  # provenance key: how each file not committed is made from a published model
TFLITE_FILE_IDENTIFIER = b"TFL3"
FLATBUFFER_INITIAL_BYTES = 1 << 20


class AssemblyError(Exception):
    """A prebuilt bundle that cannot be assembled; `code` is the exit status, the message one line."""

    def __init__(self, message: str, code: int = exitcodes.CONFIG) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Derived:
    """A bundle file made from a published model: `source` (relative to ../shared) with main-subgraph tensors
    `expose_outputs` appended to its outputs (none: the published file as is)."""

    file: str
    source: str
    source_sha256: str
    expose_outputs: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "source_sha256": self.source_sha256, "expose_outputs": list(self.expose_outputs)}


def _schema() -> Any:
    """The TFLite flatbuffer schema's Python object API, as the ai-edge-litert runtime ships it (tflite-runtime on
    armhf has none: assemble there on another machine and install the bundle with deploy/install.sh --bundle)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        raise AssemblyError(
            "the TFLite flatbuffer schema is missing: install ai-edge-litert (pip install ai-edge-litert)",
            exitcodes.UNAVAILABLE,
        ) from None
    return schema_py_generated


def expose_outputs(model_bytes: bytes, tensor_indices: Sequence[int]) -> bytes:
    """The model with main-subgraph tensors `tensor_indices` appended to its outputs (in that order, skipping ones
    that already are outputs); also added to every signature of that subgraph, so signature runners see them.

    The interpreter then keeps those tensors alive and returns them beside the original outputs, which stay first
    and unchanged. Anything appended after the flatbuffer (TF-Hub YAMNet's zipped label list) is not part of the
    schema and is dropped. Raises ValueError for an index that is not a computed tensor of the main subgraph (out of
    range, a constant weight, or a model input), since such a tensor says nothing about the audio.
    """
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(model_bytes), 0))
    graph = model.subgraphs[0]
    outputs = [int(i) for i in graph.outputs]
    inputs = {int(i) for i in graph.inputs}
    produced = {int(i) for op in graph.operators for i in op.outputs}
    for index in tensor_indices:
        if not 0 <= index < len(graph.tensors):
            raise ValueError(f"tensor {index} does not exist (main subgraph has {len(graph.tensors)} tensors)")
        if index in inputs or index not in produced:
            raise ValueError(f"tensor {index} ({graph.tensors[index].name!r}) is not computed by an operator")
        if index in outputs:
            continue
        outputs.append(int(index))
        for signature in model.signatureDefs or []:
            if signature.subgraphIndex == 0:
                entry = schema.TensorMapT()
                entry.name = graph.tensors[index].name
                entry.tensorIndex = int(index)
                signature.outputs = [*(signature.outputs or []), entry]
    graph.outputs = outputs
    builder = flatbuffers.Builder(FLATBUFFER_INITIAL_BYTES)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def derived_files(manifest: dict[str, Any], where: str) -> list[Derived]:
    """The manifest's recipe for the files that are not committed, checked for shape."""
    recipe = manifest.get("provenance", {}).get(ASSEMBLY_KEY)
    files = manifest.get("files", {})
    if not isinstance(recipe, dict) or not recipe:
        raise AssemblyError(f"{where}: no provenance.{ASSEMBLY_KEY} (not a prebuilt bundle; see custom-convert "
                            "default-bundle --commit-dir)")  # fmt: skip
    derived = []
    for name, entry in sorted(recipe.items()):
        try:
            item = Derived(
                name, str(entry["source"]), str(entry["source_sha256"]), tuple(int(i) for i in entry["expose_outputs"])
            )
        except (KeyError, TypeError, ValueError):
            raise AssemblyError(f"{where}: provenance.{ASSEMBLY_KEY}.{name} needs source, source_sha256 and "
                                "expose_outputs") from None  # fmt: skip
        if name not in files:
            raise AssemblyError(f"{where}: provenance.{ASSEMBLY_KEY}.{name} is not a file of the bundle")
        derived.append(item)
    return derived


def assemble(prebuilt: Path, shared: Path, out: Path) -> Path:
    """Write the bundle `prebuilt` describes into `out` (atomically: a running daemon never sees half a bundle) and
    return it, loaded and checked; AssemblyError (one line) for a missing or mismatching published model."""
    manifest_path = prebuilt / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except OSError as exc:
        raise AssemblyError(f"{manifest_path}: cannot read: {exc.strerror or exc}", exitcodes.NO_INPUT) from None
    except ValueError as exc:
        raise AssemblyError(f"{manifest_path}: not valid JSON: {exc}") from None
    derived = derived_files(manifest, str(manifest_path))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for item in derived:
            source = shared / item.source
            if not source.is_file():
                raise AssemblyError(f"{source}: not found (the published model {item.file} is made from)",
                                    exitcodes.NO_INPUT)  # fmt: skip
            got = sha256_file(source)
            if got != item.source_sha256:
                raise AssemblyError(f"{source}: sha256 {got} is not {item.source_sha256} recorded in {manifest_path}")
            if item.expose_outputs:
                (staging / item.file).write_bytes(expose_outputs(source.read_bytes(), item.expose_outputs))
            else:  # the published model as is (e.g. YAMNet under its class mapping)
                shutil.copyfile(source, staging / item.file)
        made = {item.file for item in derived}
        for name in sorted(manifest.get("files", {})):
            if name not in made:
                if not (prebuilt / name).is_file():
                    raise AssemblyError(f"{prebuilt / name}: not found (a file of {manifest_path})", exitcodes.NO_INPUT)
                shutil.copyfile(prebuilt / name, staging / name)
        shutil.copyfile(manifest_path, staging / MANIFEST_NAME)
        try:
            load_bundle(staging)
        except BundleError as exc:
            raise AssemblyError(str(exc).replace(str(staging), str(out))) from None
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `custom-sensord bundle assemble`."""
    parser.add_argument("--prebuilt", type=Path, required=True, help="folder with manifest.json and the head(s)")
    parser.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("CUSTOM_SHARED", "../shared")),
        help="the shared folder holding models/ (default: $CUSTOM_SHARED or ../shared)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced atomically)")


def run(args: argparse.Namespace) -> int:
    try:
        out = assemble(args.prebuilt, args.shared, args.out)
    except AssemblyError as exc:
        print(f"assemble: {exc}", file=sys.stderr)
        return exc.code
    bundle = load_bundle(out)
    print(f"assembled {out} ({bundle.bundle_id}, sha256 {bundle.sha256[:12]}…)")
    return exitcodes.OK

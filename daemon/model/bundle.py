"""Model bundles: a folder with .tflite file(s) and a manifest saying exactly what they are.

A bundle is the only way a model reaches a sensor. The manifest carries everything the daemon needs besides the
weights (front-end parameters, classes, thresholds, tensor specs) and a sha256 for every file, so a corrupt copy or
a hand-swapped file is refused at load time with a message naming the file, never discovered as odd scores later.
The format is defined here, once: the converter writes bundles with `write_bundle` and the daemon reads them with
`load_bundle`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..schema import ConfigError, at_line, build, frozen_mapping, opt, parse_text
from .frontend import FrontendParams
from .frontend_efficientat import EfficientATParams

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "custom-sensor-bundle"
FORMAT_VERSION = 1
BACKBONES = ("vggish", "yamnet", "efficientat")  # efficientat: 32 kHz log-mel in, 527 AudioSet logits out
INPUT_KINDS = ("waveform", "log_mel", "efficientat_log_mel", "features")  # "features": a head's pooled embedding
AGGREGATIONS = ("max", "mean", "top3_mean")
POSTPROCESS_KINDS = ("audioset_pca",)
DTYPES = ("float32", "uint8", "int8", "int16")
HEAD_POOLINGS = ("mean", "max", "mean_max")


class BundleError(ValueError):
    """A bundle that must not be run; the message names the bundle path and what is wrong."""


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype a model tensor must have; checked against the interpreter when the bundle loads."""

    shape: tuple[int, ...] = opt(doc="Dimensions; a leading -1 means any batch size.")
    dtype: str = opt(doc="Element type.", choices=DTYPES)

    def check(self, path: str) -> None:
        """-1 first ("any batch"): a model that runs all patches of a window in one invoke."""
        shape = self.shape
        if not shape or not all(d > 0 or (i == 0 and d == -1 and len(shape) > 1) for i, d in enumerate(shape)):
            raise ConfigError(
                f"{path}.shape",
                f"must be a list of positive integers (the first may be -1: any batch), got {list(shape)}",
            )


@dataclass(frozen=True)
class ModelSpec:
    file: str = opt(doc="The .tflite file in the bundle.")
    input: TensorSpec = opt(doc="Its input tensor.")
    output: TensorSpec = opt(doc="Its (first) output tensor.")
    # what feeds the input: "waveform" (0.975 s mono 16 kHz), "log_mel" (one patch) or "efficientat_log_mel" (10 s)
    input_kind: str = opt("log_mel", "What feeds the input.", choices=INPUT_KINDS)


@dataclass(frozen=True)
class ClassSpec:
    name: str = opt(doc='Short name used in events, e.g. "Siren".')
    audioset_name: str = opt(doc='The AudioSet display name, e.g. "Vehicle horn, car horn, honking".')
    mid: str = opt(doc='AudioSet machine id, e.g. "/m/03kmc9".')
    threshold: float = opt(doc="Score at or above which the class is labelled.", lo=0.0, hi=1.0)
    backbone_outputs: tuple[int, ...] = opt(
        (), "YAMNet/EfficientAT output indices pooled into this class; empty for VGGish."
    )


@dataclass(frozen=True)
class HeadSpec:
    """A trained head over the backbone's embedding: pooled embedding of a window (+ optionally the backbone's own
    mean-pooled scores) -> one sigmoid score per class. The backbone model carries the embedding as an extra output,
    so one invoke per patch feeds both the class mapping and the head."""

    model: ModelSpec = opt(doc='input_kind "features": float32 [1, features].')
    embedding_output: int = opt(doc="Position of the embedding among the backbone model's outputs (0: scores).", lo=1)
    embedding: TensorSpec = opt(doc="That output's shape and dtype (int8 outputs are dequantised with their scale).")
    pooling: str = opt(doc="How patch embeddings pool over a window.", choices=HEAD_POOLINGS)
    with_scores: bool = opt(False, "The backbone's mean-pooled scores are appended to the pooled embedding.")
    classes: tuple[str, ...] = opt(doc="The head's outputs in order; must equal the bundle's classes.", factory=tuple)


@dataclass(frozen=True)
class FileEntry:
    sha256: str = opt(doc="Checksum of the file as written.", pattern="[0-9a-f]{64}")
    bytes: int | None = opt(None, "Size as written.", lo=0)


@dataclass(frozen=True)
class ModelsSection:
    backbone: ModelSpec = opt(doc="The feature/score network.")
    classifier: ModelSpec | None = opt(None, "VGGish only: the classifier over PCA'd embeddings.")


@dataclass(frozen=True)
class PostprocessSection:
    kind: str = opt(doc="What runs between backbone and classifier.", choices=POSTPROCESS_KINDS)
    file: str = opt(doc="Its parameters file in the bundle.")


@dataclass(frozen=True)
class Manifest:
    """manifest.json as written by `write_bundle`: validated by the same engine as the config files."""

    format: str = opt(doc="Always custom-sensor-bundle.", choices=(FORMAT_NAME,))
    format_version: int = opt(doc="Manifest layout version.")
    bundle_id: str = opt(doc="Name of this bundle.")
    version: str = opt(doc="Its version.")
    backbone: str = opt(doc="Which network family.", choices=BACKBONES)
    frontend: Mapping[str, Any] = opt(doc="Front-end parameters (FrontendParams / EfficientATParams).")
    models: ModelsSection = opt(doc="The .tflite models.")
    classes: tuple[ClassSpec, ...] = opt(doc="The classes, in score order.")
    files: Mapping[str, FileEntry] = opt(doc="Every file of the bundle with its sha256.")
    aggregation: str = opt("max", "How patch scores pool over a window.", choices=AGGREGATIONS)
    postprocess: PostprocessSection | None = opt(None, "VGGish only.")
    provenance: Mapping[str, Any] = opt(doc="Where the bundle came from.", factory=frozen_mapping)
    head: HeadSpec | None = opt(None, "A trained head; replaces the class mapping when present.")


@dataclass(frozen=True)
class Bundle:
    path: Path
    bundle_id: str
    version: str
    backbone: str
    frontend: FrontendParams | EfficientATParams
    backbone_model: ModelSpec
    classifier_model: ModelSpec | None
    postprocess: Mapping[str, str] | None  # {"kind": "audioset_pca", "file": "..."} for VGGish
    aggregation: str
    classes: tuple[ClassSpec, ...]
    files: Mapping[str, str]  # file name -> sha256
    provenance: Mapping[str, Any]
    sha256: str  # of the manifest bytes, which pin every file: one id for the exact bundle
    head: HeadSpec | None = None  # a trained head replaces the class mapping when present

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.classes)

    @property
    def thresholds(self) -> tuple[float, ...]:
        return tuple(c.threshold for c in self.classes)

    def file_path(self, name: str) -> Path:
        return self.path / name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(path: Path | str) -> Bundle:
    """Read and check a bundle folder (or its manifest.json); raise BundleError naming the first problem found."""
    path = Path(path)
    if path.name == MANIFEST_NAME:
        path = path.parent
    manifest_path = path / MANIFEST_NAME
    if not path.is_dir():
        raise BundleError(f"{path}: bundle folder not found")
    try:
        raw = manifest_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{manifest_path}: cannot read manifest: {exc.strerror or exc}") from None
    try:
        data, lines = parse_text(raw.decode("utf-8"), str(manifest_path), json_file=True)
    except (ConfigError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: manifest is not valid JSON: {exc}") from None
    try:
        manifest = at_line(lambda: _read_manifest(data), lines)
    except ConfigError as exc:
        raise BundleError(f"{manifest_path}: manifest {exc}") from None
    _check_files(path, manifest)
    return Bundle(
        path=path,
        bundle_id=manifest.bundle_id,
        version=manifest.version,
        backbone=manifest.backbone,
        frontend=_frontend_params(manifest),
        backbone_model=manifest.models.backbone,
        classifier_model=manifest.models.classifier,
        postprocess=None if manifest.postprocess is None else dataclasses.asdict(manifest.postprocess),
        aggregation=manifest.aggregation,
        classes=manifest.classes,
        files={name: entry.sha256 for name, entry in manifest.files.items()},
        provenance=manifest.provenance,
        sha256=hashlib.sha256(raw).hexdigest(),
        head=manifest.head,
    )


def _read_manifest(data: Any) -> Manifest:
    """The engine checks every key; what remains are the rules that span sections. Format and version first: a
    manifest of another layout gets that one message, not a list of odd keys."""
    if not isinstance(data, dict):
        raise ConfigError("(top level)", "must be a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise ConfigError("format", f"must be {FORMAT_NAME!r}, got {data.get('format')!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            "format_version", f"this sensor reads version {FORMAT_VERSION}, got {data.get('format_version')!r}"
        )
    m = build(Manifest, data)
    if m.backbone == "vggish" and (m.models.classifier is None or m.postprocess is None):
        raise ConfigError(
            "models.classifier", "a vggish bundle needs a classifier model and an audioset_pca postprocess"
        )
    if not m.classes:
        raise ConfigError("classes", "must list at least one class")
    names = [c.name for c in m.classes]
    if len(set(names)) != len(names):
        raise ConfigError("classes", "class names must be unique")
    for i, c in enumerate(m.classes):
        if m.backbone in ("yamnet", "efficientat") and not c.backbone_outputs:
            raise ConfigError(
                f"classes[{i}].backbone_outputs", f"a {m.backbone} class needs at least one backbone output index"
            )
    if m.head is not None:
        if list(m.head.classes) != names:
            raise ConfigError("head.classes", f"{list(m.head.classes)} do not match the bundle's classes {names}")
        if m.head.model.output.shape[-1] != len(names):
            raise ConfigError(
                "head.model.output", f"has {m.head.model.output.shape[-1]} scores for {len(names)} classes"
            )
    for name in m.files:
        if Path(name).name != name:
            raise ConfigError(f"files.{name}", "file names must not contain a directory")
    referenced = [m.models.backbone.file] + ([m.head.model.file] if m.head is not None else [])
    if m.models.classifier is not None:
        referenced.append(m.models.classifier.file)
    if m.postprocess is not None:
        referenced.append(m.postprocess.file)
    for name in referenced:
        if name not in m.files:
            raise ConfigError("files", f"{name} is used by the manifest but has no sha256 entry")
    _frontend_params(m)
    return m


def _frontend_params(m: Manifest) -> FrontendParams | EfficientATParams:
    params_type = EfficientATParams if m.backbone == "efficientat" else FrontendParams
    return params_type.from_dict(dict(m.frontend), "frontend")


def _check_files(path: Path, manifest: Manifest) -> None:
    for name, entry in manifest.files.items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"{file_path}: bundle file missing")
        if sha256_file(file_path) != entry.sha256:
            raise BundleError(
                f"{file_path}: checksum mismatch (file altered or truncated; manifest says {entry.sha256[:12]}…)"
            )


def tensor_spec_dict(spec: TensorSpec) -> dict[str, Any]:
    return {"shape": list(spec.shape), "dtype": spec.dtype}


def model_spec_dict(spec: ModelSpec) -> dict[str, Any]:
    return {
        "file": spec.file,
        "input_kind": spec.input_kind,
        "input": tensor_spec_dict(spec.input),
        "output": tensor_spec_dict(spec.output),
    }


@dataclass
class BundleDraft:
    """What the converter knows about a bundle before it is written; `write_bundle` adds checksums and format."""

    bundle_id: str
    version: str
    backbone: str
    frontend: FrontendParams | EfficientATParams
    backbone_model: ModelSpec
    classes: list[ClassSpec]
    sources: dict[str, Path]  # file name in the bundle -> where to copy it from
    classifier_model: ModelSpec | None = None
    postprocess: dict[str, str] | None = None
    aggregation: str = "max"
    provenance: dict[str, Any] = field(default_factory=dict)
    head: HeadSpec | None = None

    def manifest(self, files: Mapping[str, tuple[str, int]]) -> dict[str, Any]:
        """The manifest dict, given (sha256, size in bytes) of every file as written."""
        models = {"backbone": model_spec_dict(self.backbone_model)}
        if self.classifier_model is not None:
            models["classifier"] = model_spec_dict(self.classifier_model)
        data: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "bundle_id": self.bundle_id,
            "version": self.version,
            "backbone": self.backbone,
            "frontend": self.frontend.to_dict(),
            "models": models,
            "aggregation": self.aggregation,
            "classes": [
                {
                    "name": c.name,
                    "audioset_name": c.audioset_name,
                    "mid": c.mid,
                    "threshold": round(float(c.threshold), 4),
                    **({"backbone_outputs": list(c.backbone_outputs)} if c.backbone_outputs else {}),
                }
                for c in self.classes
            ],
            "files": {name: {"sha256": digest, "bytes": size} for name, (digest, size) in files.items()},
            "provenance": self.provenance,
        }
        if self.postprocess is not None:
            data["postprocess"] = dict(self.postprocess)
        if self.head is not None:
            data["head"] = {
                "model": model_spec_dict(self.head.model),
                "embedding_output": self.head.embedding_output,
                "embedding": tensor_spec_dict(self.head.embedding),
                "pooling": self.head.pooling,
                "with_scores": self.head.with_scores,
                "classes": list(self.head.classes),
            }
        return data


def write_bundle(draft: BundleDraft, out_dir: Path | str) -> Bundle:
    """Write the bundle atomically (temp folder, then rename) and return it loaded and verified.

    An interrupted conversion never leaves a half-written folder that looks like a bundle.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        written: dict[str, tuple[str, int]] = {}
        for name, source in draft.sources.items():
            target = staging / name
            shutil.copyfile(source, target)
            written[name] = (sha256_file(target), target.stat().st_size)
        manifest = draft.manifest(written)
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_bundle(out_dir)

"""Model bundles: a folder with .tflite file(s) and a manifest saying exactly what they are.

A bundle is the only way a model reaches a sensor. The manifest carries everything the daemon needs besides the
weights (front-end parameters, classes, thresholds, tensor specs) and a sha256 for every file, so a corrupt copy or
a hand-swapped file is refused at load time with a message naming the file, never discovered as odd scores later.
The format is defined here, once: the converter writes bundles with `write_bundle` and the daemon reads them with
`load_bundle`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    shape: tuple[int, ...]  # a leading -1 means any batch size
    dtype: str


@dataclass(frozen=True)
class ModelSpec:
    file: str
    input: TensorSpec
    output: TensorSpec
    # what feeds the input: "waveform" (0.975 s mono 16 kHz), "log_mel" (one patch) or "efficientat_log_mel" (10 s)
    input_kind: str = "log_mel"


@dataclass(frozen=True)
class ClassSpec:
    name: str  # short name used in events, e.g. "Siren"
    audioset_name: str  # the AudioSet display name, e.g. "Vehicle horn, car horn, honking"
    mid: str  # AudioSet machine id, e.g. "/m/03kmc9"
    threshold: float
    backbone_outputs: tuple[int, ...] = ()  # YAMNet/EfficientAT output indices pooled into this class; empty for VGGish


@dataclass(frozen=True)
class HeadSpec:
    """A trained head over the backbone's embedding: pooled embedding of a window (+ optionally the backbone's own
    mean-pooled scores) -> one sigmoid score per class. The backbone model carries the embedding as an extra output,
    so one invoke per patch feeds both the class mapping and the head."""

    model: ModelSpec  # input_kind "features": float32 [1, features]
    embedding_output: int  # position of the embedding among the backbone model's outputs
    embedding: TensorSpec  # that output's shape and dtype (int8 outputs are dequantised with their own scale)
    pooling: str  # how patch embeddings pool over a window: one of HEAD_POOLINGS
    with_scores: bool  # the backbone's mean-pooled scores are appended to the pooled embedding
    classes: tuple[str, ...]  # the head's outputs in order; must equal the bundle's classes


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


class _Reader:
    """Pulls typed values out of the manifest dict, naming the key path in every error."""

    def __init__(self, where: Path) -> None:
        self.where = where

    def fail(self, key: str, problem: str) -> BundleError:
        return BundleError(f"{self.where}: manifest {key}: {problem}")

    def get(
        self, data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str, default: Any = ...
    ) -> Any:
        full = f"{path}.{key}" if path else key
        if key not in data:
            if default is not ...:
                return default
            raise self.fail(full, "missing")
        value = data[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(full, f"must be {_kind_name(kind)}, got {value!r}")
        if not isinstance(value, kind):
            raise self.fail(full, f"must be {_kind_name(kind)}, got {type(value).__name__}")
        return value

    def choice(self, data: Mapping[str, Any], key: str, options: tuple[str, ...], path: str) -> str:
        value = self.get(data, key, str, path)
        if value not in options:
            full = f"{path}.{key}" if path else key
            raise self.fail(full, f"must be one of {', '.join(options)}, got {value!r}")
        return str(value)

    def tensor(self, data: Mapping[str, Any], path: str) -> TensorSpec:
        shape = self.get(data, "shape", list, path)
        # -1 first ("any batch"): a model that runs all patches of a window in one invoke
        if not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and (d > 0 or (i == 0 and d == -1 and len(shape) > 1))
            for i, d in enumerate(shape)
        ):
            raise self.fail(
                f"{path}.shape", f"must be a list of positive integers (the first may be -1: any batch), got {shape!r}"
            )
        return TensorSpec(tuple(shape), self.choice(data, "dtype", DTYPES, path))

    def model(self, data: Mapping[str, Any], path: str) -> ModelSpec:
        return ModelSpec(
            file=self.get(data, "file", str, path),
            input=self.tensor(self.get(data, "input", dict, path), f"{path}.input"),
            output=self.tensor(self.get(data, "output", dict, path), f"{path}.output"),
            input_kind=self.choice(data, "input_kind", INPUT_KINDS, path),
        )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


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
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path}: manifest is not valid JSON: {exc}") from None
    r = _Reader(manifest_path)
    if not isinstance(data, dict):
        raise r.fail("(top level)", "must be a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise r.fail("format", f"must be {FORMAT_NAME!r}, got {data.get('format')!r}")
    if r.get(data, "format_version", int, "") != FORMAT_VERSION:
        raise r.fail("format_version", f"this sensor reads version {FORMAT_VERSION}, got {data['format_version']}")

    files_raw = r.get(data, "files", dict, "")
    files: dict[str, str] = {}
    for name, entry in files_raw.items():
        if not isinstance(entry, dict):
            raise r.fail(f"files.{name}", "must be a mapping with sha256")
        digest = r.get(entry, "sha256", str, f"files.{name}")
        if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            raise r.fail(f"files.{name}.sha256", "must be 64 lowercase hex digits")
        if Path(name).name != name:
            raise r.fail(f"files.{name}", "file names must not contain a directory")
        files[name] = digest

    models = r.get(data, "models", dict, "")
    backbone_model = r.model(r.get(models, "backbone", dict, "models"), "models.backbone")
    classifier_raw = r.get(models, "classifier", dict, "models", default=None)
    classifier_model = None if classifier_raw is None else r.model(classifier_raw, "models.classifier")
    postprocess_raw = r.get(data, "postprocess", dict, "", default=None)
    postprocess = None
    if postprocess_raw is not None:
        postprocess = {
            "kind": r.choice(postprocess_raw, "kind", POSTPROCESS_KINDS, "postprocess"),
            "file": r.get(postprocess_raw, "file", str, "postprocess"),
        }

    backbone = r.choice(data, "backbone", BACKBONES, "")
    if backbone == "vggish" and (classifier_model is None or postprocess is None):
        raise r.fail("models.classifier", "a vggish bundle needs a classifier model and an audioset_pca postprocess")

    try:
        params_type = EfficientATParams if backbone == "efficientat" else FrontendParams
        frontend = params_type.from_dict(r.get(data, "frontend", dict, ""))
    except (TypeError, ValueError) as exc:
        raise r.fail("frontend", str(exc)) from None

    classes_raw = r.get(data, "classes", list, "")
    if not classes_raw:
        raise r.fail("classes", "must list at least one class")
    classes = []
    for i, entry in enumerate(classes_raw):
        where = f"classes[{i}]"
        if not isinstance(entry, dict):
            raise r.fail(where, "must be a mapping")
        threshold = float(r.get(entry, "threshold", (int, float), where))
        if not 0.0 <= threshold <= 1.0:
            raise r.fail(f"{where}.threshold", f"must be 0..1, got {threshold}")
        outputs = tuple(r.get(entry, "backbone_outputs", list, where, default=[]))
        if backbone in ("yamnet", "efficientat") and not outputs:
            raise r.fail(f"{where}.backbone_outputs", f"a {backbone} class needs at least one backbone output index")
        classes.append(
            ClassSpec(
                name=r.get(entry, "name", str, where),
                audioset_name=r.get(entry, "audioset_name", str, where),
                mid=r.get(entry, "mid", str, where),
                threshold=threshold,
                backbone_outputs=outputs,
            )
        )
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise r.fail("classes", "class names must be unique")

    head = _read_head(r, data, [c.name for c in classes])
    referenced = [backbone_model.file] + ([head.model.file] if head is not None else [])
    if classifier_model is not None:
        referenced.append(classifier_model.file)
    if postprocess is not None:
        referenced.append(postprocess["file"])
    for name in referenced:
        if name not in files:
            raise r.fail("files", f"{name} is used by the manifest but has no sha256 entry")
    for name, digest in files.items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"{file_path}: bundle file missing")
        if sha256_file(file_path) != digest:
            raise BundleError(
                f"{file_path}: checksum mismatch (file altered or truncated; manifest says {digest[:12]}…)"
            )

    return Bundle(
        path=path,
        bundle_id=r.get(data, "bundle_id", str, ""),
        version=r.get(data, "version", str, ""),
        backbone=backbone,
        frontend=frontend,
        backbone_model=backbone_model,
        classifier_model=classifier_model,
        postprocess=postprocess,
        aggregation=r.choice(data, "aggregation", AGGREGATIONS, "") if "aggregation" in data else "max",
        classes=tuple(classes),
        files=files,
        provenance=r.get(data, "provenance", dict, "", default={}),
        sha256=hashlib.sha256(raw).hexdigest(),
        head=head,
    )


def _read_head(r: _Reader, data: Mapping[str, Any], class_names: list[str]) -> HeadSpec | None:
    raw = r.get(data, "head", dict, "", default=None)
    if raw is None:
        return None
    output = r.get(raw, "embedding_output", int, "head")
    if output < 1:
        raise r.fail("head.embedding_output", f"must be >= 1 (output 0 is the backbone's scores), got {output}")
    classes = tuple(r.get(raw, "classes", list, "head"))
    if list(classes) != class_names:
        raise r.fail("head.classes", f"{list(classes)} do not match the bundle's classes {class_names}")
    model = r.model(r.get(raw, "model", dict, "head"), "head.model")
    if model.output.shape[-1] != len(class_names):
        raise r.fail("head.model.output", f"has {model.output.shape[-1]} scores for {len(class_names)} classes")
    return HeadSpec(
        model=model,
        embedding_output=output,
        embedding=r.tensor(r.get(raw, "embedding", dict, "head"), "head.embedding"),
        pooling=r.choice(raw, "pooling", HEAD_POOLINGS, "head"),
        with_scores=r.get(raw, "with_scores", bool, "head", default=False),
        classes=classes,
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

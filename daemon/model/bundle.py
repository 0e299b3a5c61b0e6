"""Model bundles: a folder with .tflite file(s) and a manifest saying exactly what they are.

A bundle is the only way a model reaches a sensor. The manifest carries everything the daemon needs besides the
weights (front-end parameters, classes, thresholds, tensor specs) and a sha256 for every file, so a corrupt copy or
a hand-swapped file is refused at load time with a message naming the file, never discovered as odd scores later.
The format is defined here, once: the converter writes bundles with `write_bundle` and the daemon reads them with
`load_bundle`.

Two layouts. Version 1: one backbone (VGGish, YAMNet or EfficientAT) with its class mapping, classifier or head.
Version 2: one or more members, each a backbone with its own front end and trained head, whose scores are averaged
with fixed weights: backbones that err on different classes cover each other. Every member must have been trained on
windows of the same band and length, and each head names the sha256 of the backbone file it was trained on, so a
head can never run over a backbone it did not learn from.
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

from custom.wire.settings import ConfigError, at_line, build, frozen_mapping, opt, parse_text

from .frontend import FrontendParams
from .frontend_efficientat import EfficientATParams

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "custom-sensor-bundle"
FORMAT_VERSION = 1  # what the converter writes for one backbone
FORMAT_VERSIONS = (1, 2)  # what the sensor reads; 2: several backbones, heads averaged
# The band a window is limited to before a model sees it. Version-2 manifests carry it (band_rate_hz); a version-1
# manifest has no such key and means this one, the band every model here learnt from (all of ../shared is 16 kHz:
# nothing above 8 kHz), which the converter also writes into the version-2 manifests it makes.
TRAINED_BAND_RATE_HZ = 16000
BACKBONES = ("vggish", "yamnet", "efficientat")  # efficientat: 32 kHz log-mel in, 527 AudioSet logits out
INPUT_KINDS = ("waveform", "log_mel", "efficientat_log_mel", "features")  # "features": a head's pooled embedding
AGGREGATIONS = ("max", "mean", "top3_mean")
POSTPROCESS_KINDS = ("audioset_pca",)
DTYPES = ("float32", "uint8", "int8", "int16")
HEAD_POOLINGS = ("mean", "max", "mean_max")
HEAD_BACKBONES = ("yamnet", "efficientat")  # the backbones a head can be trained on
WEIGHT_SUM_TOLERANCE = 1e-3


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


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    file: str = opt(doc="The .tflite file in the bundle.")
    # what feeds the input: "waveform" (0.975 s mono 16 kHz), "log_mel" (one patch) or "efficientat_log_mel" (10 s)
    input_kind: str = opt("log_mel", "What feeds the input.", choices=INPUT_KINDS)
    input: TensorSpec = opt(doc="Its input tensor.")
    output: TensorSpec = opt(doc="Its (first) output tensor.")


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
class VetoSpec:
    """Silence a class when the backbone's own AudioSet scores say a sound none of the classes is dominates the window.

    A head learns "not ours" only from the negatives it was trained on, so on a kind it never saw (a chainsaw, a
    hen, street music) it often names its nearest class. The backbone was trained on all of AudioSet and usually
    names such a kind outright; `foreign_outputs` are its outputs for sounds that are neither a class, an ancestor
    of one, nor street background (chosen from the AudioSet ontology by the converter). A class is vetoed when the
    strongest foreign score reaches `min_score`, beats the class's own score, and that own score is below `max_own`
    (the backbone hears no trace of the class); its score is then multiplied by `scale`, which keeps it under its
    threshold but keeps the window's ranking of classes (0 would leave a window whose every class is vetoed with
    no top class)."""

    foreign_outputs: tuple[int, ...] = opt(doc="Backbone outputs of sounds that are none of the classes.")
    class_outputs: tuple[tuple[int, ...], ...] = opt(doc="Per class, in class order: its own backbone outputs.")
    min_score: float = opt(doc="A foreign score below this never vetoes.", gt=0.0, hi=1.0)
    max_own: float = opt(1.0, "A class whose own AudioSet score reaches this is never vetoed.", gt=0.0, hi=1.0)
    scale: float = opt(0.0, "A vetoed class's score is multiplied by this (0: silenced outright).", lo=0.0, hi=1.0)

    def check(self, path: str) -> None:
        if not self.foreign_outputs:
            raise ConfigError(f"{path}.foreign_outputs", "must list at least one backbone output")
        empty = [i for i, outputs in enumerate(self.class_outputs) if not outputs]
        if empty:
            raise ConfigError(f"{path}.class_outputs[{empty[0]}]", "must list at least one backbone output")


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
    backbone_sha256: str | None = opt(
        None, "sha256 of the backbone file the head was trained on (required in version 2).", pattern="[0-9a-f]{64}"
    )
    veto: VetoSpec | None = opt(
        None, "Silence a class when the backbone hears a foreign sound (in a v2 bundle: for the averaged score)."
    )

    def check(self, path: str) -> None:
        veto, classes = self.veto, self.classes
        if veto is not None and classes and len(veto.class_outputs) != len(classes):
            raise ConfigError(
                f"{path}.veto.class_outputs", f"has {len(veto.class_outputs)} entries for {len(classes)} classes"
            )


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


@dataclass(frozen=True, kw_only=True)
class ManifestHeader:
    """What every manifest layout starts with: validated by the same engine as the config files. The layouts below
    declare their fields in the order `write_bundle` writes them (so a field is added in one place, and a bundle
    read and written again is the same bytes)."""

    format: str = opt(doc="Always custom-sensor-bundle.", choices=(FORMAT_NAME,))
    format_version: int = opt(doc="Manifest layout version.")
    bundle_id: str = opt(doc="Name of this bundle.")
    version: str = opt(doc="Its version.")


@dataclass(frozen=True, kw_only=True)
class Manifest(ManifestHeader):
    """manifest.json of a version-1 (one-backbone) bundle, as written by `write_bundle`."""

    backbone: str = opt(doc="Which network family.", choices=BACKBONES)
    frontend: Mapping[str, Any] = opt(doc="Front-end parameters (FrontendParams / EfficientATParams).")
    models: ModelsSection = opt(doc="The .tflite models.")
    aggregation: str = opt("max", "How patch scores pool over a window.", choices=AGGREGATIONS)
    classes: tuple[ClassSpec, ...] = opt(doc="The classes, in score order.")
    files: Mapping[str, FileEntry] = opt(doc="Every file of the bundle with its sha256.")
    provenance: Mapping[str, Any] = opt(doc="Where the bundle came from.", factory=frozen_mapping)
    postprocess: PostprocessSection | None = opt(None, "VGGish only.")
    head: HeadSpec | None = opt(None, "A trained head; replaces the class mapping when present.")


@dataclass(frozen=True)
class MemberSection:
    """One backbone of a version-2 bundle with the head trained on its embedding."""

    backbone: str = opt(doc="Which network family.", choices=HEAD_BACKBONES)
    frontend: Mapping[str, Any] = opt(doc="Its front-end parameters.")
    model: ModelSpec = opt(doc="The backbone model, embedding exposed as an extra output.")
    head: HeadSpec = opt(doc="The head over its pooled embedding.")
    weight: float = opt(doc="Share of this member's scores in the average.", gt=0.0, hi=1.0)
    band_rate_hz: int = opt(doc="The band its windows are limited to before its front end (16 kHz).", lo=8000)
    window_s: float = opt(doc="Window length its head was trained on, seconds.", gt=0.0, hi=60.0)


@dataclass(frozen=True, kw_only=True)
class ManifestV2(ManifestHeader):
    """manifest.json of a version-2 (multi-backbone) bundle."""

    members: tuple[MemberSection, ...] = opt(doc="The backbones and their heads, scores averaged by weight.")
    classes: tuple[ClassSpec, ...] = opt(doc="The classes, in score order.")
    files: Mapping[str, FileEntry] = opt(doc="Every file of the bundle with its sha256.")
    provenance: Mapping[str, Any] = opt(doc="Where the bundle came from.", factory=frozen_mapping)


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
    # version 2: the members, each a one-backbone bundle with its head, and their weights in the average; the
    # fields above then describe the first member (backbone joins every member's name, e.g. "efficientat+yamnet")
    members: tuple[Bundle, ...] = ()
    weights: tuple[float, ...] = ()
    band_rate_hz: int = TRAINED_BAND_RATE_HZ  # the band every window is limited to first (version 2: from the manifest)

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
        manifest = _read_layout(data, lines)
    except ConfigError as exc:
        raise BundleError(f"{manifest_path}: manifest {exc}") from None
    _check_files(path, manifest.files)
    if isinstance(manifest, ManifestV2):
        return _ensemble(path, manifest, hashlib.sha256(raw).hexdigest())
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


def read_manifest(text: str, where: str) -> Manifest | ManifestV2:
    """A manifest's text as its dataclasses, every key checked (the files it names are not opened); ConfigError
    names the first problem and its line."""
    data, lines = parse_text(text, where, json_file=True)
    return _read_layout(data, lines)


def _read_layout(data: Any, lines: Mapping[str, int]) -> Manifest | ManifestV2:
    _check_format(data)
    if data["format_version"] == 2:
        return at_line(lambda: _read_manifest_v2(data), lines)
    return at_line(lambda: _read_manifest(data), lines)


def _check_format(data: Any) -> None:
    """Format and version first: a manifest of another layout gets that one message, not a list of odd keys."""
    if not isinstance(data, dict):
        raise ConfigError("(top level)", "must be a JSON object")
    if data.get("format") != FORMAT_NAME:
        raise ConfigError("format", f"must be {FORMAT_NAME!r}, got {data.get('format')!r}")
    version = data.get("format_version")
    if isinstance(version, bool) or version not in FORMAT_VERSIONS:
        readable = " or ".join(map(str, FORMAT_VERSIONS))
        raise ConfigError("format_version", f"this sensor reads version {readable}, got {version!r}")


def _read_manifest(data: Any) -> Manifest:
    """The engine checks every key; what remains are the rules that span sections."""
    m = build(Manifest, data)
    if m.backbone == "vggish" and (m.models.classifier is None or m.postprocess is None):
        raise ConfigError(
            "models.classifier", "a vggish bundle needs a classifier model and an audioset_pca postprocess"
        )
    names = [c.name for c in m.classes]
    _check_classes(names)
    for i, c in enumerate(m.classes):
        if m.backbone in ("yamnet", "efficientat") and not c.backbone_outputs:
            raise ConfigError(
                f"classes[{i}].backbone_outputs", f"a {m.backbone} class needs at least one backbone output index"
            )
    if m.head is not None:
        if list(m.head.classes) != names:
            raise ConfigError("head.classes", f"{list(m.head.classes)} do not match the bundle's classes {names}")
        _check_veto(m.head, m.models.backbone, "head")
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


def _read_manifest_v2(data: Any) -> ManifestV2:
    """Version 2: members must agree on band and window, weights sum to 1, every head matches the classes and names
    the sha256 of the very backbone file it sits on."""
    m = build(ManifestV2, data)
    names = [c.name for c in m.classes]
    _check_classes(names)
    if not m.members:
        raise ConfigError("members", "must list at least one backbone")
    first = m.members[0]
    for i, member in enumerate(m.members):
        where = f"members[{i}]"
        for key, value, unit in (("band_rate_hz", member.band_rate_hz, " Hz"), ("window_s", member.window_s, " s")):
            if value != getattr(first, key):
                raise ConfigError(
                    f"{where}.{key}",
                    f"{value}{unit} disagrees with members[0] ({getattr(first, key)}{unit}): every backbone must "
                    "see the same windows",
                )
        head = member.head
        if list(head.classes) != names:
            raise ConfigError(
                f"{where}.head.classes", f"{list(head.classes)} do not match the bundle's classes {names}"
            )
        _check_veto(head, member.model, f"{where}.head")
        outputs = head.model.output.shape[-1]
        if outputs != len(names):
            raise ConfigError(f"{where}.head.model.output", f"has {outputs} scores for {len(names)} classes")
        for file in (member.model.file, head.model.file):
            if file not in m.files:
                raise ConfigError("files", f"{file} is used by the manifest but has no sha256 entry")
        actual = m.files[member.model.file].sha256
        if head.backbone_sha256 is None:
            raise ConfigError(f"{where}.head.backbone_sha256", "missing (which backbone was the head trained on?)")
        if head.backbone_sha256 != actual:
            raise ConfigError(
                f"{where}.head.backbone_sha256",
                f"the head was trained on backbone {head.backbone_sha256[:12]}…, but {member.model.file} is "
                f"{actual[:12]}…: a head only works on the backbone it learnt from",
            )
        _member_frontend(member, where)
    total = sum(member.weight for member in m.members)
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ConfigError("members", f"weights must sum to 1, got {total:.4f}")
    for name in m.files:
        if Path(name).name != name:
            raise ConfigError(f"files.{name}", "file names must not contain a directory")
    return m


def _check_veto(head: HeadSpec, backbone: ModelSpec, where: str) -> None:
    """Every output a veto names must exist in the backbone it sits on (checked before any model is loaded)."""
    if head.veto is None:
        return
    width = backbone.output.shape[-1]
    named = [*head.veto.foreign_outputs, *(i for outputs in head.veto.class_outputs for i in outputs)]
    bad = sorted({i for i in named if not 0 <= i < width})
    if bad:
        raise ConfigError(f"{where}.veto", f"names backbone output(s) {bad} outside 0..{width - 1} ({backbone.file})")


def _check_classes(names: list[str]) -> None:
    if not names:
        raise ConfigError("classes", "must list at least one class")
    if len(set(names)) != len(names):
        raise ConfigError("classes", "class names must be unique")


def _member_frontend(member: MemberSection, where: str) -> FrontendParams | EfficientATParams:
    params_type = EfficientATParams if member.backbone == "efficientat" else FrontendParams
    return params_type.from_dict(dict(member.frontend), f"{where}.frontend")


def _ensemble(path: Path, m: ManifestV2, sha256: str) -> Bundle:
    """A version-2 bundle: each member as a one-backbone bundle with its head, the average's weights beside them."""
    files = {name: entry.sha256 for name, entry in m.files.items()}
    members = tuple(
        Bundle(
            path=path,
            bundle_id=f"{m.bundle_id}/{member.backbone}",
            version=m.version,
            backbone=member.backbone,
            frontend=_member_frontend(member, f"members[{i}]"),
            backbone_model=member.model,
            classifier_model=None,
            postprocess=None,
            aggregation="mean",
            classes=m.classes,
            files={f: files[f] for f in (member.model.file, member.head.model.file)},
            provenance={},
            sha256=sha256,
            head=member.head,
            band_rate_hz=member.band_rate_hz,
        )  # fmt: skip
        for i, member in enumerate(m.members)
    )
    first = members[0]
    return Bundle(
        path=path, bundle_id=m.bundle_id, version=m.version, backbone="+".join(b.backbone for b in members),
        frontend=first.frontend, backbone_model=first.backbone_model, classifier_model=None, postprocess=None,
        aggregation="mean", classes=m.classes, files=files, provenance=m.provenance, sha256=sha256, head=first.head,
        members=members, weights=tuple(member.weight for member in m.members), band_rate_hz=first.band_rate_hz,
    )  # fmt: skip


def _check_files(path: Path, entries: Mapping[str, FileEntry]) -> None:
    for name, entry in entries.items():
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"{file_path}: bundle file missing")
        if sha256_file(file_path) != entry.sha256:
            raise BundleError(
                f"{file_path}: checksum mismatch (file altered or truncated; manifest says {entry.sha256[:12]}…)"
            )


def manifest_data(section: Any) -> Any:
    """The JSON form of a manifest dataclass (or any section of one): fields in declaration order, a field at its empty
    default (None or an empty tuple) left out, tuples as lists. The one writer, so reading a manifest back gives
    the same dataclasses and writing those again the same bytes."""
    if dataclasses.is_dataclass(section) and not isinstance(section, type):
        return {
            f.name: manifest_data(value)
            for f in dataclasses.fields(section)
            if not _at_empty_default(f, value := getattr(section, f.name))
        }
    if isinstance(section, Mapping):
        return {key: manifest_data(value) for key, value in section.items()}
    if isinstance(section, list | tuple):
        return [manifest_data(value) for value in section]
    return section


def _at_empty_default(f: dataclasses.Field[Any], value: Any) -> bool:
    if value is None:
        return f.default is None
    return value == () and (f.default == () or f.default_factory is tuple)


def manifest_text(manifest: Manifest | ManifestV2) -> str:
    """manifest.json as written: two-space indent, one key per line, a newline at the end."""
    return json.dumps(manifest_data(manifest), indent=2) + "\n"


def _file_entries(files: Mapping[str, tuple[str, int]]) -> dict[str, FileEntry]:
    return {name: FileEntry(digest, size) for name, (digest, size) in files.items()}


def _written_classes(classes: list[ClassSpec]) -> tuple[ClassSpec, ...]:
    """Thresholds to 4 decimals: the manifest says what ships, not the float noise of how it was chosen."""
    return tuple(dataclasses.replace(c, threshold=round(float(c.threshold), 4)) for c in classes)


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

    def manifest(self, files: Mapping[str, tuple[str, int]]) -> Manifest:
        """The manifest, given (sha256, size in bytes) of every file as written."""
        return Manifest(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            bundle_id=self.bundle_id,
            version=self.version,
            backbone=self.backbone,
            frontend=self.frontend.to_dict(),
            models=ModelsSection(self.backbone_model, self.classifier_model),
            aggregation=self.aggregation,
            classes=_written_classes(self.classes),
            files=_file_entries(files),
            provenance=self.provenance,
            postprocess=None if self.postprocess is None else PostprocessSection(**self.postprocess),
            head=self.head,
        )


@dataclass
class MemberDraft:
    """One backbone of a version-2 bundle: its files come in through `EnsembleDraft.sources`."""

    backbone: str
    frontend: FrontendParams | EfficientATParams
    model: ModelSpec
    head: HeadSpec  # backbone_sha256 is filled in by `manifest` from the file as written
    weight: float


@dataclass
class EnsembleDraft:
    """A version-2 bundle before it is written: several backbones, a head on each, scores averaged by weight."""

    bundle_id: str
    version: str
    members: list[MemberDraft]
    classes: list[ClassSpec]
    sources: dict[str, Path]
    band_rate_hz: int
    window_s: float
    provenance: dict[str, Any] = field(default_factory=dict)

    def manifest(self, files: Mapping[str, tuple[str, int]]) -> ManifestV2:
        members = tuple(
            MemberSection(
                backbone=m.backbone,
                frontend=m.frontend.to_dict(),
                model=m.model,
                head=dataclasses.replace(m.head, backbone_sha256=files[m.model.file][0]),
                weight=m.weight,
                band_rate_hz=self.band_rate_hz,
                window_s=self.window_s,
            )
            for m in self.members
        )
        return ManifestV2(
            format=FORMAT_NAME,
            format_version=2,
            bundle_id=self.bundle_id,
            version=self.version,
            members=members,
            classes=_written_classes(self.classes),
            files=_file_entries(files),
            provenance=self.provenance,
        )


def write_bundle(draft: BundleDraft | EnsembleDraft, out_dir: Path | str) -> Bundle:
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
        (staging / MANIFEST_NAME).write_text(manifest_text(draft.manifest(written)))
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

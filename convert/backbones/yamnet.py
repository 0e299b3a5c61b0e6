"""Build a YAMNet bundle from Google's TF-Hub YAMNet TFLite.

Get the official model from TF-Hub / Kaggle Models: google/yamnet/tfLite/classification (file
`lite-model_yamnet_classification_tflite_1.tflite`, waveform in, 521 scores out) and its class map
`yamnet_class_map.csv` (tensorflow/models, research/audioset/yamnet). Coral's `yamnet_spectra_in.tflite`
(log-mel patch in) works too: the input tensor decides which front end feeds it.

Our 10 classes are found among YAMNet's 521 outputs by AudioSet mid (never by position) and, with --ontology, each
class also pools its descendants (YAMNet often says "Bark" or "Police car (siren)" rather than the parent).
With --clips, the window aggregation and class mapping are chosen by measurement on real recordings and the
per-class thresholds are calibrated on them (rule: best F1 per class, clamped to 0.05..0.95); figures are
reported with 2-fold cross-validation grouped by source recording, so they are not scored on their own tuning data.
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.model.bundle import (
    AGGREGATIONS,
    BundleDraft,
    BundleError,
    ClassSpec,
    ModelSpec,
    TensorSpec,
    sha256_file,
    write_bundle,
)
from custom.daemon.model.frontend import YAMNET, FrontendParams
from custom.daemon.model.frontend_efficientat import EfficientATParams
from custom.daemon.model.inference import Model, aggregate_patches
from custom.daemon.model.runtime import load_interpreter
from custom.wire import exitcodes

from ..classes import URBAN_CLASSES
from ..evaluate.labelled_clips import clip_outputs, read_manifest, recording_folds
from ..evaluate.metrics import best_f1_threshold, per_class_ap
from ..ontology import Ontology

HELP = "build a bundle from the TF-Hub YAMNet TFLite (waveform or log-mel input)"
MODEL_FILE = "yamnet.tflite"
DEFAULT_THRESHOLD = 0.3  # used only when no --clips are given to calibrate on
log = logging.getLogger("custom.convert.backbones.yamnet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tflite", type=Path, required=True, help="YAMNet .tflite (TF-Hub classification model)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced atomically)")
    parser.add_argument(
        "--class-map", type=Path, help="yamnet_class_map.csv (index,mid,display_name); default: beside --tflite"
    )
    parser.add_argument("--ontology", type=Path, help="AudioSet ontology.json: also pool each class's descendants")
    parser.add_argument("--clips", type=Path, help="clips manifest.csv: choose aggregation and thresholds from data")
    parser.add_argument(
        "--aggregation", choices=AGGREGATIONS, help="how patch scores pool over a window (default: measured, or max)"
    )
    parser.add_argument("--bundle-id", default="yamnet-urban10")
    parser.add_argument("--version", default="1.0.0")


def shared_layout_args(shared: Path) -> list[str]:
    """`custom-convert yamnet` arguments for the default bundle, from a folder laid out like ../shared.

    Tests, benchmarks and the soak all build the shipped default this one way, so they measure the same bundle.
    """
    return [
        "--tflite", str(shared / "models/yamnet_classification.tflite"),
        "--class-map", str(shared / "models/yamnet_class_map.csv"),
        "--ontology", str(shared / "data/audioset/ontology.json"),
        "--clips", str(shared / "data/clips/manifest.csv"),
    ]  # fmt: skip


@dataclass(frozen=True)
class Variant:
    aggregation: str
    descendants: bool
    top1: float  # cross-validated, on clips
    macro_ap: float


def read_class_map(path: Path) -> dict[str, int]:
    """mid -> YAMNet output index."""
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["mid"]: int(row["index"]) for row in csv.DictReader(handle)}


def class_outputs(class_map: dict[str, int], ontology: Ontology | None) -> list[tuple[int, ...]]:
    """YAMNet output indices for each of our classes: the class itself, plus its descendants when asked."""
    result = []
    for c in URBAN_CLASSES:
        if c.mid not in class_map:
            raise ValueError(f"class {c.name} ({c.mid}) is not among the model's outputs")
        mids = ontology.with_descendants(c.mid) if ontology else [c.mid]
        result.append(tuple(class_map[m] for m in mids if m in class_map))
    return result


def _tensor_spec(detail: dict) -> TensorSpec:
    return TensorSpec(tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).name)


def inspect_model(path: Path) -> ModelSpec:
    """Read the model's tensors to learn whether it wants waveform or log-mel input."""
    interpreter = load_interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    input_spec, output_spec = _tensor_spec(inp), _tensor_spec(out)
    if input_spec.shape == (YAMNET.patch_samples,):
        kind = "waveform"
    elif input_spec.shape[-2:] == (YAMNET.patch_frames, YAMNET.mel_bands) or input_spec.shape[-3:-1] == (
        YAMNET.patch_frames,
        YAMNET.mel_bands,
    ):
        kind = "log_mel"
    else:
        raise BundleError(f"{path}: input {list(input_spec.shape)} is neither a 0.975 s waveform nor a 96x64 patch")
    return ModelSpec(file=MODEL_FILE, input=input_spec, output=output_spec, input_kind=kind)


def _pool(outputs: list[np.ndarray], aggregation: str, mapping: list[tuple[int, ...]]) -> np.ndarray:
    """(clips, classes) scores from cached backbone outputs, exactly as Model.class_scores computes them."""
    pooled = np.stack([aggregate_patches(o, aggregation) for o in outputs])  # (clips, 521)
    return np.stack([pooled[:, list(idx)].max(axis=1) for idx in mapping], axis=1)  # (clips, classes)


def choose_variant(
    outputs: list[np.ndarray], truth: np.ndarray, mappings: dict[bool, list[tuple[int, ...]]]
) -> list[Variant]:
    """Score each aggregation x mapping on the clips: these choices have no fitted parameter, and top-1 and AP
    need no threshold, so scoring them on all clips is fair."""
    onehot = np.eye(len(URBAN_CLASSES), dtype=bool)[truth]
    variants = []
    for descendants, mapping in mappings.items():
        for aggregation in AGGREGATIONS:
            scores = _pool(outputs, aggregation, mapping)
            top1 = float((scores.argmax(axis=1) == truth).mean())
            ap = float(np.nanmean(per_class_ap(onehot, scores)))
            variants.append(Variant(aggregation, descendants, top1, ap))
    return sorted(variants, key=lambda v: (v.top1, v.macro_ap), reverse=True)


def clip_thresholds(scores: np.ndarray, truth: np.ndarray, folds: np.ndarray) -> tuple[list[float], dict]:
    """Shipped thresholds from all clips; a cross-validated estimate of their precision/recall alongside."""
    onehot = np.eye(len(URBAN_CLASSES), dtype=bool)[truth]
    shipped = [best_f1_threshold(onehot[:, k], scores[:, k]) for k in range(len(URBAN_CLASSES))]
    held_out = np.zeros_like(onehot)
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        cut = [best_f1_threshold(onehot[train, k], scores[train, k]) for k in range(len(URBAN_CLASSES))]
        held_out[test] = scores[test] >= np.asarray(cut)
    tp = (held_out & onehot).sum(axis=0)
    report = {
        "cv_precision": (tp / np.maximum(1, held_out.sum(axis=0))).round(3).tolist(),
        "cv_recall": (tp / np.maximum(1, onehot.sum(axis=0))).round(3).tolist(),
    }
    return shipped, report


@dataclass(frozen=True)
class MappingSource:
    """An AudioSet-output backbone to map our classes onto: what `write_mapping_bundle` needs besides the options."""

    tool: str  # e.g. "custom-convert yamnet": in messages and provenance
    backbone: str  # bundle backbone kind
    frontend: FrontendParams | EfficientATParams
    spec: ModelSpec
    tflite: Path
    model_file: str  # the backbone's file name inside the bundle
    class_map_path: Path
    class_map: dict[str, int]
    provenance: dict[str, Any]  # extra provenance (e.g. the output activation)


def write_mapping_bundle(src: MappingSource, args: argparse.Namespace, started: float) -> int:
    """Our 10 classes mapped from the backbone's AudioSet outputs by mid; with --clips, aggregation, descendants and
    thresholds chosen on real recordings (2 folds grouped by source recording report the figures). Shared by
    `custom-convert yamnet` and `custom-convert efficientat`, so both backbones are mapped by the same rules."""
    ontology = Ontology.load(args.ontology) if args.ontology else None
    mappings = {False: class_outputs(src.class_map, None)}
    if ontology is not None:
        mappings[True] = class_outputs(src.class_map, ontology)
    choice = _Calibration(
        aggregation=args.aggregation or "max",
        descendants=ontology is not None,
        thresholds=[DEFAULT_THRESHOLD] * len(URBAN_CLASSES),
        record={"rule": f"fixed default {DEFAULT_THRESHOLD} (no --clips given)"},
    )
    if args.clips is not None:
        choice = _calibrate(src, args, mappings, choice)
    bundle = write_bundle(_mapping_draft(src, args, mappings, choice), args.out)
    Model(bundle)  # proves the written bundle loads and its tensors match the manifest
    size_kb = sum((bundle.path / name).stat().st_size for name in bundle.files) / 1024
    print(f"wrote {bundle.path} ({bundle.bundle_id} {bundle.version}, {src.spec.input_kind} input, {size_kb:.0f} KiB)")
    print("thresholds: " + ", ".join(f"{c.name} {c.threshold:.2f}" for c in bundle.classes))
    print(f"bundle sha256 {bundle.sha256}  ({time.monotonic() - started:.1f} s)")
    return exitcodes.OK


@dataclass(frozen=True)
class _Calibration:
    """How the mapping bundle pools and thresholds its classes, and the record of how that was chosen."""

    aggregation: str
    descendants: bool
    thresholds: list[float]
    record: dict[str, Any]


def _mapping_draft(
    src: MappingSource, args: argparse.Namespace, mappings: dict[bool, list[tuple[int, ...]]], choice: _Calibration
) -> BundleDraft:
    mapping = mappings[choice.descendants]
    return BundleDraft(
        bundle_id=args.bundle_id,
        version=args.version,
        backbone=src.backbone,
        frontend=src.frontend,
        backbone_model=src.spec,
        classes=[
            ClassSpec(c.name, c.audioset_name, c.mid, t, idx)
            for c, t, idx in zip(URBAN_CLASSES, choice.thresholds, mapping, strict=True)
        ],
        sources={src.model_file: src.tflite},
        aggregation=choice.aggregation,
        provenance={
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "tool": src.tool,
            "source_model": {"file": src.tflite.name, "sha256": sha256_file(src.tflite)},
            "class_map": {"file": src.class_map_path.name, "sha256": sha256_file(src.class_map_path)},
            **src.provenance,
            "descendants_pooled": choice.descendants,
            "thresholds": choice.record,
        },
    )


def _calibrate(
    src: MappingSource, args: argparse.Namespace, mappings: dict[bool, list[tuple[int, ...]]], default: _Calibration
) -> _Calibration:
    """Run every clip of --clips once through a probe bundle, then choose aggregation and descendants by top-1 and
    per-class thresholds by F1 on those scores."""
    from tqdm import tqdm

    clips = read_manifest(args.clips)
    with tempfile.TemporaryDirectory() as tmp:
        model = Model(write_bundle(_mapping_draft(src, args, mappings, default), Path(tmp) / "probe"))
        with tqdm(total=len(clips), desc="clips", unit="clip", disable=None) as bar:
            outputs = clip_outputs(model, clips, progress=bar.update)
    truth = np.array([c.class_index for c in clips])
    variants = choose_variant(outputs, truth, mappings)
    print(f"{'aggregation':<12} {'descendants':<12} {'top-1':>6} {'macro AP':>9}   (on {len(clips)} clips)")
    for v in variants:
        print(f"{v.aggregation:<12} {str(v.descendants):<12} {v.top1:>6.3f} {v.macro_ap:>9.3f}")
    best = variants[0] if args.aggregation is None else next(v for v in variants if v.aggregation == args.aggregation)
    aggregation, descendants = best.aggregation, best.descendants
    scores = _pool(outputs, aggregation, mappings[descendants])
    thresholds, cv = clip_thresholds(scores, truth, recording_folds(clips))
    print(f"chosen: aggregation={aggregation} descendants={descendants} (top-1 {best.top1:.3f})")
    return _Calibration(aggregation, descendants, thresholds, {
        "rule": "per class, the threshold with the best F1 on the clips (one-vs-rest), clamped to 0.05..0.95",
        "clips": {"manifest": str(args.clips), "count": len(clips), "sha256": sha256_file(args.clips)},
        "chosen": {"aggregation": aggregation, "descendants": descendants, "top1": best.top1},
        "variants": [v.__dict__ for v in variants],
        "cross_validated": {"folds": "2, grouped by source recording", **cv},
    })  # fmt: skip


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    class_map_path = args.class_map or args.tflite.with_name("yamnet_class_map.csv")
    for what, path in (("--tflite", args.tflite), ("--class-map", class_map_path), ("--ontology", args.ontology)):
        if path is not None and not path.is_file():
            print(f"custom-convert yamnet: {what} {path}: no such file")
            return exitcodes.NO_INPUT
    try:
        spec = inspect_model(args.tflite)
    except (BundleError, ValueError) as exc:
        print(f"custom-convert yamnet: {args.tflite}: not a usable YAMNet model: {exc}")
        return exitcodes.CONFIG
    source = MappingSource(
        "custom-convert yamnet", "yamnet", YAMNET, spec, args.tflite, MODEL_FILE, class_map_path,
        read_class_map(class_map_path), {},
    )  # fmt: skip
    return write_mapping_bundle(source, args, started)

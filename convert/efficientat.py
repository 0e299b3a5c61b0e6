"""Build a bundle from EfficientAT mn04 (`efficientat_mn04_as.tflite`): 10 s of 32 kHz log-mel in, 527 logits out.

EfficientAT mn04_as (Schmid et al., ICASSP 2023; fschmid56/EfficientAT, MIT) is a MobileNetV3 distilled from PaSST
on AudioSet: mAP 0.432 against YAMNet's ~0.31, at about a tenth of YAMNet's operations per 10 s window. Its
front end (daemon/frontend_efficientat.py) is numpy, so the sensor runs it on the TFLite runtime like YAMNet.

The bundle maps our 10 classes from its 527 AudioSet outputs by mid (never by position), exactly as the YAMNet
bundle does, with a sigmoid on the logits; with --ontology a class also pools its descendants, and with --clips the
aggregation and thresholds are chosen on real recordings (same rules and grouped folds as `custom-convert yamnet`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from custom.daemon import exitcodes
from custom.daemon.bundle import AGGREGATIONS, BundleDraft, BundleError, ClassSpec, sha256_file, write_bundle
from custom.daemon.frontend_efficientat import EFFICIENTAT
from custom.daemon.model import Model

from .classes import URBAN_CLASSES
from .clips import clip_outputs, read_manifest, recording_folds
from .efficientat_embed import inspect_model
from .ontology import Ontology
from .yamnet import DEFAULT_THRESHOLD, _pool, choose_variant, class_outputs, clip_thresholds, read_class_map

HELP = "build a bundle from EfficientAT mn04 (32 kHz log-mel in, AudioSet logits out)"
MODEL_FILE = "efficientat_mn04_as.tflite"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tflite", type=Path, required=True, help="efficientat_mn04_as.tflite (float32)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced atomically)")
    parser.add_argument("--labels", type=Path, required=True, help="AudioSet class_labels_indices.csv (index,mid,...)")
    parser.add_argument("--ontology", type=Path, help="AudioSet ontology.json: also pool each class's descendants")
    parser.add_argument("--clips", type=Path, help="clips manifest.csv: choose aggregation and thresholds from data")
    parser.add_argument(
        "--aggregation", choices=AGGREGATIONS, help="how 10 s segment scores pool over a window (default: measured)"
    )
    parser.add_argument("--bundle-id", default="efficientat-mn04-urban10")
    parser.add_argument("--version", default="1.0.0")


def shared_layout_args(shared: Path) -> list[str]:
    """`custom-convert efficientat` arguments for a folder laid out like ../shared (tests and bench use this)."""
    return [
        "--tflite", str(shared / "models/efficientat_mn04_as.tflite"),
        "--labels", str(shared / "data/audioset/class_labels_indices.csv"),
        "--ontology", str(shared / "data/audioset/ontology.json"),
        "--clips", str(shared / "data/clips/manifest.csv"),
    ]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    for what, path in (("--tflite", args.tflite), ("--labels", args.labels), ("--ontology", args.ontology)):
        if path is not None and not path.is_file():
            print(f"custom-convert efficientat: {what} {path}: no such file")
            return exitcodes.NO_INPUT
    try:
        spec = inspect_model(args.tflite, MODEL_FILE)
    except (BundleError, ValueError) as exc:
        print(f"custom-convert efficientat: {args.tflite}: not a usable EfficientAT model: {exc}")
        return exitcodes.CONFIG
    class_map = read_class_map(args.labels)
    if len(class_map) != spec.output.shape[-1]:
        print(f"custom-convert efficientat: {args.labels}: {len(class_map)} labels, model has {spec.output.shape[-1]}")
        return exitcodes.CONFIG
    ontology = Ontology.load(args.ontology) if args.ontology else None
    mappings = {False: class_outputs(class_map, None)}
    if ontology is not None:
        mappings[True] = class_outputs(class_map, ontology)
    descendants = ontology is not None
    aggregation = args.aggregation or "max"
    thresholds = [DEFAULT_THRESHOLD] * len(URBAN_CLASSES)
    calibration: dict = {"rule": f"fixed default {DEFAULT_THRESHOLD} (no --clips given)"}

    def draft(mapping: list[tuple[int, ...]], agg: str, cuts: list[float]) -> BundleDraft:
        return BundleDraft(
            bundle_id=args.bundle_id,
            version=args.version,
            backbone="efficientat",
            frontend=EFFICIENTAT,
            backbone_model=spec,
            classes=[
                ClassSpec(c.name, c.audioset_name, c.mid, t, idx)
                for c, t, idx in zip(URBAN_CLASSES, cuts, mapping, strict=True)
            ],
            sources={MODEL_FILE: args.tflite},
            aggregation=agg,
            provenance={
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "tool": "custom-convert efficientat",
                "source_model": {"file": args.tflite.name, "sha256": sha256_file(args.tflite)},
                "class_map": {"file": args.labels.name, "sha256": sha256_file(args.labels)},
                "output_activation": "sigmoid on logits",
                "descendants_pooled": descendants,
                "thresholds": calibration,
            },
        )

    if args.clips is not None:
        from tqdm import tqdm

        clips = read_manifest(args.clips)
        with tempfile.TemporaryDirectory() as tmp:
            model = Model(write_bundle(draft(mappings[descendants], aggregation, thresholds), Path(tmp) / "probe"))
            with tqdm(total=len(clips), desc="clips", unit="clip", disable=None) as bar:
                outputs = clip_outputs(model, clips, progress=bar.update)
        truth = np.array([c.class_index for c in clips])
        variants = choose_variant(outputs, truth, mappings)
        print(f"{'aggregation':<12} {'descendants':<12} {'top-1':>6} {'macro AP':>9}   (on {len(clips)} clips)")
        for v in variants:
            print(f"{v.aggregation:<12} {str(v.descendants):<12} {v.top1:>6.3f} {v.macro_ap:>9.3f}")
        best = variants[0] if args.aggregation is None else next(v for v in variants if v.aggregation == aggregation)
        aggregation, descendants = best.aggregation, best.descendants
        scores = _pool(outputs, aggregation, mappings[descendants])
        thresholds, cv = clip_thresholds(scores, truth, recording_folds(clips))
        calibration = {
            "rule": "per class, the threshold with the best F1 on the clips (one-vs-rest), clamped to 0.05..0.95",
            "clips": {"manifest": str(args.clips), "count": len(clips), "sha256": sha256_file(args.clips)},
            "chosen": {"aggregation": aggregation, "descendants": descendants, "top1": best.top1},
            "variants": [v.__dict__ for v in variants],
            "cross_validated": {"folds": "2, grouped by source recording", **cv},
        }
        print(f"chosen: aggregation={aggregation} descendants={descendants} (top-1 {best.top1:.3f})")
    bundle = write_bundle(draft(mappings[descendants], aggregation, thresholds), args.out)
    Model(bundle)  # proves the written bundle loads and its tensors match the manifest
    size_kb = sum((bundle.path / name).stat().st_size for name in bundle.files) / 1024
    print(f"wrote {bundle.path} ({bundle.bundle_id} {bundle.version}, 32 kHz log-mel input, {size_kb:.0f} KiB)")
    print("thresholds: " + ", ".join(f"{c.name} {c.threshold:.2f}" for c in bundle.classes))
    print(f"bundle sha256 {bundle.sha256}  ({time.monotonic() - started:.1f} s)")
    return exitcodes.OK

"""Build a bundle from EfficientAT mn04 (`efficientat_mn04_as.tflite`): 10 s of 32 kHz log-mel in, 527 logits out.

EfficientAT mn04_as (Schmid et al., ICASSP 2023; fschmid56/EfficientAT, MIT) is a MobileNetV3 distilled from PaSST
on AudioSet: mAP 0.432 against YAMNet's ~0.31, at about a tenth of YAMNet's operations per 10 s window. Its
front end (daemon/model/frontend_efficientat.py) is numpy, so the sensor runs it on the TFLite runtime like YAMNet.

The bundle maps our 10 classes from its 527 AudioSet outputs by mid (never by position), exactly as the YAMNet
bundle does, with a sigmoid on the logits; with --ontology a class also pools its descendants, and with --clips the
aggregation and thresholds are chosen on real recordings (same rules and grouped folds as `custom-convert yamnet`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from custom.daemon.model.bundle import AGGREGATIONS, BundleError
from custom.daemon.model.frontend_efficientat import EFFICIENTAT
from custom.wire import exitcodes

from .efficientat_embed import inspect_model
from .yamnet import MappingSource, read_class_map, write_mapping_bundle

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
    source = MappingSource(
        "custom-convert efficientat", "efficientat", EFFICIENTAT, spec, args.tflite, MODEL_FILE, args.labels,
        class_map, {"output_activation": "sigmoid on logits"},
    )  # fmt: skip
    return write_mapping_bundle(source, args, started)

"""The trained classifier as a folder: written by `custom-convert train`, read by `vggish` and `evaluate`.

One module owns the contract, so the writer and its readers cannot drift apart:

* `classifier.tflite`: input [1,10,128] (float32 holding the raw 0..255 embedding values, or uint8), zero frames
  = padding; output [1,10] float32 sigmoid scores in URBAN_CLASSES order;
* `classifier.json`: {"classes": [names], "thresholds": [10 floats in 0..1], "input": {"shape", "dtype", ...},
  "output": {"shape", "dtype", ...}, ...provenance}. Readers need only classes, thresholds, input and output; the
  rest (training data, validation figures, quantization, versions) is provenance that travels into the bundle.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custom.daemon.model.audioset_params import EMBEDDING_SIZE, FRAMES_PER_CLIP
from custom.daemon.model.bundle import ModelSpec, TensorSpec

from ..classes import URBAN_CLASSES

CLASSIFIER_FILE = "classifier.tflite"
CLASSIFIER_META = "classifier.json"
INPUT_SHAPE = (1, FRAMES_PER_CLIP, EMBEDDING_SIZE)  # one window of embeddings per invoke
INPUT_VALUES = "raw 0..255 quantised VGGish embeddings (AudioSet PCA + 8-bit); all-zero frames are padding"


class InputError(ValueError):
    """A user-supplied file is missing or wrong; the message names it."""


@dataclass(frozen=True)
class Classifier:
    """The trained classifier as `custom-convert train` leaves it: model, tensor specs, thresholds."""

    path: Path
    spec: ModelSpec
    thresholds: tuple[float, ...]
    meta: dict[str, Any]


def write_classifier(
    out_dir: Path,
    flatbuffer: bytes,
    thresholds: list[float],
    provenance: dict[str, Any],
    input_dtype: str = "float32",
) -> Path:
    """classifier.tflite + classifier.json in `out_dir`, each replaced atomically; returns the .tflite path."""
    meta = {
        "classes": [c.name for c in URBAN_CLASSES],
        "mids": [c.mid for c in URBAN_CLASSES],
        "thresholds": [float(t) for t in thresholds],
        "input": {"shape": list(INPUT_SHAPE), "dtype": input_dtype, "values": INPUT_VALUES},
        "output": {"shape": [1, len(URBAN_CLASSES)], "dtype": "float32", "values": "sigmoid score per class"},
        **provenance,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    tflite_path = out_dir / CLASSIFIER_FILE
    _replace(tflite_path, flatbuffer)
    _replace(out_dir / CLASSIFIER_META, (json.dumps(meta, indent=2) + "\n").encode())
    return tflite_path


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_classifier(path: Path) -> Classifier:
    """Find and check classifier.tflite + classifier.json (a folder or the .tflite); the classes must be ours."""
    tflite = path / CLASSIFIER_FILE if path.is_dir() else path
    meta_path = tflite.with_name(CLASSIFIER_META)
    for p in (tflite, meta_path):
        if not p.is_file():
            raise InputError(f"{p}: no such file (--classifier takes the `custom-convert train` output folder)")
    try:
        meta = json.loads(meta_path.read_text())
        classes = [c if isinstance(c, str) else c["name"] for c in meta["classes"]]
        thresholds = tuple(float(t) for t in meta["thresholds"])
        spec = ModelSpec(
            file=CLASSIFIER_FILE,
            input=TensorSpec(tuple(int(d) for d in meta["input"]["shape"]), str(meta["input"]["dtype"])),
            output=TensorSpec(tuple(int(d) for d in meta["output"]["shape"]), str(meta["output"]["dtype"])),
            input_kind="log_mel",  # unused for a classifier: it is fed PCA'd embeddings, never audio
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{meta_path}: not a classifier description: {exc!r}") from None
    expected = [c.name for c in URBAN_CLASSES]
    if classes != expected:
        raise InputError(f"{meta_path}: classes {classes} differ from the sensor's {expected}")
    if len(thresholds) != len(expected) or not all(0.0 <= t <= 1.0 for t in thresholds):
        raise InputError(f"{meta_path}: need {len(expected)} thresholds in 0..1, got {list(thresholds)}")
    if spec.input.shape[-2:] != INPUT_SHAPE[1:] or spec.output.shape[-1] != len(expected):
        raise InputError(
            f"{meta_path}: classifier maps {list(spec.input.shape)} -> {list(spec.output.shape)}, "
            f"the daemon feeds {list(INPUT_SHAPE)} and reads {len(expected)} scores"
        )
    return Classifier(tflite, spec, thresholds, meta)

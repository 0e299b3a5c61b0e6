"""The backbones a head can be trained on, each prepared the same way: the published model with its embedding exposed
as output 1 (no retraining), the bundle spec the daemon checks, the class mapping by AudioSet mid, and the pooling
variants worth a grouped-CV check.

YAMNet gives one 1024-d embedding per 0.96 s patch (so pooling over a window's patches matters, and so does the patch
hop: half-overlapping patches as published, or every other one, which halves YAMNet's cost); EfficientAT mn04
gives one 384-d pooled feature per 10 s window (a window is one patch, so mean == max and only "mean" is tried, with
and without its own 527 AudioSet scores appended).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from custom.daemon.model.bundle import ModelSpec, TensorSpec, sha256_file
from custom.daemon.model.frontend import YAMNET, FrontendParams
from custom.daemon.model.frontend_efficientat import EFFICIENTAT, EfficientATParams
from custom.daemon.model.runtime import load_interpreter
from custom.wire import exitcodes

from ..backbones.yamnet import class_outputs, read_class_map
from ..tflite.outputs import expose_outputs, final_layer
from .data import DataError

BACKBONES = ("yamnet", "efficientat")
# (pooling, backbone scores appended, augmented mixes used)
YAMNET_VARIANTS = (("mean", False, False), ("mean", False, True), ("mean_max", False, False), ("mean_max", False, True))
EFFICIENTAT_VARIANTS = (("mean", False, False), ("mean", False, True), ("mean", True, False), ("mean", True, True))


@dataclass(frozen=True)
class HeadBackbone:
    name: str  # bundle backbone kind
    model_file: str  # file name inside the bundle
    path: Path  # the embedding-exposed model, written in the build's work folder
    frontend: FrontendParams | EfficientATParams
    spec: ModelSpec
    embedding: TensorSpec
    mapping: list[tuple[int, ...]]  # class -> backbone outputs, by mid
    class_map: dict[str, int]  # AudioSet mid -> backbone output (for the veto, convert/head/veto.py)
    variants: tuple[tuple[str, bool, bool], ...]
    strides: tuple[int, ...]  # patch hops tried, as multiples of the front end's (features: every n-th patch)
    provenance: dict[str, Any]

    @property
    def rate_hz(self) -> int:
        return self.frontend.sample_rate_hz

    @property
    def embedding_dims(self) -> int:
        return int(np.prod(self.embedding.shape))


def _require(*paths: Path) -> None:
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such file", exitcodes.NO_INPUT)


def _embedding_spec(path: Path) -> TensorSpec:
    detail = load_interpreter(path).get_output_details()[1]
    return TensorSpec(tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).name)


def prepare(name: str, shared: Path, work: Path) -> HeadBackbone:
    """The backbone `name` from ../shared, its embedding exposed as output 1, written under `work`."""
    if name == "yamnet":
        from ..backbones.yamnet import inspect_model

        source = shared / "models/yamnet_classification.tflite"
        class_map = shared / "models/yamnet_class_map.csv"
        _require(source, class_map)
        original = source.read_bytes()
        tensor = final_layer(original).embedding_tensor
        path = work / "yamnet.tflite"
        path.write_bytes(expose_outputs(original, [tensor]))
        spec = inspect_model(path)
        mids = read_class_map(class_map)
        return HeadBackbone(
            name, path.name, path, YAMNET, spec, _embedding_spec(path), class_outputs(mids, None), mids,
            YAMNET_VARIANTS, (1, 2),
            {
                "source_model": {"file": source.name, "sha256": sha256_file(source)},
                "embedding": {"tensor": tensor, "how": "exposed as output 1 by editing the flatbuffer"},
            },
        )  # fmt: skip
    if name == "efficientat":
        from ..backbones.efficientat_embed import find_head_tensors, inspect_model

        source = shared / "models/efficientat_mn04_as.tflite"
        labels = shared / "data/audioset/class_labels_indices.csv"
        _require(source, labels)
        original = source.read_bytes()
        tensor = find_head_tensors(original).pooled
        path = work / "efficientat_mn04_as.tflite"
        path.write_bytes(expose_outputs(original, [tensor]))
        spec = inspect_model(path, path.name)
        mids = read_class_map(labels)
        return HeadBackbone(
            name, path.name, path, EFFICIENTAT, spec, _embedding_spec(path), class_outputs(mids, None), mids,
            EFFICIENTAT_VARIANTS, (1,),
            {
                "source_model": {"file": source.name, "sha256": sha256_file(source)},
                "embedding": {
                    "tensor": tensor,
                    "how": "384-d MEAN feeding the first FULLY_CONNECTED, exposed as output 1 (flatbuffer edit)",
                },
                "output_activation": "sigmoid on logits",
            },
        )  # fmt: skip
    raise ValueError(f"unknown backbone {name!r}")

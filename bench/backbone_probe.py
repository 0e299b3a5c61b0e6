"""Which backbone's embedding carries our classes best: a linear probe on each, grouped CV on the real clips.

    python -m bench.backbone_probe          # repo root, convert extra installed; ~2-3 min on one core

A quick, honest first look for choosing the head's backbone, not the shipped head: per clip the first 10 s window
gives YAMNet's 1024-d patch embeddings (mean over the 0.96 s patches; the int8 tensor feeding its last
FULLY_CONNECTED, dequantised) and EfficientAT mn04's 384-d pooled feature; a standardised, class-balanced logistic
regression is scored with 5-fold cross-validation grouped by source recording on ../shared/data/clips (no
augmentation, no extra training audio). Printed: top-1 and per-class recall for each backbone, their concatenation
and the two heads' probabilities averaged. Both embeddings come out of the models by `expose_outputs`.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from custom.convert.backbones.efficientat_embed import EfficientATEmbedder
from custom.convert.classes import URBAN_CLASSES
from custom.convert.evaluate.labelled_clips import read_manifest
from custom.convert.tflite.outputs import expose_outputs
from custom.daemon.audio.audiofile import read_audio
from custom.daemon.model.frontend import YAMNET, Frontend
from custom.daemon.model.runtime import interpreter_class
from testing.shared import shared_dir

WINDOW_S = 10.0


def last_fc_input(model_bytes: bytes) -> int:
    """Index of the tensor feeding the last FULLY_CONNECTED on the path back from the model's first output."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    producer = {int(t): op for op in graph.operators for t in op.outputs}
    tensor = int(graph.outputs[0])
    while tensor in producer:
        op = producer[tensor]
        code = model.operatorCodes[op.opcodeIndex]
        if names.get(max(code.builtinCode, code.deprecatedBuiltinCode)) == "FULLY_CONNECTED":
            return int(op.inputs[0])
        tensor = int(op.inputs[0])
    raise ValueError("no FULLY_CONNECTED on the path back from the output")


def yamnet_embeddings(tflite: bytes, waveforms: list[np.ndarray]) -> np.ndarray:
    """(clips, 1024): mean over a window's patches of the dequantised embedding."""
    index = last_fc_input(tflite)
    cls, _ = interpreter_class()
    interpreter = cls(model_content=expose_outputs(tflite, [index]), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    detail = next(d for d in interpreter.get_output_details() if d["index"] == index)
    scale, zero = detail["quantization"]
    frontend = Frontend(YAMNET)
    rows = []
    for waveform in waveforms:
        if len(waveform) < YAMNET.patch_samples:
            waveform = np.pad(waveform, (0, YAMNET.patch_samples - len(waveform)))
        patches = []
        for patch in frontend.waveform_patches(waveform):
            interpreter.set_tensor(inp, patch)
            interpreter.invoke()
            raw = interpreter.get_tensor(index).reshape(-1).astype(np.float32)
            patches.append((raw - zero) * scale if scale else raw)
        rows.append(np.mean(patches, axis=0))
    return np.stack(rows)


def grouped_cv_probabilities(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probabilities = np.zeros((len(y), len(URBAN_CLASSES)))
    for train, test in GroupKFold(n_splits=5).split(x, y, groups):
        head = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced"))
        head.fit(x[train], y[train])
        probabilities[test] = head.predict_proba(x[test])
    return probabilities


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    shared = shared_dir()
    clips = read_manifest(shared / "data/clips/manifest.csv")
    waveforms = [read_audio(c.path, YAMNET.sample_rate_hz).waveform[: int(WINDOW_S * 16000)] for c in clips]
    y = np.array([c.class_index for c in clips])
    groups = np.array([c.recording for c in clips])
    print(f"embedding {len(clips)} clips ...", flush=True)
    yamnet = yamnet_embeddings((shared / "models/yamnet_classification.tflite").read_bytes(), waveforms)
    embed = EfficientATEmbedder(shared / "models/efficientat_mn04_as.tflite")
    efficientat = np.stack([embed(w, 16000)["pooled"][0] for w in waveforms])
    probabilities = {
        "YAMNet 1024-d": grouped_cv_probabilities(yamnet, y, groups),
        "EfficientAT 384-d": grouped_cv_probabilities(efficientat, y, groups),
        "both, concatenated": grouped_cv_probabilities(np.hstack([yamnet, efficientat]), y, groups),
    }
    probabilities["both, heads averaged"] = (probabilities["YAMNet 1024-d"] + probabilities["EfficientAT 384-d"]) / 2
    short = [c.clip_label[:7] for c in URBAN_CLASSES]
    print(f"{'embedding':<22} {'top-1':>6}  " + " ".join(f"{s:>7}" for s in short))
    for name, p in probabilities.items():
        predicted = p.argmax(axis=1)
        recall = [(predicted[y == k] == k).mean() for k in range(len(URBAN_CLASSES))]
        print(f"{name:<22} {(predicted == y).mean():>6.3f}  " + " ".join(f"{r:>7.2f}" for r in recall))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Exposing YAMNet's 1024-d patch embedding: proven to be the tensor feeding its final layer, on real clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from custom.convert.tflite.outputs import expose_outputs, final_layer
from custom.daemon.audio.audiofile import read_audio
from custom.daemon.model.frontend import YAMNET, Frontend

MODELS = ("yamnet_classification.tflite", "yamnet_spectra_in.tflite")


@pytest.mark.parametrize("name", MODELS)
def test_exposed_embedding_reproduces_scores(shared: Path, name: str) -> None:
    from ai_edge_litert.interpreter import Interpreter

    original = (shared / "models" / name).read_bytes()
    layer = final_layer(original)
    assert layer.weights.shape == (521, 1024) and layer.bias.shape == (521,)
    exposed = expose_outputs(original, [layer.embedding_tensor])
    interpreter = Interpreter(model_content=exposed)
    interpreter.allocate_tensors()
    reference = Interpreter(model_content=original)
    reference.allocate_tensors()
    outputs = interpreter.get_output_details()
    assert len(outputs) == 2 and int(np.prod(outputs[1]["shape"])) == 1024
    scale, zero = outputs[1]["quantization"]
    inp = interpreter.get_input_details()[0]
    frontend = Frontend(YAMNET)
    # the sigmoid's slope is at most 1/4, and the scores themselves are int8 steps of 1/256
    tolerance = 0.25 * layer.logit_step + 1 / 256 + 1e-4
    clips = sorted((shared / "data/clips").glob("*/*.flac"))[::40]
    assert len(clips) >= 5
    worst = 0.0
    for clip in clips:
        waveform = read_audio(clip).waveform[: 3 * YAMNET.patch_samples]
        patches = frontend.waveform_patches(waveform) if inp["shape"][0] != 1 else frontend.log_mel_patches(waveform)
        for patch in patches:
            x = patch.reshape(inp["shape"]).astype(np.float32)
            for it in (interpreter, reference):
                it.set_tensor(inp["index"], x)
                it.invoke()
            scores = interpreter.get_tensor(outputs[0]["index"]).reshape(-1)
            # the original outputs are untouched by the edit
            np.testing.assert_array_equal(scores, reference.get_tensor(reference.get_output_details()[0]["index"])[0])
            embedding = (interpreter.get_tensor(outputs[1]["index"]).reshape(-1).astype(np.float32) - zero) * scale
            rebuilt = 1.0 / (1.0 + np.exp(-(layer.weights @ embedding + layer.bias)))
            worst = max(worst, float(np.abs(rebuilt - scores).max()))
    assert worst <= tolerance, f"FC+sigmoid on the exposed tensor is off by {worst:.4f} (> {tolerance:.4f})"


def test_expose_rejects_a_missing_tensor(shared: Path) -> None:
    original = (shared / "models/yamnet_spectra_in.tflite").read_bytes()
    with pytest.raises(ValueError, match="does not exist"):
        expose_outputs(original, [10**6])

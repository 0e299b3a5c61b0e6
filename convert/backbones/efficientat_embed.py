"""EfficientAT mn04 embeddings for head training: window waveform -> 384-d pooled and 512-d hidden vectors.

The published TFLite only outputs 527 AudioSet logits. Its last layers are
    pooled = mean over time and frequency of the last feature map   (1, 1, 1, 384)
    hidden = hard_swish(W1 pooled + b1)                             (1, 512)
    logits = W2 hidden + b2                                         (1, 527)
so both embeddings are tensors the model already computes: `tflite/outputs.expose_outputs` lists them as extra
outputs, and `check_embeddings` proves they are those tensors by applying the model's own W1/b1/W2/b2 (read from the
flatbuffer) to the exposed vectors and comparing with its logits. The tensors are found by walking the graph back
from the logits (FULLY_CONNECTED <- activation <- FULLY_CONNECTED <- MEAN), never by a hard-coded index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from custom.daemon.audio.pcm import resample as resample_audio
from custom.daemon.audio.pcm import to_mono_float32
from custom.daemon.model.bundle import BundleError, ModelSpec, TensorSpec
from custom.daemon.model.frontend_efficientat import EFFICIENTAT, EfficientATFrontend
from custom.daemon.model.runtime import interpreter_class, load_interpreter

from ..tflite.outputs import expose_outputs

EMBEDDINGS = ("pooled", "hidden")  # 384-d mean-pooled feature map; 512-d hidden layer after its activation


@dataclass(frozen=True)
class HeadTensors:
    """Tensor indices of the model's last layers in its main subgraph."""

    pooled: int  # MEAN output, (1, 1, 1, 384)
    hidden: int  # activation output feeding the last FULLY_CONNECTED, (1, 512)
    logits: int  # the model's output, (1, 527)
    fc1_weights: int
    fc1_bias: int
    fc2_weights: int
    fc2_bias: int


def _spec(detail: dict) -> TensorSpec:
    return TensorSpec(tuple(int(d) for d in detail["shape"]), np.dtype(detail["dtype"]).name)


def inspect_model(path: Path, file_name: str) -> ModelSpec:
    """The bundle's ModelSpec, after checking the input is one 10 s EfficientAT log-mel and the output is flat."""
    interpreter = load_interpreter(path)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    want = (1, EFFICIENTAT.mel_bands, EFFICIENTAT.patch_frames, 1)
    shape = tuple(int(d) for d in inp["shape"])
    if shape != want:
        raise BundleError(f"{path}: input {list(shape)} is not a 10 s EfficientAT log-mel {list(want)}")
    return ModelSpec(file=file_name, input=_spec(inp), output=_spec(out), input_kind="efficientat_log_mel")


def find_head_tensors(model_bytes: bytes) -> HeadTensors:
    """Walk back from the output: FC (logits) <- activation <- FC (hidden) <- MEAN (pooled)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    producer = {int(t): op for op in graph.operators for t in op.outputs}

    def op_name(op) -> str:  # noqa: ANN001
        code = model.operatorCodes[op.opcodeIndex]
        return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")

    logits = int(graph.outputs[0])
    fc2 = producer[logits]
    hidden = int(fc2.inputs[0])
    activation = producer[hidden]
    fc1 = producer[int(activation.inputs[0])]
    mean = producer[int(fc1.inputs[0])]
    found = [op_name(fc2), op_name(fc1), op_name(mean)]
    if found != ["FULLY_CONNECTED", "FULLY_CONNECTED", "MEAN"]:
        raise ValueError(f"last layers are {found[::-1]}, not MEAN -> FULLY_CONNECTED -> ... -> FULLY_CONNECTED")
    return HeadTensors(
        pooled=int(fc1.inputs[0]),
        hidden=hidden,
        logits=logits,
        fc1_weights=int(fc1.inputs[1]),
        fc1_bias=int(fc1.inputs[2]),
        fc2_weights=int(fc2.inputs[1]),
        fc2_bias=int(fc2.inputs[2]),
    )


def hard_swish(x: np.ndarray) -> np.ndarray:
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


class EfficientATEmbedder:
    """Waveform of any length and rate -> per-10 s-segment embeddings and logits, from the embedding-exposed model.

    Call it on a window: returns {"pooled": (n, 384), "hidden": (n, 512), "logits": (n, 527)} with one row per 10 s
    segment (a shorter window is zero-padded to one segment, as the bundle does). Head training pools rows over a
    window itself; a 10 s window gives one row.
    """

    def __init__(self, tflite: Path | str, threads: int = 1, runtime: str | None = None) -> None:
        model_bytes = Path(tflite).read_bytes()
        self.tensors = find_head_tensors(model_bytes)
        self.model_bytes = expose_outputs(model_bytes, [self.tensors.pooled, self.tensors.hidden])
        cls, _ = interpreter_class(runtime)
        self.interpreter = cls(model_content=self.model_bytes, num_threads=max(1, threads))
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]["index"]
        self.frontend = EfficientATFrontend(EFFICIENTAT)

    def weights(self) -> dict[str, np.ndarray]:
        """The model's own last-layer weights, read from the flatbuffer's constant tensors."""
        t = self.tensors
        get = self.interpreter.get_tensor
        return {
            "fc1_weights": get(t.fc1_weights),
            "fc1_bias": get(t.fc1_bias),
            "fc2_weights": get(t.fc2_weights),
            "fc2_bias": get(t.fc2_bias),
        }

    def __call__(self, waveform: np.ndarray, rate_hz: int = EFFICIENTAT.sample_rate_hz) -> dict[str, np.ndarray]:
        audio = resample_audio(to_mono_float32(waveform), int(rate_hz), EFFICIENTAT.sample_rate_hz)
        rows: dict[str, list[np.ndarray]] = {"pooled": [], "hidden": [], "logits": []}
        for patch in self.frontend.log_mel_patches(audio):
            self.interpreter.set_tensor(self._input, patch[None, :, :, None].astype(np.float32))
            self.interpreter.invoke()
            rows["pooled"].append(self.interpreter.get_tensor(self.tensors.pooled).reshape(-1).copy())
            rows["hidden"].append(self.interpreter.get_tensor(self.tensors.hidden).reshape(-1).copy())
            rows["logits"].append(self.interpreter.get_tensor(self.tensors.logits).reshape(-1).copy())
        return {k: np.stack(v) for k, v in rows.items()}


def logits_from_embeddings(pooled: np.ndarray, weights: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(hidden, logits) recomputed in numpy from the pooled embedding with the model's own last layers."""
    hidden = hard_swish(pooled @ weights["fc1_weights"].T + weights["fc1_bias"])
    return hidden, hidden @ weights["fc2_weights"].T + weights["fc2_bias"]

"""Make intermediate tensors of a TFLite model into extra outputs by editing its flatbuffer, with no retraining.

A backbone's embedding (the tensor that feeds its last layers) is what a trained head needs, but the published
models only output class scores. The tensor is computed anyway, so listing it among the subgraph's outputs is
enough: the interpreter then keeps it alive and returns it beside the original outputs, which stay first and
unchanged. Reading goes through the TFLite schema's Python object API that TensorFlow ships; the edit through the
same API as the TFLite runtime ships it (custom.daemon.model.assemble), so a sensor can repeat it without
TensorFlow. Anything appended after the flatbuffer (TF-Hub YAMNet's zipped label list) is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The edit itself lives with the sensor, which rebuilds a prebuilt bundle's backbone without TensorFlow
# (custom.daemon.model.assemble); the converter uses the same function, so both write the same bytes.
from custom.daemon.model.assemble import expose_outputs

__all__ = ["expose_outputs", "final_layer", "read_model", "tensor_names", "write_model"]

TFLITE_FILE_IDENTIFIER = b"TFL3"


def _schema():  # noqa: ANN202
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def read_model(model_bytes: bytes):  # noqa: ANN201
    """The flatbuffer as a mutable schema ModelT object."""
    schema = _schema()
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(model_bytes), 0))


def write_model(model) -> bytes:  # noqa: ANN001
    import flatbuffers

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_FILE_IDENTIFIER)
    return bytes(builder.Output())


def tensor_names(model_bytes: bytes) -> list[str]:
    """Names of the main subgraph's tensors by index, to find the one to expose."""
    model = read_model(model_bytes)
    return [(t.name.decode() if isinstance(t.name, bytes) else str(t.name)) for t in model.subgraphs[0].tensors]


@dataclass(frozen=True)
class FinalLayer:
    """The last FULLY_CONNECTED before a model's output activation: its input is the embedding."""

    embedding_tensor: int  # index of the FC's input tensor
    weights: np.ndarray  # (outputs, embedding) float32, dequantised
    bias: np.ndarray  # (outputs,) float32, dequantised
    logit_step: float  # quantisation step of the FC's output (0.0 if float): bounds how exactly FC+sigmoid can match


def _tensor_values(model, tensor_index: int) -> np.ndarray:
    """A constant tensor's values, dequantised with its (per-tensor or per-channel) scale and zero point."""
    schema = _schema()
    tensor = model.subgraphs[0].tensors[tensor_index]
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    dtype = {"INT8": np.int8, "UINT8": np.uint8, "INT32": np.int32, "FLOAT32": np.float32, "INT16": np.int16}[
        names[tensor.type]
    ]
    raw = np.frombuffer(bytes(model.buffers[tensor.buffer].data), dtype=dtype).reshape(tensor.shape)
    quant = tensor.quantization
    if quant is None or quant.scale is None or len(quant.scale) == 0:
        return raw.astype(np.float32)
    scale = np.asarray(quant.scale, dtype=np.float64)
    zero = np.asarray(quant.zeroPoint if quant.zeroPoint is not None else 0, dtype=np.float64)
    if scale.size > 1:  # per channel along quantizedDimension
        shape = [1] * raw.ndim
        shape[quant.quantizedDimension] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((raw.astype(np.float64) - zero) * scale).astype(np.float32)


def final_layer(model_bytes: bytes) -> FinalLayer:
    """Find the FULLY_CONNECTED op that feeds the model's output activation (LOGISTIC/SOFTMAX) or, failing that,
    the last FULLY_CONNECTED in the graph; return its input tensor and its dequantised weights and bias."""
    schema = _schema()
    model = read_model(model_bytes)
    subgraph = model.subgraphs[0]
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(op) -> str:
        code = model.operatorCodes[op.opcodeIndex]
        return builtin[max(int(code.builtinCode), int(code.deprecatedBuiltinCode))]

    producer = {int(t): op for op in subgraph.operators for t in op.outputs}
    fc = None
    for op in subgraph.operators:
        if op_name(op) in ("LOGISTIC", "SOFTMAX"):
            source = producer.get(int(op.inputs[0]))
            if source is not None and op_name(source) == "FULLY_CONNECTED":
                fc = source
    if fc is None:
        fcs = [op for op in subgraph.operators if op_name(op) == "FULLY_CONNECTED"]
        if not fcs:
            raise ValueError("model has no FULLY_CONNECTED layer")
        fc = fcs[-1]
    inputs = [int(i) for i in fc.inputs]
    weights = _tensor_values(model, inputs[1])
    bias = _tensor_values(model, inputs[2]) if len(inputs) > 2 and inputs[2] >= 0 else np.zeros(weights.shape[0])
    quant = subgraph.tensors[int(fc.outputs[0])].quantization
    step = float(quant.scale[0]) if quant is not None and quant.scale is not None and len(quant.scale) else 0.0
    return FinalLayer(inputs[0], weights, bias.astype(np.float32), step)

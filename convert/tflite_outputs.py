"""Make intermediate tensors of a TFLite model into extra outputs by editing its flatbuffer, with no retraining.

A backbone's embedding (the tensor that feeds its last layers) is what a trained head needs, but the published
models only output class scores. The tensor is computed anyway, so listing it among the subgraph's outputs is
enough: the interpreter then keeps it alive and returns it beside the original outputs, which stay first and
unchanged. The edit goes through the TFLite schema's Python object API that TensorFlow ships (converter only; the
sensor never imports TensorFlow). Anything appended after the flatbuffer (TF-Hub YAMNet's zipped label list) is not
part of the schema and is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence


def _schema():  # noqa: ANN202
    from tensorflow.lite.python import schema_py_generated

    return schema_py_generated


def tensor_names(model_bytes: bytes) -> list[str]:
    """Names of the main subgraph's tensors by index, to find the one to expose."""
    model = _schema().ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    return [(t.name.decode() if isinstance(t.name, bytes) else str(t.name)) for t in model.subgraphs[0].tensors]


def expose_outputs(model_bytes: bytes, tensor_indices: Sequence[int]) -> bytes:
    """The model with main-subgraph tensors `tensor_indices` appended to its outputs (in that order, skipping ones
    that already are outputs); also added to every signature of that subgraph, so signature runners see them.

    Raises ValueError for an index that is not a computed tensor of the main subgraph (out of range, a constant
    weight, or a model input), since such a tensor says nothing about the audio.
    """
    import flatbuffers

    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = model.subgraphs[0]
    outputs = [int(i) for i in graph.outputs]
    inputs = {int(i) for i in graph.inputs}
    produced = {int(i) for op in graph.operators for i in op.outputs}
    for index in tensor_indices:
        if not 0 <= index < len(graph.tensors):
            raise ValueError(f"tensor {index} does not exist (main subgraph has {len(graph.tensors)} tensors)")
        if index in inputs or index not in produced:
            raise ValueError(f"tensor {index} ({graph.tensors[index].name!r}) is not computed by an operator")
        if index in outputs:
            continue
        outputs.append(int(index))
        for signature in model.signatureDefs or []:
            if signature.subgraphIndex == 0:
                entry = schema.TensorMapT()
                entry.name = graph.tensors[index].name
                entry.tensorIndex = int(index)
                signature.outputs = [*(signature.outputs or []), entry]
    graph.outputs = outputs
    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())

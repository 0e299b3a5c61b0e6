"""Keras model -> TFLite flatbuffer in one of four quantization modes, loadable by every runtime we ship to.

Shared by the converters so that every model reaching a sensor is made the same way. The output must load in
ai_edge_litert (current) and in tflite_runtime 2.14 (the last release, still what many Pi images have), so the
newer-TensorFlow defaults that 2.14 cannot run are turned off here, once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

# float32: reference; float16: half-size weights, float compute; dynamic: int8 weights, float activations
# (quantized on the fly); int8: int8 weights and activations calibrated on real data, float32 input/output kept.
QUANTIZE_MODES = ("float32", "float16", "dynamic", "int8")

RepresentativeData = Callable[[], Iterable[Sequence[np.ndarray]]]


def export_tflite(
    model: tf.keras.Model,
    input_shape: Sequence[int | None],
    mode: str = "float32",
    representative_data: RepresentativeData | None = None,
) -> bytes:
    """Convert `model` at `input_shape` (batch included) and return the flatbuffer bytes.

    A None batch dimension makes it free (-1 in the signature): the daemon then runs all patches of a window in one
    invoke, streaming the weights once per window instead of once per patch, and resizes the input only when the
    patch count changes. A fixed batch of 1 suits a model fed one row at a time (the classifier: one window).
    Input and output stay float32 in every mode, so a bundle's tensor specs and the daemon's feeding code do not
    depend on the quantization mode.
    """
    import tensorflow as tf

    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; use one of {', '.join(QUANTIZE_MODES)}")
    if mode == "int8" and representative_data is None:
        raise ValueError("int8 quantization needs representative data (real log-mel patches) for calibration")

    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    serve = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec(input_shape, tf.float32)])
    # Keras 3 variables are not tracked by the converter's own freezing: without this the weights stay behind as
    # resource variables and the .tflite holds no weights at all.
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    if mode == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # TF >= 2.15 quantizes FULLY_CONNECTED weights per channel, an op version tflite_runtime 2.14 refuses at
        # load time ("Registration failed"). Per-tensor dense weights cost nothing measurable: full-size VGGish int8
        # gave embedding cosine 0.99896 (min over 80 real patches) per-tensor vs 0.99895 per-channel.
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    if mode == "int8":
        converter.representative_dataset = representative_data
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    return bytes(converter.convert())

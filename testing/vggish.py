"""Test-only VGGish pieces: checkpoints in the official format, the TF1 reference network, a tiny classifier.

The official checkpoint cannot be downloaded here, so tests write their own with tf.compat.v1's Saver (V1 format,
one file, like vggish_model.ckpt) under the official variable names. The reference embeddings come from a TF1
graph written after vggish_slim.py and restored by a Saver, i.e. an independent path from the converter's Keras
rebuild: if the two disagree, the converter is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import soundfile

from custom.convert.backbones.vggish_model import (
    NUM_BANDS,
    NUM_FRAMES,
    OFFICIAL,
    SCOPE,
    Architecture,
    expected_variables,
)
from custom.convert.classes import URBAN_CLASSES
from custom.daemon.audio.pcm import to_model_rate
from custom.daemon.model.frontend import VGGISH, Frontend

# A narrow VGGish: official names and layer stack, ~1/8 the widths, so all modes convert in seconds.
SMALL = Architecture(conv_widths=(8, 16, 32, 64), fc_width=256)


def random_weights(arch: Architecture = OFFICIAL, seed: int = 0) -> dict[str, np.ndarray]:
    """He-scaled random weights: activations keep their scale through the stack, like a trained net's do, so
    quantization error is measured on realistic ranges instead of on values that vanish after three layers."""
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in expected_variables(arch).items():
        if name.endswith("/weights"):
            fan_in = int(np.prod(shape[:-1]))
            weights[name] = (rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))).astype(
                np.float32
            )
        else:
            weights[name] = rng.normal(0.0, 0.05, size=shape).astype(np.float32)
    return weights


def write_checkpoint(path: Path, weights: Mapping[str, np.ndarray], extra: Mapping[str, np.ndarray] = ()) -> Path:
    """Write `weights` (plus `extra` variables) as a TF1 V1 checkpoint file at `path`, as the official one is."""
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    values = {**weights, **dict(extra)}
    graph = tf.Graph()
    with graph.as_default():
        variables, feeds = [], {}
        for name, value in values.items():
            var = tf.compat.v1.get_variable(  # zeros: the real value is assigned below (and no random op to seed)
                name,
                shape=value.shape,
                dtype=tf.as_dtype(value.dtype),
                initializer=tf.compat.v1.zeros_initializer(),
                use_resource=False,
            )
            placeholder = tf.compat.v1.placeholder(var.dtype.base_dtype, shape=value.shape)
            variables.append((var.assign(placeholder), placeholder, value))
            feeds[name] = var
        saver = tf.compat.v1.train.Saver(list(feeds.values()), write_version=tf.compat.v1.train.SaverDef.V1)
        with tf.compat.v1.Session(graph=graph) as session:
            for assign, placeholder, value in variables:
                session.run(assign, feed_dict={placeholder: value})
            saver.save(session, str(path), write_meta_graph=False, write_state=False)
    return path


def reference_embeddings(checkpoint: Path, patches: np.ndarray, arch: Architecture = OFFICIAL) -> np.ndarray:
    """(n, 96, 64) log-mel -> (n, 128) float embeddings from a TF1 graph restored from `checkpoint`.

    Follows define_vggish_slim op by op: 3x3 stride-1 SAME conv + bias + ReLU, 2x2 stride-2 SAME max-pool,
    flatten, two ReLU fully-connected layers, and fc2 without activation.
    """
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(0)  # initializers are overwritten by the restore; a seed keeps them
        # legal when another test in this process enabled TF op determinism (training does)
        features = tf.compat.v1.placeholder(tf.float32, shape=(None, NUM_FRAMES, NUM_BANDS))
        net = tf.reshape(features, [-1, NUM_FRAMES, NUM_BANDS, 1])
        with tf.compat.v1.variable_scope(SCOPE):
            for layer in arch.layers():
                with tf.compat.v1.variable_scope(layer.scope):
                    weights = tf.compat.v1.get_variable("weights", shape=layer.weights_shape, use_resource=False)
                    biases = tf.compat.v1.get_variable("biases", shape=(layer.outputs,), use_resource=False)
                if layer.kind == "conv":
                    net = tf.nn.conv2d(net, weights, strides=1, padding="SAME")
                else:
                    net = tf.matmul(tf.reshape(net, [-1, int(np.prod(net.shape[1:]))]), weights)
                net = tf.nn.bias_add(net, biases)
                if layer.relu:
                    net = tf.nn.relu(net)
                if layer.pool_after:
                    net = tf.nn.max_pool2d(net, ksize=2, strides=2, padding="SAME")
        saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
        with tf.compat.v1.Session(graph=graph) as session:
            saver.restore(session, str(checkpoint))
            return session.run(net, feed_dict={features: patches.astype(np.float32)})


def clip_paths(shared: Path, per_class: int = 1) -> list[Path]:
    """The first `per_class` real clips of every class folder, in a fixed order."""
    root = shared / "data" / "clips"
    paths: list[Path] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        paths.extend(sorted(folder.glob("*.flac"))[:per_class])
    return paths


def clip_patches(paths: Iterable[Path]) -> np.ndarray:
    """(n, 96, 64) VGGish log-mel patches of real clips, through the daemon's own front end."""
    frontend = Frontend(VGGISH)
    patches = []
    for path in paths:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        patches.append(frontend.log_mel_patches(to_model_rate(audio, rate)))
    return np.concatenate(patches).astype(np.float32)


def write_classifier(folder: Path, input_dtype: str = "uint8", seed: int = 0, broken: bool = False) -> Path:
    """A tiny classifier in the `custom-convert train` format: classifier.tflite + classifier.json in `folder`.

    (1, 10, 128) raw 0..255 embeddings -> (1, 10) sigmoid scores; weights are random, the tests only need it to run.
    `broken` puts NaN in its weights, the kind of damage a diverged training run leaves.
    """
    import tensorflow as tf

    from custom.convert.tflite.export import export_tflite
    from custom.convert.vggish_classifier.artifact import write_classifier as write_classifier_files

    folder.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(seed)
    inputs = tf.keras.Input(shape=(10, 128), dtype="float32")
    x = tf.keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = tf.keras.layers.GlobalAveragePooling1D()(x)
    outputs = tf.keras.layers.Dense(len(URBAN_CLASSES), activation="sigmoid")(x)
    model = tf.keras.Model(inputs, outputs)
    if broken:
        dense = model.layers[-1]
        dense.set_weights([np.full_like(w, np.nan) for w in dense.get_weights()])
    tflite = export_tflite(model, (1, 10, 128), "float32")
    if input_dtype == "uint8":
        tflite = _uint8_input(model)
    provenance = {"note": "test classifier with random weights"}
    write_classifier_files(folder, tflite, [0.5] * len(URBAN_CLASSES), provenance, input_dtype=input_dtype)
    return folder


def _uint8_input(model) -> bytes:
    """The same classifier taking the uint8 embeddings as they are, cast inside the graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    serve = tf.function(
        lambda x: model(tf.cast(x, tf.float32), training=False),
        input_signature=[tf.TensorSpec([1, 10, 128], tf.uint8)],
    )
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())  # Keras 3 weights -> constants
    return bytes(tf.lite.TFLiteConverter.from_concrete_functions([frozen]).convert())

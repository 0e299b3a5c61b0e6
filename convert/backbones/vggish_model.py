"""VGGish: the official TF1 checkpoint's variables, read by name, and the same network rebuilt in Keras.

The layer list below is the single description of the network. It mirrors tensorflow/models
`research/audioset/vggish/vggish_slim.py` (define_vggish_slim): 3x3 stride-1 SAME convolutions and 2x2 stride-2
SAME max-pools, ReLU everywhere except the 128-D embedding layer `fc2`, which the reference defines with
`activation_fn=None` because the released AudioSet embeddings are its pre-activation values. `slim.repeat` names
its layers `<scope>/<scope>_<n>`, hence `vggish/conv3/conv3_1` and `vggish/fc1/fc1_2`. Reading by these names (not by
checkpoint order) is what makes the converter right for the official file we cannot download here.

TensorFlow is imported inside the functions that need it so that importing this module (e.g. for the variable
table) stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from custom.daemon.model.audioset_params import EMBEDDING_SIZE, NUM_BANDS, NUM_FRAMES

if TYPE_CHECKING:
    import tensorflow as tf

SCOPE = "vggish"
FC_WIDTH = 4096
KERNEL_SIZE = 3
POOL_SIZE = 2


@dataclass(frozen=True)
class Layer:
    """One weighted layer of VGGish, named as in the official checkpoint."""

    scope: str  # variable scope under "vggish/", e.g. "conv3/conv3_1"
    kind: str  # "conv" (3x3 SAME conv + ReLU) or "dense"
    inputs: int
    outputs: int
    relu: bool = True
    pool_after: bool = False  # a 2x2 SAME max-pool follows this layer

    @property
    def weights_name(self) -> str:
        return f"{SCOPE}/{self.scope}/weights"

    @property
    def biases_name(self) -> str:
        return f"{SCOPE}/{self.scope}/biases"

    @property
    def weights_shape(self) -> tuple[int, ...]:
        if self.kind == "conv":
            return (KERNEL_SIZE, KERNEL_SIZE, self.inputs, self.outputs)
        return (self.inputs, self.outputs)

    @property
    def keras_name(self) -> str:
        return self.scope.split("/")[-1]

    @property
    def parameters(self) -> int:
        return int(np.prod(self.weights_shape)) + self.outputs


@dataclass(frozen=True)
class Architecture:
    """Layer widths. Only OFFICIAL is used by the converter; a narrower one (same names, same layer stack) lets
    tests exercise every quantization mode in seconds instead of minutes."""

    conv_widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # conv1, conv2, conv3_x, conv4_x output channels
    fc_width: int = FC_WIDTH

    @property
    def flat_size(self) -> int:
        """After four 2x2 pools 96x64 -> 6x4, times the last conv width; flattened in NHWC order like slim.flatten."""
        return (NUM_FRAMES // POOL_SIZE**4) * (NUM_BANDS // POOL_SIZE**4) * self.conv_widths[3]

    def layers(self) -> tuple[Layer, ...]:
        c1, c2, c3, c4 = self.conv_widths
        return (
            Layer("conv1", "conv", 1, c1, pool_after=True),
            Layer("conv2", "conv", c1, c2, pool_after=True),
            Layer("conv3/conv3_1", "conv", c2, c3),
            Layer("conv3/conv3_2", "conv", c3, c3, pool_after=True),
            Layer("conv4/conv4_1", "conv", c3, c4),
            Layer("conv4/conv4_2", "conv", c4, c4, pool_after=True),
            Layer("fc1/fc1_1", "dense", self.flat_size, self.fc_width),
            Layer("fc1/fc1_2", "dense", self.fc_width, self.fc_width),
            Layer("fc2", "dense", self.fc_width, EMBEDDING_SIZE, relu=False),  # the embedding: pre-activation
        )

    @property
    def parameter_count(self) -> int:
        return sum(layer.parameters for layer in self.layers())


OFFICIAL = Architecture()  # 72,141,184 parameters


def expected_variables(arch: Architecture = OFFICIAL) -> dict[str, tuple[int, ...]]:
    """Official variable name -> shape, in network order."""
    table: dict[str, tuple[int, ...]] = {}
    for layer in arch.layers():
        table[layer.weights_name] = layer.weights_shape
        table[layer.biases_name] = (layer.outputs,)
    return table


class CheckpointError(ValueError):
    """The checkpoint is not a VGGish checkpoint we can convert; the message names the file and the variable."""


def read_checkpoint(path: Path | str, arch: Architecture = OFFICIAL) -> dict[str, np.ndarray]:
    """The VGGish variables of a TF1 checkpoint (V1 single file like vggish_model.ckpt, or a V2 prefix) as float32.

    Other variables (e.g. a global step or a classifier head in a fine-tuned checkpoint) are ignored, as the
    reference loader does; a missing or mis-shaped VGGish variable is an error naming it.
    """
    import tensorflow as tf

    path = Path(path)
    try:
        reader = tf.train.load_checkpoint(str(path))
    except (tf.errors.OpError, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise CheckpointError(f"{path}: not a readable TensorFlow checkpoint: {message.splitlines()[0]}") from None
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    weights: dict[str, np.ndarray] = {}
    for name, shape in expected_variables(arch).items():
        if name not in shapes:
            near = sorted(n for n in shapes if n.split("/")[-1] == name.split("/")[-1] and SCOPE in n)[:4]
            hint = f" (VGGish-like names present: {', '.join(near)})" if near else ""
            raise CheckpointError(f"{path}: variable {name} missing{hint}")
        got = tuple(int(d) for d in shapes[name])
        if got != shape:
            raise CheckpointError(f"{path}: variable {name} has shape {list(got)}, VGGish needs {list(shape)}")
        if not dtypes[name].is_floating:
            raise CheckpointError(f"{path}: variable {name} has dtype {dtypes[name].name}, VGGish needs float")
        value = np.asarray(reader.get_tensor(name), dtype=np.float32)
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{path}: variable {name} holds NaN or infinite values")
        weights[name] = value
    return weights


def build_keras(weights: dict[str, np.ndarray], arch: Architecture = OFFICIAL) -> tf.keras.Model:
    """The inference network with the checkpoint's weights: (batch, 96, 64) log-mel -> (batch, 128) embedding.

    The input is the reference placeholder's (batch, frames, bands); the channel axis is added inside, as the
    reference's tf.reshape does, so the daemon feeds patches exactly as the front end makes them.
    """
    import tensorflow as tf

    keras = tf.keras
    inputs = keras.Input(shape=(NUM_FRAMES, NUM_BANDS), name="input_features", dtype="float32")
    net = keras.layers.Reshape((NUM_FRAMES, NUM_BANDS, 1), name="to_nhwc")(inputs)
    flattened = False
    pools = 0
    for layer in arch.layers():
        activation = "relu" if layer.relu else None
        if layer.kind == "conv":
            keras_layer: Any = keras.layers.Conv2D(
                layer.outputs,
                KERNEL_SIZE,
                strides=1,
                padding="same",
                activation=activation,
                kernel_initializer="zeros",  # replaced by the checkpoint's values right below: no random init
                name=layer.keras_name,
            )
        else:
            if not flattened:
                net = keras.layers.Flatten(name="flatten")(net)
                flattened = True
            keras_layer = keras.layers.Dense(
                layer.outputs, activation=activation, kernel_initializer="zeros", name=layer.keras_name
            )
        net = keras_layer(net)
        keras_layer.set_weights([weights[layer.weights_name], weights[layer.biases_name]])
        if layer.pool_after:
            pools += 1
            net = keras.layers.MaxPool2D(POOL_SIZE, strides=POOL_SIZE, padding="same", name=f"pool{pools}")(net)
    return keras.Model(inputs, net, name="vggish")

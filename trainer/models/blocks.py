"""Building blocks shared by every family, written once (keras-hub style).

Blocks are plain functions of a Keras tensor that name every layer they add
from a ``name`` prefix, so layer names are stable: Grad-CAM looks its layer up
by name and checkpoints of one architecture line up across runs.
"""

import keras

from contracts import model as model_layers

# Prefix of the layers of a main classification head; the fine-tuning split
# (backbone vs head) relies on it.
HEAD_PREFIX = "head"


def conv_bn_act(
    x,
    filters,
    kernel_size,
    strides=1,
    padding="same",
    activation="relu",
    use_bias=False,
    *,
    name,
):
    """Conv2D, BatchNormalization, then an activation.

    The bias is off by default because the batch normalization's offset
    replaces it.

    Args:
        x: Input tensor ``[B, H, W, C]``.
        filters: Number of output channels.
        kernel_size: Int or ``(kh, kw)``.
        strides: Int or ``(sh, sw)``.
        padding: ``"same"`` or ``"valid"``.
        activation: Activation name, or ``None`` for a linear output (the
            ``_act`` layer is then omitted).
        use_bias: Whether the convolution has a bias.
        name: Prefix: layers are ``{name}_conv``, ``{name}_bn``, ``{name}_act``.

    Returns:
        The output tensor.
    """
    if not name:
        raise ValueError(f"conv_bn_act needs a layer name prefix, got {name!r}")
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    if activation is not None:
        x = keras.layers.Activation(activation, name=f"{name}_act")(x)
    return x


def scaled_residual(shortcut, branch, scale, activation="relu", *, name):
    """``activation(shortcut + scale * branch)``, the Inception-ResNet merge.

    Scaling the residual branch down (0.1 in the paper) keeps the sum close to
    the shortcut early in training, which stabilises wide residual stacks.

    Args:
        shortcut: Block input.
        branch: Residual branch output, same shape as ``shortcut``.
        scale: Multiplier of the branch.
        activation: Activation after the sum.
        name: Prefix: ``{name}_scale``, ``{name}_add``, ``{name}_out``.

    Returns:
        The output tensor.
    """
    branch = keras.layers.Rescaling(scale, name=f"{name}_scale")(branch)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, branch])
    return keras.layers.Activation(activation, name=f"{name}_out")(x)


def softmax_head(x, num_classes, dropout, *, prefix, output_name):
    """Dropout, a dense layer of logits and a float32 softmax.

    The softmax is forced to float32 so the probabilities (and the loss) stay
    accurate under a mixed-precision policy.

    Args:
        x: Flat features ``[B, D]``.
        num_classes: Number of classes.
        dropout: Dropout rate (0 disables it but keeps the layer).
        prefix: Prefix of ``{prefix}_dropout`` and ``{prefix}_logits``.
        output_name: Name of the softmax layer, the model output.

    Returns:
        Probabilities ``[B, num_classes]`` in float32.
    """
    x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    x = keras.layers.Dense(num_classes, name=f"{prefix}_logits")(x)
    return keras.layers.Activation("softmax", dtype="float32", name=output_name)(x)


def image_input(input_size):
    """The raw-pixel model input ``[B, S, S, 3]`` float32 named ``image``."""
    return keras.Input(shape=(input_size, input_size, 3), dtype="float32", name="image")


def per_image_centering(x):
    """Per-image centering layer named ``input_centering``."""
    return model_layers.PerImageCentering(name="input_centering")(x)


def scale_to_unit_range(x):
    """Maps ``[0, 255]`` to ``[-1, 1]`` (``x / 127.5 - 1``), layer ``input_scaling``."""
    return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="input_scaling")(x)

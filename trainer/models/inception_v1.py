"""Inception v1 (GoogLeNet) as in chapter 6 of "TensorFlow in Action".

Follows the book's listings 6.3 to 6.6, adapted to 64x64 inputs the way the
book adapts it: the stem's first convolution and last pooling use stride 1
instead of 2 so the small image keeps its spatial depth (inception 3x run at
S/2, 4x at S/4, 5x at S/8). Two departures, both deliberate:

- normalization is batch normalization inside every convolution block
  (:func:`conv_bn_act`) instead of the book's local response normalization
  Lambda layers, which do not serialize and train worse;
- chapter 7's regularization is built in: dropout 0.4 before the main head,
  0.7 in the auxiliary heads, and global average pooling instead of the fixed
  7x7 pool, so any input size from 32 up works.
"""

import typing

import keras

from contracts import model as model_contract
from trainer.models import blocks, registry

NAME = "inception_v1"


class InceptionSpec(typing.NamedTuple):
    """Filter counts of one Inception block (the book's table 6.5)."""

    conv1x1: int
    reduce3x3: int
    conv3x3: int
    reduce5x5: int
    conv5x5: int
    pool_proj: int


# Table 6.5 of the book (= table 1 of the GoogLeNet paper).
BLOCKS = {
    "3a": InceptionSpec(64, 96, 128, 16, 32, 32),
    "3b": InceptionSpec(128, 128, 192, 32, 96, 64),
    "4a": InceptionSpec(192, 96, 208, 16, 48, 64),
    "4b": InceptionSpec(160, 112, 224, 24, 64, 64),
    "4c": InceptionSpec(128, 128, 256, 24, 64, 64),
    "4d": InceptionSpec(112, 144, 288, 32, 64, 64),
    "4e": InceptionSpec(256, 160, 320, 32, 128, 128),
    "5a": InceptionSpec(256, 160, 320, 32, 128, 128),
    "5b": InceptionSpec(384, 192, 384, 48, 128, 128),
}

# Auxiliary heads and the block whose output feeds each one.
AUX_HEADS = {"aux1": "4a", "aux2": "4d"}

DEFAULTS = registry.ArchDefaults(
    input_size=64,
    augmentation="book",
    learning_rate=1e-3,
    dropout=0.4,
    aux_dropout=0.7,
    aux_loss_weight=0.3,
    aux_outputs=tuple(f"{aux}_predictions" for aux in AUX_HEADS),
    early_stopping_patience=5,
    feature_layer="inception_5b_concat",
    # From random weights the first epochs' validation loss says little: a best
    # model or an early stop chosen there is a near-chance model (docs/trainer.md).
    monitor_start_epoch=3,
)


def inception_block(x, spec, *, name):
    """One Inception block: 1x1, 1x1->3x3, 1x1->5x5 and pool->1x1 in parallel.

    Args:
        x: Input tensor.
        spec: An :class:`InceptionSpec`.
        name: Prefix of every layer of the block (e.g. ``inception_3a``).

    Returns:
        The concatenation of the four branches.
    """
    branch1 = blocks.conv_bn_act(x, spec.conv1x1, 1, name=f"{name}_1x1")
    branch2 = blocks.conv_bn_act(x, spec.reduce3x3, 1, name=f"{name}_3x3_reduce")
    branch2 = blocks.conv_bn_act(branch2, spec.conv3x3, 3, name=f"{name}_3x3")
    branch3 = blocks.conv_bn_act(x, spec.reduce5x5, 1, name=f"{name}_5x5_reduce")
    branch3 = blocks.conv_bn_act(branch3, spec.conv5x5, 5, name=f"{name}_5x5")
    branch4 = keras.layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_pool")(x)
    branch4 = blocks.conv_bn_act(branch4, spec.pool_proj, 1, name=f"{name}_pool_proj")
    return keras.layers.Concatenate(name=f"{name}_concat")([branch1, branch2, branch3, branch4])


def auxiliary_head(x, num_classes, dropout, *, name):
    """The book's auxiliary output (listing 6.5) with chapter 7's dropout.

    Average pool 5x5/3 (valid), 1x1 convolution to 128, flatten, dense 1024
    with ReLU, dropout, dense softmax named ``{name}_predictions``.
    """
    x = keras.layers.AveragePooling2D(5, strides=3, padding="valid", name=f"{name}_pool")(x)
    x = blocks.conv_bn_act(x, 128, 1, name=f"{name}_proj")
    x = keras.layers.Flatten(name=f"{name}_flatten")(x)
    x = keras.layers.Dense(1024, activation="relu", name=f"{name}_fc")(x)
    return blocks.softmax_head(x, num_classes, dropout, prefix=name, output_name=f"{name}_predictions")


def stem(x):
    """Listing 6.3 with batch normalization in place of LRN."""
    x = blocks.conv_bn_act(x, 64, 7, name="stem_conv1")
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool1")(x)
    x = blocks.conv_bn_act(x, 64, 1, name="stem_conv2")
    x = blocks.conv_bn_act(x, 192, 3, name="stem_conv3")
    return keras.layers.MaxPooling2D(3, strides=1, padding="same", name="stem_pool2")(x)


@registry.register_model(NAME, DEFAULTS)
def build(num_classes, *, input_size, dropout, aux_dropout):
    """Builds Inception v1 with its two auxiliary heads.

    Args:
        num_classes: Number of classes.
        input_size: Input side ``S``.
        dropout: Dropout before the main head.
        aux_dropout: Dropout inside the auxiliary heads.

    Returns:
        A model with outputs ``{"predictions", "aux1_predictions",
        "aux2_predictions"}``.
    """
    inputs = blocks.image_input(input_size)
    x = stem(blocks.per_image_centering(inputs))
    outputs = {}
    for block_id, spec in BLOCKS.items():
        if block_id in ("4a", "5a"):
            # The grid reduction between stages 3/4 and 4/5.
            x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{block_id[0]}")(x)
        x = inception_block(x, spec, name=f"inception_{block_id}")
        for aux, source in AUX_HEADS.items():
            if source == block_id:
                outputs[f"{aux}_predictions"] = auxiliary_head(x, num_classes, aux_dropout, name=aux)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs[model_contract.MAIN_OUTPUT] = blocks.softmax_head(
        x, num_classes, dropout, prefix=blocks.HEAD_PREFIX, output_name=model_contract.MAIN_OUTPUT
    )
    return keras.Model(inputs, outputs, name=NAME)

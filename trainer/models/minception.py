"""Minception: the book's small Inception-ResNet (chapter 7, listings 7.6-7.10).

A stem of parallel streams, one Inception-ResNet A block, a reduction block,
two Inception-ResNet B blocks with factorized 1x7/7x1 kernels, global average
pooling, dropout 0.5 and a softmax. Batch normalization comes before every
activation. It takes the 56x56 crops of the ``crop`` augmentation policy (the
book's RandomCrop layer is the input pipeline's job here) and scales pixels to
``[-1, 1]`` itself.

Where this departs from the printed listings, and why:

- the residual merge scales the residual branch, ``relu(x + 0.1 * F(x))`` as
  in the Inception-ResNet paper, where the listing scales the shortcut;
- block A's second stream is 1x1 -> 3x3 as in the Inception-ResNet paper
  (the listing stacks two 1x1 convolutions and leaves a third one unused);
- the dropout the listing computes and then bypasses is applied;
- global average pooling replaces the fixed 4x4 pool so any input size works.
"""

import keras

from contracts import model as model_contract
from trainer.models import blocks, registry

NAME = "minception"

# Residual branch multiplier (Inception-ResNet paper, section 3.3).
RESIDUAL_SCALE = 0.1

DEFAULTS = registry.ArchDefaults(
    input_size=56,
    augmentation="crop",
    learning_rate=1e-3,
    dropout=0.5,
    early_stopping_patience=10,
    feature_layer="block_b2_out",
    # From random weights the first epochs' validation loss says little: a best
    # model or an early stop chosen there is a near-chance model (docs/trainer.md).
    monitor_start_epoch=3,
)


def stem(x):
    """Listing 7.6: three convolutions, then three two-stream splits."""
    x = blocks.conv_bn_act(x, 32, 3, strides=2, name="stem_conv1")
    x = blocks.conv_bn_act(x, 32, 3, name="stem_conv2")
    x = blocks.conv_bn_act(x, 64, 3, name="stem_conv3")

    pooled = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_split1_pool")(x)
    conv = blocks.conv_bn_act(x, 96, 3, strides=2, name="stem_split1_conv")
    x = keras.layers.Concatenate(name="stem_split1_concat")([pooled, conv])

    left = blocks.conv_bn_act(x, 64, 1, name="stem_split2_a1")
    left = blocks.conv_bn_act(left, 96, 3, name="stem_split2_a2")
    right = blocks.conv_bn_act(x, 64, 1, name="stem_split2_b1")
    # A linear 7x1 followed by 1x7 factorizes one 7x7 convolution (listing 7.6).
    right = blocks.conv_bn_act(right, 64, (7, 1), activation=None, name="stem_split2_b2")
    right = blocks.conv_bn_act(right, 64, (1, 7), name="stem_split2_b3")
    right = blocks.conv_bn_act(right, 96, 3, name="stem_split2_b4")
    x = keras.layers.Concatenate(name="stem_split2_concat")([left, right])

    pooled = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_split3_pool")(x)
    conv = blocks.conv_bn_act(x, 192, 3, strides=2, name="stem_split3_conv")
    return keras.layers.Concatenate(name="stem_output")([pooled, conv])


def inception_resnet_a(x, *, name):
    """Listing 7.7: three streams, a linear 1x1 projection, scaled residual."""
    channels = x.shape[-1]
    branch0 = blocks.conv_bn_act(x, 32, 1, name=f"{name}_b0_1x1")
    branch1 = blocks.conv_bn_act(x, 32, 1, name=f"{name}_b1_1x1")
    branch1 = blocks.conv_bn_act(branch1, 32, 3, name=f"{name}_b1_3x3")
    branch2 = blocks.conv_bn_act(x, 32, 1, name=f"{name}_b2_1x1")
    branch2 = blocks.conv_bn_act(branch2, 48, 3, name=f"{name}_b2_3x3a")
    branch2 = blocks.conv_bn_act(branch2, 64, 3, name=f"{name}_b2_3x3b")
    branch2 = blocks.conv_bn_act(branch2, 384, 1, name=f"{name}_b2_expand")
    mixed = keras.layers.Concatenate(name=f"{name}_concat")([branch0, branch1, branch2])
    residual = blocks.conv_bn_act(mixed, channels, 1, activation=None, name=f"{name}_proj")
    return blocks.scaled_residual(x, residual, RESIDUAL_SCALE, name=name)


def inception_resnet_b(x, *, name):
    """Listing 7.8: a 1x1 stream and a 1x1 -> 1x7 -> 7x1 stream, scaled residual."""
    channels = x.shape[-1]
    branch0 = blocks.conv_bn_act(x, 192, 1, name=f"{name}_b0_1x1")
    branch1 = blocks.conv_bn_act(x, 128, 1, name=f"{name}_b1_1x1")
    branch1 = blocks.conv_bn_act(branch1, 160, (1, 7), name=f"{name}_b1_1x7")
    branch1 = blocks.conv_bn_act(branch1, 192, (7, 1), name=f"{name}_b1_7x1")
    mixed = keras.layers.Concatenate(name=f"{name}_concat")([branch0, branch1])
    residual = blocks.conv_bn_act(mixed, channels, 1, activation=None, name=f"{name}_proj")
    return blocks.scaled_residual(x, residual, RESIDUAL_SCALE, name=name)


def reduction(x, *, name):
    """Listing 7.9: two strided convolution streams and a strided max pool."""
    branch0 = blocks.conv_bn_act(x, 256, 3, strides=2, name=f"{name}_b0_3x3a")
    branch0 = blocks.conv_bn_act(branch0, 256, 3, name=f"{name}_b0_3x3b")
    branch0 = blocks.conv_bn_act(branch0, 384, 3, name=f"{name}_b0_3x3c")
    branch1 = blocks.conv_bn_act(x, 384, 3, strides=2, name=f"{name}_b1_3x3")
    branch2 = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(x)
    return keras.layers.Concatenate(name=f"{name}_concat")([branch0, branch1, branch2])


@registry.register_model(NAME, DEFAULTS)
def build(num_classes, *, input_size, dropout):
    """Builds Minception (listing 7.10).

    Args:
        num_classes: Number of classes.
        input_size: Input side ``S`` (56: the crop policy's output).
        dropout: Dropout before the softmax head.

    Returns:
        A single-output model ending in the ``predictions`` layer.
    """
    inputs = blocks.image_input(input_size)
    x = stem(blocks.scale_to_unit_range(inputs))
    x = inception_resnet_a(x, name="block_a")
    x = reduction(x, name="reduction")
    x = inception_resnet_b(x, name="block_b1")
    x = inception_resnet_b(x, name="block_b2")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = blocks.softmax_head(
        x, num_classes, dropout, prefix=blocks.HEAD_PREFIX, output_name=model_contract.MAIN_OUTPUT
    )
    return keras.Model(inputs, outputs, name=NAME)

"""Tiny Keras models shared by the explanation and prediction tests.

The explain library is handed "a model"; these stand in for the trainer's
architectures wherever a test needs no particular one (tests/explain/
test_architectures.py is the suite run over every registered architecture).
"""

import keras

NUM_CLASSES = 5


def tiny_cnn(input_size=64, num_classes=NUM_CLASSES, filters=(8, 16), aux=False):
    """A small fully convolutional classifier taking raw ``[0, 255]`` pixels.

    Conv / batch-norm / ReLU blocks (max pooling between them), global average
    pooling and a softmax layer named ``predictions``, as every architecture
    ends. The last block's activation is named ``features``: the layer
    Grad-CAM picks by default, and global pooling keeps "where" in it.

    Args:
        input_size: Side of the square input.
        num_classes: Width of the softmax head(s).
        filters: Filters of each block.
        aux: Also add an ``aux1_predictions`` head on the first block, and
            return a dict keyed by output name, like Inception v1's training model.

    Returns:
        A functional ``keras.Model`` (not compiled).
    """
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    first = None
    for i, width in enumerate(filters):
        last = i == len(filters) - 1
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.Activation("relu", name="features" if last else f"relu{i}")(x)
        first = x if first is None else first
        if not last:
            x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    main = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    if not aux:
        return keras.Model(inputs, main, name="tiny_cnn")
    side = keras.layers.GlobalAveragePooling2D(name="aux_gap")(first)
    side = keras.layers.Dense(num_classes, activation="softmax", name="aux1_predictions")(side)
    return keras.Model(inputs, {"predictions": main, "aux1_predictions": side}, name="tiny_cnn_aux")


def small_cnn(input_size=64):
    """:func:`tiny_cnn` with three blocks: the last map (``features``, 16x16 of 64) still knows where
    the object is, and it learns the sample in a few hundred steps."""
    return tiny_cnn(input_size, filters=(16, 32, 64))

"""``--class-weight balanced``: loss weights per class from the training split's class counts.

Keras' ``class_weight`` and scikit-learn's ``compute_class_weight("balanced")``
give class ``c`` the weight ``n_samples / (n_classes * count_c)``: over the
training split the examples' weights average to 1, so the loss keeps its scale
and the learning rate its meaning. Each example's loss is multiplied by its
weight and the batch mean is taken over the examples, as Keras applies a
``sample_weight``.

A mixup or CutMix example carries a soft label; its weight is that label's
expected weight ``sum_c y_c w_c`` (``lam * w_a + (1 - lam) * w_b``). Label
smoothing is taken off the targets first: Keras weighs by the labels before a
loss smooths them, so smoothing alone leaves every example its class's weight.

The counts come from ``metadata.json`` (``splits.train.class_counts``); a
dataset written before the job counted classes has its training labels counted
once, from the records (no image decoded).
"""

import numpy as np
import tensorflow as tf

from contracts import schema

# A largest training class this many times the smallest gets the start-up warning.
IMBALANCE_RATIO = 10
# Records parsed per batch while counting labels.
_COUNT_BATCH = 4096


def train_class_counts(info):
    """Returns the records of each class in ``train`` (label order), counted from the records if need be.

    Args:
        info: A :class:`contracts.dataset.DatasetInfo`.
    """
    counts = info.class_counts("train")
    if counts is not None:
        return counts
    return count_labels(info.shards.get("train", ()), info.num_classes)


def count_labels(paths, num_classes):
    """Counts the labels of TFRecord shards; returns a tuple of ``num_classes`` ints."""
    counts = np.zeros(num_classes, np.int64)
    if not paths:
        return tuple(int(c) for c in counts)
    spec = {schema.LABEL: schema.FEATURE_SPEC[schema.LABEL]}
    dataset = tf.data.TFRecordDataset(list(paths)).batch(_COUNT_BATCH)
    dataset = dataset.map(lambda serialized: tf.io.parse_example(serialized, spec)[schema.LABEL])
    for labels in dataset:
        labels = labels.numpy()
        labels = labels[(labels >= 0) & (labels < num_classes)]
        counts += np.bincount(labels, minlength=num_classes)
    return tuple(int(c) for c in counts)


def balanced(counts):
    """Returns the balanced weight of each class: ``n_samples / (n_classes * count_c)``.

    ``n_classes`` counts the classes present in ``counts``; a class without
    examples gets 0 (no example carries it, and the present ones keep a mean
    weight of 1).

    Raises:
        ValueError: No class has an example.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("class weights need training examples; every class count is 0")
    total, classes = counts.sum(), int(present.sum())
    weights = np.where(present, total / (classes * np.maximum(counts, 1.0)), 0.0)
    return tuple(float(w) for w in weights)


def weights_for(mode, counts):
    """Returns the class weights of ``--class-weight mode`` (``None`` for ``none``)."""
    if mode == "none":
        return None
    if mode == "balanced":
        return balanced(counts)
    raise ValueError(f"class_weight must be none or balanced; got {mode!r}")


def imbalance_warning(counts, class_names):
    """Returns the start-up warning when the largest class is over :data:`IMBALANCE_RATIO` x the smallest.

    Returns:
        One line, or ``None`` for a split that is balanced enough (or empty).
    """
    counts = list(counts)
    if not counts or max(counts) == 0:
        return None
    largest = max(range(len(counts)), key=counts.__getitem__)
    smallest = min(range(len(counts)), key=counts.__getitem__)
    if counts[largest] <= IMBALANCE_RATIO * counts[smallest]:
        return None
    big, small = class_names[largest], class_names[smallest]
    if counts[smallest]:
        ratio = counts[largest] / counts[smallest]
        detail = (
            f"the largest ({big!r}, {counts[largest]} images) has {ratio:.1f}x "
            f"the smallest ({small!r}, {counts[smallest]} images)"
        )
    else:
        detail = f"{small!r} has no image, {big!r} has {counts[largest]}"
    return f"train classes are imbalanced: {detail}; consider --class-weight balanced"


def describe(weights, class_names):
    """Returns the start-up line that gives the weights' range and the classes at its ends."""
    present = [i for i, w in enumerate(weights) if w > 0]
    low = min(present, key=lambda i: weights[i])
    high = max(present, key=lambda i: weights[i])
    return (
        f"class weights balanced: {weights[low]:.3g} ({class_names[low]!r}) to "
        f"{weights[high]:.3g} ({class_names[high]!r})"
    )


def example_weights(class_weights, labels, targets=None, label_smoothing=0.0):
    """Returns float32 ``[B]``: the loss weight of each example of a batch.

    Args:
        class_weights: float32 ``[C]`` tensor of class weights.
        labels: int ``[B]`` true labels.
        targets: ``[B, C]`` soft targets of the step (mixup/CutMix, label
            smoothing), or ``None`` when the loss takes ``labels``.
        label_smoothing: The smoothing that made ``targets``; taken off before the
            expected weight ``sum_c y_c w_c`` is computed.
    """
    if targets is None:
        return tf.gather(class_weights, tf.cast(labels, tf.int32))
    targets = tf.cast(targets, tf.float32)
    if 0.0 < label_smoothing < 1.0:
        classes = tf.cast(tf.shape(targets)[-1], tf.float32)
        targets = (targets - label_smoothing / classes) / (1.0 - label_smoothing)
    return tf.linalg.matvec(targets, class_weights)

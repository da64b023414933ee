"""``--class-weight balanced``: the weights, each example's weight in the loss, the counts, the warning."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.trainer import helpers
from trainer import class_weights, loop, mixing

CLASSES = 3
# Unequal counts and their balanced weights by hand, as scikit-learn's
# compute_class_weight("balanced", classes=[0, 1, 2], y=...) gives them: 100 / (3 * count).
COUNTS = (10, 20, 70)
BALANCED = (100 / 30, 100 / 60, 100 / 210)


def test_balanced_weights_are_n_over_classes_times_count():
    assert class_weights.balanced(COUNTS) == pytest.approx(BALANCED)
    assert class_weights.balanced(COUNTS) == pytest.approx((3.333333, 1.666667, 0.476190), rel=1e-5)
    # Over the training split the examples' weights average to 1: the loss keeps its scale.
    assert sum(c * w for c, w in zip(COUNTS, class_weights.balanced(COUNTS), strict=True)) == pytest.approx(
        100
    )
    assert class_weights.balanced((5, 5, 5, 5)) == pytest.approx((1.0,) * 4)
    # A class without training examples weighs nothing; n_classes counts the present ones.
    assert class_weights.balanced((30, 0, 10)) == pytest.approx((40 / 60, 0.0, 40 / 20))
    with pytest.raises(ValueError, match="every class count is 0"):
        class_weights.balanced((0, 0))
    assert class_weights.weights_for("none", COUNTS) is None
    assert class_weights.weights_for("balanced", COUNTS) == class_weights.balanced(COUNTS)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_the_loss_is_the_weighted_mean_of_every_heads_cross_entropy(smoothing):
    """Keras' class_weight: sum_i w(y_i) * loss_i / batch, on every head; smoothing keeps w(y_i)."""
    keras.utils.set_random_seed(0)
    model = helpers.two_head_model(CLASSES)
    features = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 2, 2, 0], np.int32)
    training_loop = loop.DistributedLoop(
        tf.distribute.get_strategy(),
        model,
        model,
        num_classes=CLASSES,
        global_batch_size=6,
        aux_loss_weight=0.3,
        mixer=mixing.Mixer(CLASSES, label_smoothing=smoothing),
        class_weights=BALANCED,
    )
    outputs = model(features)
    targets = np.eye(CLASSES)[labels] * (1 - smoothing) + smoothing / CLASSES
    weights = np.array(BALANCED)[labels]

    def objective(weights):
        def weighted_mean(probabilities):
            cross_entropy = -np.sum(targets * np.log(probabilities.numpy()), axis=1)
            return float(np.sum(weights * cross_entropy) / len(labels))

        return weighted_mean(outputs["predictions"]) + 0.3 * weighted_mean(outputs["aux1_predictions"])

    iterator = iter(tf.data.Dataset.from_tensors((features, labels)).repeat())
    stats = training_loop.train_step(iterator)
    assert float(stats["objective"]) == pytest.approx(objective(weights), rel=1e-5)
    # ...which is not the unweighted mean: the weights moved it.
    assert abs(objective(weights) - objective(np.ones(len(labels)))) > 1e-3


def test_a_mixed_label_weighs_the_expected_weight_of_its_classes():
    """Mixup pairs each image with the batch reversed: the weight is lam * w(a) + (1 - lam) * w(b)."""
    size, smoothing = 6, 0.1
    labels = tf.constant([0, 1, 2, 2, 1, 1], tf.int32)
    # Image i is the constant i, so the mixed image gives lam back: lam * i + (1 - lam) * (size - 1 - i).
    images = tf.constant(np.arange(size, dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 1)))
    mixer = mixing.Mixer(CLASSES, mixup=0.4, label_smoothing=smoothing)
    mixed, targets = mixer(images, labels, tf.constant([3, 7]))
    lam = float(mixed[0, 0, 0, 0] - (size - 1)) / (0 - (size - 1))
    assert 0.0 < lam < 1.0
    w = np.array(BALANCED)
    expected = lam * w[labels.numpy()] + (1 - lam) * w[labels.numpy()[::-1]]
    got = class_weights.example_weights(tf.constant(BALANCED, tf.float32), labels, targets, smoothing)
    assert got.numpy() == pytest.approx(expected, rel=1e-5)
    # Integer labels: each example's own class weight.
    plain = class_weights.example_weights(tf.constant(BALANCED, tf.float32), labels)
    assert plain.numpy() == pytest.approx(w[labels.numpy()])


def test_imbalance_warning_over_ten_to_one():
    names = ("cat", "dog", "eel")
    assert class_weights.imbalance_warning((6, 60, 10), names) is None  # exactly 10x: no warning
    line = class_weights.imbalance_warning((5, 60, 10), names)
    assert line.endswith("consider --class-weight balanced")
    assert "'dog', 60 images" in line and "12.0x" in line and "'cat', 5 images" in line
    assert "'dog' has no image, 'eel' has 9;" in class_weights.imbalance_warning((7, 0, 9), names)
    assert class_weights.imbalance_warning((0, 0, 0), names) is None
    described = class_weights.describe(class_weights.balanced(COUNTS), names)
    assert described == "class weights balanced: 0.476 ('eel') to 3.33 ('cat')"


def test_train_counts_from_metadata_or_else_from_the_records(sample_records, sample_info):
    _, metadata = sample_records
    assert metadata["rejected"]["count"] == 0  # Every generated image became a record.
    # The sample writes 40 train/ images per class; the job splits them between train and valid.
    both = class_weights.count_labels([*sample_info.shards["train"], *sample_info.shards["valid"]], 5)
    assert both == (40,) * 5
    # metadata.json from before class counts: the train records are counted.
    splits = {
        name: {k: v for k, v in entry.items() if k != "class_counts"}
        for name, entry in metadata["splits"].items()
    }
    older = dataclasses.replace(sample_info, metadata={**metadata, "splits": splits})
    counted = class_weights.train_class_counts(older)
    assert sum(counted) == sample_info.split_counts["train"] and min(counted) > 0
    # metadata.json's own counts are taken as they are (no records read).
    splits["train"] = {**splits["train"], "class_counts": [1, 2, 3, 4, 5]}
    newer = dataclasses.replace(sample_info, metadata={**metadata, "splits": splits}, shards={})
    assert class_weights.train_class_counts(newer) == (1, 2, 3, 4, 5)

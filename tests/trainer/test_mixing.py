"""Mixup, CutMix and label smoothing: the mixed images and targets, and the loss every head takes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.trainer import helpers
from trainer import loop, mixing

CLASSES = 4


def _batch(size=6, side=8, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (size, side, side, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, size).astype(np.int32)
    return tf.constant(images), tf.constant(labels)


def test_label_smoothing_spreads_eps_over_every_class():
    targets = mixing.soft_targets(tf.constant([2, 0]), CLASSES, 0.2).numpy()
    np.testing.assert_allclose(targets[0], [0.05, 0.05, 0.85, 0.05], rtol=1e-6)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)


def test_mixup_mixes_each_image_with_the_reversed_batch_by_the_same_lam_as_its_targets():
    images, labels = _batch()
    mixed, targets = mixing.Mixer(CLASSES, mixup=0.4)(images, labels, tf.constant([3, 4]))
    one_hot = np.eye(CLASSES)[labels.numpy()]
    reversed_images, reversed_hot = images.numpy()[::-1], one_hot[::-1]
    # lam from the first image's pixels, then both the images and the targets must follow it.
    difference = images.numpy() - reversed_images
    lam = float(np.sum((mixed.numpy() - reversed_images) * difference) / np.sum(difference**2))
    assert 0.0 < lam < 1.0
    np.testing.assert_allclose(mixed.numpy(), lam * images.numpy() + (1 - lam) * reversed_images, atol=1e-3)
    np.testing.assert_allclose(targets.numpy(), lam * one_hot + (1 - lam) * reversed_hot, atol=1e-5)


def test_cutmix_pastes_one_box_of_the_reversed_batch_and_the_targets_weigh_its_area():
    images, labels = _batch(side=16)
    mixed, targets = mixing.Mixer(CLASSES, cutmix=1.0)(images, labels, tf.constant([1, 9]))
    mixed, original, partner = mixed.numpy(), images.numpy(), images.numpy()[::-1]
    pasted = np.all(mixed == partner, axis=-1) & ~np.all(mixed == original, axis=-1)
    kept = np.all(mixed == original, axis=-1)
    assert np.all(pasted | kept)
    assert np.all(pasted == pasted[0])  # One box for the whole batch.
    rows, cols = np.nonzero(pasted[0])
    assert rows.size > 0
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert box == rows.size  # A rectangle.
    lam = 1.0 - rows.size / 16**2
    one_hot = np.eye(CLASSES)[labels.numpy()]
    np.testing.assert_allclose(targets.numpy(), lam * one_hot + (1 - lam) * one_hot[::-1], atol=1e-6)


def test_with_both_on_each_batch_uses_one_of_them_with_even_odds():
    images, labels = _batch(side=16)
    mixer = mixing.Mixer(CLASSES, mixup=1.0, cutmix=1.0)
    kinds = []
    for step in range(40):
        mixed, _ = mixer(images, labels, tf.constant([7, step]))
        same_or_partner = np.all((mixed == images) | (mixed == images[::-1]))
        kinds.append("cutmix" if same_or_partner else "mixup")
    assert 10 <= kinds.count("cutmix") <= 30, kinds


def test_mixing_is_a_function_of_the_seed():
    images, labels = _batch()
    mixer = mixing.Mixer(CLASSES, mixup=0.2, cutmix=1.0, label_smoothing=0.1)
    first = mixer(images, labels, tf.constant([5, 6]))
    again = mixer(images, labels, tf.constant([5, 6]))
    other = mixer(images, labels, tf.constant([5, 7]))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(first[1].numpy(), other[1].numpy())


def test_an_inactive_mixer_is_not_used():
    assert not mixing.Mixer(CLASSES).active
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(CLASSES, activation="softmax")])
    training_loop = loop.DistributedLoop(
        tf.distribute.get_strategy(),
        model,
        model,
        num_classes=CLASSES,
        global_batch_size=2,
        mixer=mixing.Mixer(4),
    )
    assert training_loop.mixer is None


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_every_head_takes_the_smoothed_loss_and_accuracy_counts_the_true_labels(smoothing):
    keras.utils.set_random_seed(0)
    model = helpers.two_head_model(CLASSES)
    features = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32)
    training_loop = loop.DistributedLoop(
        tf.distribute.get_strategy(),
        model,
        model,
        num_classes=CLASSES,
        global_batch_size=8,
        aux_loss_weight=0.3,
        mixer=mixing.Mixer(CLASSES, label_smoothing=smoothing),
    )
    outputs = model(features)
    targets = np.eye(CLASSES)[labels] * (1 - smoothing) + smoothing / CLASSES

    def cross_entropy(probabilities):
        return float(np.mean(-np.sum(targets * np.log(probabilities.numpy()), axis=1)))

    expected = cross_entropy(outputs["predictions"]) + 0.3 * cross_entropy(outputs["aux1_predictions"])
    iterator = iter(tf.data.Dataset.from_tensors((features, labels)).repeat())
    stats = training_loop.train_step(iterator)
    assert float(stats["objective"]) == pytest.approx(expected, rel=1e-5)
    predicted = np.argmax(outputs["predictions"].numpy(), axis=1)
    assert float(stats["top1"]) == float(np.sum(predicted == labels))

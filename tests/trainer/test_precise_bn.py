"""Precise batch-norm statistics: the exact statistics of the data seen, alike on every replica."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import tiers
from tests.trainer import helpers
from trainer import models, precise_bn


def _images(count, size=56, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


def _batches(images, batch_size):
    labels = np.zeros(len(images), np.int32)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def _moving(model):
    return {
        layer.name: (layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy())
        for layer in precise_bn.trainable_batch_norms(model)
    }


def test_first_layer_gets_the_exact_statistics_of_every_image_seen():
    model = models.build_model("minception", 3, seed=0)
    images = _images(12)
    strategy = tf.distribute.get_strategy()
    # Three batches of four, of which two are read.
    seen = precise_bn.PreciseBatchNorm(strategy, model, num_batches=2)(_batches(images, 4))
    assert seen == 8
    first = model.get_layer("stem_conv1_bn")
    conv = keras.Model(model.input, first.input)(images[:8]).numpy().astype(np.float64)
    np.testing.assert_allclose(first.moving_mean.numpy(), conv.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(first.moving_variance.numpy(), conv.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-4)


def test_every_layer_equals_keras_own_batch_statistics_of_one_batch():
    """With one batch, every layer's statistics are the ones Keras' own training-mode pass computes."""
    model = models.build_model("minception", 3, seed=0)
    images = _images(16, seed=1)
    precise_bn.PreciseBatchNorm(tf.distribute.get_strategy(), model, num_batches=1)(_batches(images, 16))
    reference = models.build_model("minception", 3, seed=0)
    for layer in precise_bn.trainable_batch_norms(reference):
        layer.momentum = 0.0  # the moving statistics become the batch statistics
    reference(images, training=True)
    ours, theirs = _moving(model), _moving(reference)
    assert len(ours) == len(theirs) == 33
    for name, (mean, variance) in theirs.items():
        np.testing.assert_allclose(ours[name][0], mean, rtol=2e-3, atol=2e-3, err_msg=name)
        np.testing.assert_allclose(ours[name][1], variance, rtol=2e-3, atol=2e-3, err_msg=name)


def test_frozen_layers_keep_their_statistics():
    model = models.build_model("minception", 3, seed=0)
    frozen = model.get_layer("stem_conv2_bn")
    frozen.trainable = False
    before = frozen.moving_mean.numpy().copy(), frozen.moving_variance.numpy().copy()
    precise_bn.PreciseBatchNorm(tf.distribute.get_strategy(), model, 1)(_batches(_images(4), 4))
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), before[0])
    np.testing.assert_array_equal(frozen.moving_variance.numpy(), before[1])
    assert "stem_conv2_bn" not in _moving(model) and "stem_conv1_bn" in _moving(model)


def test_no_images_is_an_error():
    model = models.build_model("minception", 3, seed=0)
    with pytest.raises(ValueError, match="gave no images"):
        precise_bn.PreciseBatchNorm(tf.distribute.get_strategy(), model, 1)(_batches(_images(4), 4).take(0))


def test_auto_batches():
    assert precise_bn.auto_batches(32, 9, 8) == 8  # a small folder: the batches of one epoch
    assert precise_bn.auto_batches(32, 9, 100) == 9  # never more than one pass over the split
    assert precise_bn.auto_batches(128, 782, 781) == 64  # tiny-imagenet: 8192 images
    assert precise_bn.auto_batches(10_000, 700, 10) == 1


_MIRRORED = """
import sys
import numpy as np
from trainer import distribute
distribute.configure_devices(2)
import tensorflow as tf
from tests.trainer import test_precise_bn as t
from trainer import precise_bn
images = np.random.default_rng(3).uniform(0, 255, (20, 16, 16, 3)).astype(np.float32)
labels = np.zeros(20, np.int32)
out = {}
strategies = (("one", tf.distribute.get_strategy()), ("mirrored", distribute.make_strategy("mirrored", 2)))
for name, strategy in strategies:
    with strategy.scope():
        model = t._stacked_model()
    # 20 images in global batches of 8: the last batch gives the replicas 2 images each.
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    if name == "mirrored":
        data = strategy.experimental_distribute_dataset(data)
    out[name + "_seen"] = precise_bn.PreciseBatchNorm(strategy, model, 3)(data)
    for layer in precise_bn.trainable_batch_norms(model):
        for kind in ("moving_mean", "moving_variance"):
            variable = getattr(layer, kind).value
            values = getattr(variable, "values", (variable,))
            out[f"{name}/{layer.name}/{kind}"] = np.stack([v.numpy() for v in values])
np.savez(sys.argv[1], **out)
"""


def _stacked_model():
    """Three convolutions, each with its batch norm: a layer's input depends on the norms before it.

    Small: the in-process tests above run the pass over Minception's 33 batch norms, and tracing
    those on two logical devices in a fresh interpreter takes most of a minute on 2 cores.
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    hidden = inputs
    for index in range(3):
        hidden = keras.layers.Conv2D(4, 3, name=f"conv{index + 1}")(hidden)
        hidden = keras.layers.BatchNormalization(name=f"conv{index + 1}_bn")(hidden)
        hidden = keras.layers.ReLU()(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="predictions")(hidden))


@tiers.dev("a mirrored pass on two logical devices in a fresh interpreter")
def test_mirrored_replicas_hold_identical_statistics_equal_to_one_device(tmp_path):
    path = str(tmp_path / "stats.npz")
    proc = helpers.run_script(_MIRRORED, path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = dict(np.load(path))
    assert int(stats.pop("one_seen")) == int(stats.pop("mirrored_seen")) == 20
    names = [key.split("/", 1)[1] for key in stats if key.startswith("mirrored/")]
    assert len(names) == 2 * 3
    for name in names:
        replicas = stats[f"mirrored/{name}"]
        assert replicas.shape[0] == 2, name
        np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=name)
    # The first layer's input depends on no other batch norm: the sums over both replicas
    # (and an uneven last batch) give exactly the one-device statistics of the 20 images.
    for kind in ("moving_mean", "moving_variance"):
        name = f"conv1_bn/{kind}"
        np.testing.assert_allclose(
            stats[f"mirrored/{name}"][0], stats[f"one/{name}"][0], rtol=1e-4, atol=1e-4
        )

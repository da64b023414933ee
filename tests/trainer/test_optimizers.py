"""The run's optimizer: weight decay that skips biases and batch norm, the cosine schedule with
warm-up (also after a resume and in a second phase), the weights' moving average, and clipping."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import tiers
from tests.trainer import helpers
from trainer import config as config_lib
from trainer import loop, optimizers


def _config(**values):
    return config_lib.TrainConfig(data_dir="d", job_dir="j", arch="minception", **values)


def _model(batch_norm=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, name="dense")(inputs)
    if batch_norm:
        hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(hidden)
    return keras.Model(inputs, outputs)


def test_weight_decay_shrinks_kernels_and_skips_biases_and_batch_norm():
    model = _model()
    config = _config(optimizer="adamw", weight_decay=0.5, learning_rate=0.1)
    optimizer = optimizers.make_optimizer(config, model, learning_rate=0.1, steps_per_epoch=10)
    before = {v.path: v.numpy() for v in model.trainable_variables}
    # Zero gradients: Adam's own step is 0, so only the decoupled decay moves a variable.
    optimizer.apply([tf.zeros_like(v) for v in model.trainable_variables], model.trainable_variables)
    decayed = {v.path for v in model.trainable_variables if not np.array_equal(v.numpy(), before[v.path])}
    assert decayed == {"dense/kernel", "predictions/kernel"}
    np.testing.assert_allclose(
        model.get_layer("dense").kernel.numpy(), before["dense/kernel"] * (1 - 0.5 * 0.1)
    )


def test_no_decay_variables_are_biases_and_normalization_parameters():
    names = sorted(v.path for v in optimizers.no_decay_variables(_model()))
    assert names == ["bn/beta", "bn/gamma", "dense/bias", "predictions/bias"]


def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    schedule = optimizers.cosine_schedule(0.4, epochs=10, steps_per_epoch=5, warmup_epochs=2)

    def rate(step):
        return float(schedule(step))

    assert rate(0) == 0.0
    assert rate(5) == pytest.approx(0.2)  # Half-way through the 10 warm-up steps.
    assert rate(10) == pytest.approx(0.4)
    # 40 decay steps after the warm-up: a quarter of the way down the cosine at step 20.
    assert rate(20) == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 10 / 40)), rel=1e-5)
    assert rate(50) == pytest.approx(0.0, abs=1e-7)


def test_a_second_phase_reads_the_schedule_from_where_the_first_ended():
    whole = optimizers.cosine_schedule(0.4, epochs=10, steps_per_epoch=5, warmup_epochs=2)
    second = optimizers.cosine_schedule(0.4, epochs=10, steps_per_epoch=5, warmup_epochs=2, start_epoch=3)
    for step in (0, 7, 20):
        assert float(second(step)) == pytest.approx(float(whole(step + 15)))
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(second))
    assert float(restored(7)) == pytest.approx(float(second(7)))


def test_the_learning_rate_follows_the_restored_step_counter(tmp_path):
    model = _model()
    config = _config(lr_schedule="cosine", lr_warmup_epochs=1, epochs=4, learning_rate=0.4)
    optimizer = optimizers.make_optimizer(config, model, learning_rate=0.4, steps_per_epoch=5)
    assert optimizers.has_schedule(optimizer)
    for _ in range(7):
        optimizer.apply([tf.ones_like(v) for v in model.trainable_variables], model.trainable_variables)
    expected = optimizers.current_learning_rate(optimizer)
    path = tf.train.Checkpoint(optimizer=optimizer).write(str(tmp_path / "ckpt"))
    fresh = optimizers.make_optimizer(config, model, learning_rate=0.4, steps_per_epoch=5)
    fresh.build(model.trainable_variables)
    tf.train.Checkpoint(optimizer=fresh).read(path).expect_partial()
    assert int(fresh.iterations) == 7
    assert optimizers.current_learning_rate(fresh) == pytest.approx(expected)
    assert expected == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 2 / 15)), rel=1e-5)


def test_the_moving_average_is_what_use_average_weights_puts_into_the_model():
    model = _model()
    optimizer = optimizers.make_optimizer(_config(ema=0.8), model, learning_rate=0.05, steps_per_epoch=5)
    model.compile(optimizer=optimizer)
    variables = model.trainable_variables
    average = None
    for step in range(4):
        gradients = [tf.fill(v.shape, 0.1 * (step + 1)) for v in variables]
        optimizer.apply(gradients, variables)
        values = [v.numpy() for v in variables]
        # Keras starts the average at the first step's weights, then decays by 0.8 per step.
        average = (
            values if average is None else [0.8 * a + 0.2 * v for a, v in zip(average, values, strict=True)]
        )
    raw = [v.numpy() for v in variables]
    assert optimizers.use_average_weights(model)
    for variable, expected, before in zip(variables, average, raw, strict=True):
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(expected, before)
    assert not optimizers.use_average_weights(_with_plain_optimizer())


def _with_plain_optimizer():
    model = _model()
    model.compile(optimizer=optimizers.make_optimizer(_config(), model, learning_rate=0.1, steps_per_epoch=1))
    return model


def _one_step(strategy, clip_norm, global_batch=8):
    with strategy.scope():  # No batch norm: each replica's statistics would change its gradient.
        model = _model(batch_norm=False)
        model.compile(optimizer=keras.optimizers.SGD(1.0))
    features = np.random.default_rng(2).normal(size=(global_batch, 4)).astype(np.float32) * 30
    labels = np.arange(global_batch, dtype=np.int32) % 3
    training_loop = loop.DistributedLoop(
        strategy, model, model, num_classes=3, global_batch_size=global_batch, clip_norm=clip_norm
    )
    before = [v.numpy() for v in model.trainable_variables]
    data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((features, labels)).repeat())
    training_loop.train_step(iter(data))
    moved = [v.numpy() - b for v, b in zip(model.trainable_variables, before, strict=True)]
    return float(np.sqrt(sum(np.sum(m**2) for m in moved))), moved


def test_clip_norm_bounds_the_global_gradient_norm():
    free, _ = _one_step(tf.distribute.get_strategy(), 0.0)
    clipped, _ = _one_step(tf.distribute.get_strategy(), 0.05)
    assert free > 0.05  # SGD with learning rate 1: the step is the gradient.
    assert clipped == pytest.approx(0.05, rel=1e-4)


_MIRRORED = """
import sys
import numpy as np
from trainer import distribute
distribute.configure_devices(2)
import keras
import tensorflow as tf
from tests.trainer import test_optimizers as t
from trainer import loop, models
out = {}
mirrored = distribute.make_strategy("mirrored", 2)
_, out["clip_one"] = t._one_step(tf.distribute.get_strategy(), 0.05)
_, out["clip_two"] = t._one_step(mirrored, 0.05)
images = np.random.default_rng(3).uniform(0, 255, (8, 8, 8, 3)).astype(np.float32)
images[4:] *= 0.2  # The two replicas' halves differ, so their batch statistics do.
labels = np.zeros(8, np.int32)
for sync in (False, True):
    with mirrored.scope():
        model = t._conv_model()
        # What build_model(..., sync_bn=True) does to every batch norm (test_models checks that it does).
        models.registry.set_bn_momentum(model, 0.9, synchronized=sync)
        model.compile(optimizer=keras.optimizers.SGD(0.0))
    training_loop = loop.DistributedLoop(mirrored, model, model, num_classes=3, global_batch_size=8)
    data = mirrored.experimental_distribute_dataset(tf.data.Dataset.from_tensors((images, labels)).repeat())
    training_loop.train_step(iter(data))
    variable = model.get_layer("conv_bn").moving_mean.value
    out[f"sync_{sync}"] = np.stack([v.numpy() for v in variable.values])
ragged = {k: np.asarray(v, dtype=object) if isinstance(v, list) else v for k, v in out.items()}
np.savez(sys.argv[1], **ragged)
"""


def _conv_model():
    """A convolution, its batch norm and a softmax head: the per-replica batch statistics of images."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    hidden = keras.layers.BatchNormalization(name="conv_bn")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(hidden)
    return keras.Model(inputs, outputs)


@tiers.dev("a mirrored step on two logical devices in a fresh interpreter")
def test_on_two_replicas_sync_bn_agrees_and_clipping_equals_one_device(tmp_path):
    path = str(tmp_path / "out.npz")
    # A small model: tracing a full network's synchronized batch norms on two logical CPU devices
    # takes minutes on a busy 2-core machine (one cross-replica merge per layer).
    proc = helpers.run_script(_MIRRORED, path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = np.load(path, allow_pickle=True)
    for one, two in zip(out["clip_one"], out["clip_two"], strict=True):
        np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6)
    unsynced, synced = out["sync_False"], out["sync_True"]
    assert not np.allclose(unsynced[0], unsynced[1])
    np.testing.assert_array_equal(synced[0], synced[1])

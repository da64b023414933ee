"""Training modes the quick runs do not cover: XLA with device-side augmentation,
mixed precision, and two-phase fine-tuning of Inception-ResNet-v2."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.trainer import helpers
from trainer import augment, loop, models


def _tiny_model(num_classes, size):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions", dtype="float32")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("policy", ["book", "crop"])
def test_xla_step_with_device_augmentation(policy):
    """The book policy's projective transform has no XLA kernel: the loop keeps it outside."""
    keras.utils.set_random_seed(0)
    augmenter = augment.Augmenter(policy, 64, 56)
    model = _tiny_model(3, augmenter.output_size)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    strategy = tf.distribute.get_strategy()
    train = loop.DistributedLoop(
        strategy, model, model, num_classes=3, global_batch_size=4, augmenter=augmenter, jit_compile=True
    )
    images = tf.random.uniform((4, 64, 64, 3), 0, 255, seed=1)
    labels = tf.constant([0, 1, 2, 0])
    iterator = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    before = [w.numpy() for w in model.trainable_weights]
    stats = train.train_step(iterator)
    stats = train.train_step(iterator)
    assert float(stats["count"]) == 4.0 and np.isfinite(float(stats["objective"]))
    after = [w.numpy() for w in model.trainable_weights]
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    assert int(train.step_counter.numpy()) == 2


def test_mixed_precision_and_device_augmentation_run(sample_records, tmp_path):
    data_dir, _ = sample_records
    job = str(tmp_path / "job")
    args = helpers.quick_args(data_dir, job, 1, "--mixed-precision", "mixed_float16")
    args += ["--augment-on", "device", "--explain", "false"]
    proc = helpers.run_cli(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(job, "config.json")) as f:
        config = json.load(f)
    assert config["mixed_precision"] == "mixed_float16" and config["augment_on"] == "device"
    with open(os.path.join(job, "metrics.json")) as f:
        metrics = json.load(f)
    assert np.isfinite(metrics["test"]["loss"]) and metrics["epochs_completed"] == 1
    # The saved model serves in the dtype policy it was trained with; outputs stay float32.
    model = keras.saving.load_model(os.path.join(job, "model.keras"))
    assert model.output.dtype == "float32"


@pytest.mark.slow
def test_two_phase_fine_tuning(sample_records, tmp_path):
    """Inception-ResNet-v2: head only for the warm-up epoch, then every layer."""
    data_dir, _ = sample_records
    job = str(tmp_path / "job")
    args = ["--data-dir", data_dir, "--job-dir", job, "--arch", "inception_resnet_v2", "--weights", "none"]
    args += ["--batch-size", "2", "--steps-per-epoch", "1", "--validation-steps", "1", "--epochs", "2"]
    args += ["--warmup-epochs", "1", "--explain", "false", "--policy", "none"]
    proc = helpers.run_cli(args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "backbone unfrozen" in proc.stderr
    with open(os.path.join(job, "history.csv")) as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]
    model = models.build_model("inception_resnet_v2", 5, weights=None)
    total = len(model.trainable_weights)
    models.set_backbone_trainable(model, False)
    head = len(model.trainable_weights)
    assert 0 < head < total

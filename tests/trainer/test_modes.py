"""Training modes the quick runs do not cover: XLA with device-side augmentation,
mixed precision, and two-phase fine-tuning of Inception-ResNet-v2."""

import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests import tiers
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


def test_the_train_step_is_traced_once():
    """An optimizer without variables yet gets them before the step is traced, not by its first
    apply inside the trace (a tf.function that creates variables traces itself twice)."""
    keras.utils.set_random_seed(0)
    model = _tiny_model(3, 8)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    assert not model.optimizer.built
    train = loop.DistributedLoop(
        tf.distribute.get_strategy(), model, model, num_classes=3, global_batch_size=4
    )
    images = tf.random.uniform((4, 8, 8, 3), 0, 255, seed=1)
    iterator = iter(tf.data.Dataset.from_tensors((images, tf.constant([0, 1, 2, 0]))).repeat())
    for _ in range(3):
        train.train_step(iterator)
    assert train._train_function.experimental_get_tracing_count() == 1
    assert int(model.optimizer.iterations.numpy()) == 3


@tiers.long("a mixed-precision run: float16 is emulated on a CPU")
def test_mixed_precision_and_device_augmentation_run(sample_records, tmp_path):
    data_dir, _ = sample_records
    job = str(tmp_path / "job")
    args = helpers.quick_args(data_dir, job, 1, "--mixed-precision", "mixed_float16")
    # The precise pass casts float16 batch-norm inputs: it runs here too.
    args += ["--augment-on", "device", "--explain", "false", "--precise-bn", "auto"]
    proc = helpers.run_cli(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    config = helpers.read_job_json(job, "config.json")
    assert config["mixed_precision"] == "mixed_float16" and config["augment_on"] == "device"
    metrics = helpers.read_job_json(job, "metrics.json")
    assert np.isfinite(metrics["test"]["loss"]) and metrics["epochs_completed"] == 1
    # The model the trainer built and trained: its layers compute in float16 and keep
    # float32 variables; only the softmax is float32 (a float32 output alone would
    # not show it, the softmax forces that in any policy).
    model = keras.saving.load_model(os.path.join(job, "model.keras"))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs
    for layer in [*convs, model.get_layer("head_logits")]:
        assert layer.compute_dtype == "float16", layer.name
        assert all(v.dtype == "float32" for v in layer.weights), layer.name
    predictions = model.get_layer(models.MAIN_OUTPUT)
    assert predictions.compute_dtype == "float32"
    images = np.random.default_rng(0).uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
    probe = keras.Model(model.input, [convs[-1].output, model.get_layer("head_logits").output, model.output])
    features, logits, probabilities = probe(images, training=False)
    assert features.dtype == "float16" and logits.dtype == "float16"
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.sum(probabilities, axis=1), 1.0, atol=1e-3)


def _variables_by_part(model):
    """Returns ``(backbone, head)`` variable paths, and the trainable ones of each."""
    head_layers = [layer for layer in model.layers if layer not in models.backbone_layers(model)]
    head = {v.path for layer in head_layers for v in layer.weights}
    trainable = {v.path for v in model.trainable_weights}
    backbone = {v.path for v in model.weights} - head
    return backbone, head, trainable


@tiers.long("Inception-ResNet-v2 trained in two phases, stopped twice")
def test_two_phase_fine_tuning_freezes_then_trains_the_backbone(sample_records, tmp_path):
    """Inception-ResNet-v2 with --frozen-epochs 1: the weights of a real run after each phase.

    Each phase is stopped with SIGTERM; its backup holds the weights it reached. The first is
    stopped in the frozen phase's last epoch, and saves at the phase boundary before tracing
    the unfrozen step; the second resumes straight into the unfrozen phase.
    """
    data_dir, _ = sample_records
    job = str(tmp_path / "job")
    args = ["--data-dir", data_dir, "--job-dir", job, "--arch", "inception_resnet_v2", "--weights", "none"]
    args += ["--batch-size", "2", "--steps-per-epoch", "3", "--validation-steps", "1", "--epochs", "3"]
    # The smallest backbone side Keras allows: the phases' weights do not depend on it.
    args += ["--frozen-epochs", "1", "--explain", "false", "--policy", "none", "--backbone-size", "75"]
    # No precise pass: tracing it over Inception-ResNet-v2's batch norms at each epoch end would
    # cost more than the phases' steps (test_precise_bn checks that frozen layers keep theirs).
    args += ["--precise-bn", "0"]
    backup = os.path.join(job, "backup")

    # Phase one (frozen backbone), stopped in its last epoch: the epoch line comes before the
    # epoch's saves, so the signal lands before the unfreeze and its stop check.
    log = tmp_path / "phase1.log"
    proc = helpers.start_cli(args, str(log))
    assert helpers.wait_for(lambda: "epoch 1/3" in log.read_text(), 600, proc), helpers.tail(log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, helpers.tail(log)
    text = log.read_text()
    assert "backbone unfrozen" in text and "backup saved at epoch 1 step 0" in text, helpers.tail(log)
    # Side 75 leaves conv_7b_ac 1x1: said before training, not found at the export after it.
    assert "the feature map of 'conv_7b_ac' is 1x1" in text.split("epoch 1/3")[0], helpers.tail(log)
    model = helpers.build_like_trainer(job, data_dir)
    backbone, head, trainable = _variables_by_part(model)
    assert head == {"head_logits/kernel", "head_logits/bias"} and len(backbone) > 100
    initial = helpers.snapshot(model)
    first = helpers.read_backup_weights(model, backup)
    after_one = helpers.snapshot(model)
    assert (first["epoch"], first["step_in_epoch"]) == (1, 0)
    for path in head:
        assert not np.array_equal(after_one[path], initial[path]), f"head {path} did not train"
    for path in backbone:  # weights and batch-norm statistics alike
        np.testing.assert_array_equal(after_one[path], initial[path], err_msg=f"frozen {path} changed")

    # The same command resumes in phase two (every layer trains); stopped after its first step.
    log = tmp_path / "phase2.log"
    proc = helpers.start_cli(args, str(log))
    resumed = f"resumed at epoch {first['epoch']} step {first['step_in_epoch']}"
    assert helpers.wait_for(lambda: resumed in log.read_text(), 600, proc), helpers.tail(log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, helpers.tail(log)
    assert "backbone unfrozen" not in log.read_text()  # built unfrozen
    second = helpers.read_backup_weights(model, backup)
    after_two = helpers.snapshot(model)
    assert (second["epoch"], second["step_in_epoch"]) > (1, 0), "at least one unfrozen step"
    unchanged = [p for p in backbone & trainable if np.array_equal(after_two[p], after_one[p])]
    assert not unchanged, f"{len(unchanged)} backbone weights did not train in phase two: {unchanged[:5]}"
    moving = [p for p in backbone - trainable if not np.array_equal(after_two[p], after_one[p])]
    assert moving, "batch-norm statistics update once the backbone trains"

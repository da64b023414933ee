"""Preemption: SIGKILL then the same command resumes; SIGTERM backs up and exits non-zero;
the full training state (optimizer, learning rate, callback counters, best weights) round-trips."""

import csv
import json
import os
import signal

import numpy as np
import pytest

from tests.trainer import helpers


@pytest.mark.slow
def test_sigkill_then_rerun_continues_epochs(sample_records, tmp_path):
    data_dir, _ = sample_records
    job = str(tmp_path / "job")
    state_file = os.path.join(job, "backup", "state.json")
    proc = helpers.start_cli(helpers.quick_args(data_dir, job, 3), str(tmp_path / "first.log"))
    assert helpers.wait_for(lambda: os.path.exists(state_file), 400, proc), helpers.tail(
        tmp_path / "first.log"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with open(state_file) as f:
        saved = json.load(f)
    assert saved["epoch"] >= 1 and saved["step_in_epoch"] == 0
    assert set(saved["callbacks"]) == {"best_model", "early_stopping", "lr_plateau"}
    second = helpers.run_cli(helpers.quick_args(data_dir, job, 3))
    assert second.returncode == 0, second.stderr[-4000:]
    assert f"resumed at epoch {saved['epoch']} step 0" in second.stderr
    with open(os.path.join(job, "history.csv")) as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs == [0, 1, 2]
    with open(os.path.join(job, "metrics.json")) as f:
        assert json.load(f)["epochs_completed"] == 3
    assert not os.path.exists(os.path.join(job, "backup"))


@pytest.mark.slow
def test_sigterm_saves_backup_and_exits_nonzero(sample_records, tmp_path):
    data_dir, _ = sample_records
    job = str(tmp_path / "job")
    log = tmp_path / "run.log"
    args = helpers.quick_args(data_dir, job, 50, "--steps-per-epoch", "4")
    proc = helpers.start_cli(args, str(log))
    assert helpers.wait_for(lambda: "epoch 1/50" in log.read_text(), 400, proc), helpers.tail(log)
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=120)
    assert code == 143, helpers.tail(log)
    assert "preempted" in log.read_text()
    with open(os.path.join(job, "backup", "state.json")) as f:
        saved = json.load(f)
    assert 1 <= saved["epoch"] < 50
    assert os.path.exists(os.path.join(job, "backup", saved["checkpoint"] + ".index"))


def _tiny_model(keras):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    return model


def _callbacks(tmp_path, model):
    from trainer import callbacks

    plateaus = []
    stateful = {
        "best_model": callbacks.BestModelCheckpoint(str(tmp_path / "m.keras"), model),
        "early_stopping": callbacks.EarlyStopping(patience=5, restore_best_weights=True, mode="min"),
        "lr_plateau": callbacks.ReduceLROnPlateau(
            on_plateau=plateaus.append, patience=1, factor=0.5, mode="min"
        ),
    }
    return stateful, plateaus


def test_state_round_trip_with_loop(tmp_path):
    import keras
    import tensorflow as tf

    from trainer import loop, state

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    model = _tiny_model(keras)
    stateful, plateaus = _callbacks(tmp_path, model)
    images = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    labels = (images[:, 0] > 0).astype("int32")
    train = tf.data.Dataset.from_tensor_slices((images, labels)).repeat().batch(8)
    valid = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    runner = loop.DistributedLoop(strategy, model, model, num_classes=3, global_batch_size=8)
    callback_list = keras.callbacks.CallbackList(list(stateful.values()), model=model)
    result = runner.fit(train, epochs=2, steps_per_epoch=4, callbacks=callback_list, valid_dataset=valid)
    assert result.epochs_completed == 2 and set(result.history[1]) >= {"loss", "val_loss", "val_accuracy"}
    # Force a plateau: a worse val_loss with patience 1 halves the learning rate.
    stateful["lr_plateau"].on_epoch_end(2, {"val_loss": 99.0})
    assert plateaus == [2]
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.005)
    stateful["early_stopping"].wait = 3
    saved = state.TrainingState(model, stateful).save(str(tmp_path / "backup"), epoch=3)
    assert saved["learning_rate"] == pytest.approx(0.005)

    keras.utils.set_random_seed(1)
    fresh = _tiny_model(keras)
    fresh_callbacks, _ = _callbacks(tmp_path, fresh)
    restored = state.TrainingState(fresh, fresh_callbacks).restore(str(tmp_path / "backup"))
    assert restored["epoch"] == 3
    for a, b in zip(model.weights, fresh.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), err_msg=a.path)
    assert int(fresh.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 8
    assert float(fresh.optimizer.learning_rate.numpy()) == pytest.approx(0.005)
    # Callback state applies after the callbacks' own on_train_begin reset.
    fresh_list = keras.callbacks.CallbackList(list(fresh_callbacks.values()), model=fresh)
    fresh_list.on_train_begin()
    for name in ("early_stopping", "lr_plateau", "best_model"):
        assert fresh_callbacks[name].get_state() == stateful[name].get_state(), name
    assert fresh_callbacks["early_stopping"].wait == 3
    for a, b in zip(
        fresh_callbacks["early_stopping"].best_weights, stateful["early_stopping"].best_weights, strict=True
    ):
        np.testing.assert_allclose(a, b)

"""The full training state (optimizer, learning rate, callback counters, best weights) round-trips
through a plateau branch of the shared plateau run. SIGTERM and SIGKILL, and the rerun after them,
are tests/trainer/test_exact_resume.py."""

import os
import subprocess

import numpy as np
import pytest

from tests.trainer import helpers


def _docs_branch_commands():
    """The shell lines of docs/trainer.md's "Branching from a plateau" block that copy the checkpoint."""
    with open(os.path.join(helpers.ROOT, "docs", "trainer.md")) as f:
        text = f.read()
    section = text[text.index("## Branching from a plateau") :]
    block = section[section.index("```sh\n") + 6 : section.index("```\n", section.index("```sh\n") + 6)]
    lines = block.strip().splitlines()
    # First line: example values of JOB, BRANCH, EPOCH (the test sets its own); last: the trainer.
    assert lines[0].startswith("JOB=") and " BRANCH=" in lines[0] and " EPOCH=" in lines[0]
    assert lines[-1].startswith("python -m trainer.task ")
    assert lines[-1].endswith('--job-dir "$BRANCH" --epochs 80')
    return "\n".join(lines[1:-1])


def _valid_loss(model_path, data_dir):
    """Mean cross-entropy of a saved model over the whole valid split, computed here."""
    import keras

    from contracts import dataset
    from trainer import data

    info = dataset.load_metadata(data_dir)
    model = keras.saving.load_model(model_path)
    total, count = 0.0, 0
    for images, labels in data.make_dataset(info, "valid", global_batch_size=8, policy="crop", crop_size=56):
        total += float(np.sum(keras.losses.sparse_categorical_crossentropy(labels, model(images))))
        count += int(labels.shape[0])
    assert count == info.metadata["splits"]["valid"]["count"]
    return total / count


def test_plateau_checkpoint_early_stopping_and_branch(plateau_job, tmp_path):
    """A real plateau and early stop in one run, then a branch from the plateau as docs/trainer.md says."""
    job, data_dir, args = plateau_job["job_dir"], plateau_job["data_dir"], plateau_job["args"]
    branch = str(tmp_path / "branch")
    rows = helpers.read_history(job)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    val_loss = [float(r["val_loss"]) for r in rows]
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([1e-6, 1e-6])
    assert val_loss[1] > val_loss[0] + 1e-4, "the setting must plateau (and make restoring observable)"

    # Early stopping: stopped before --epochs, the best epoch's weights restored and evaluated.
    metrics = helpers.read_job_json(job, "metrics.json")
    assert metrics["stopped_early"] is True
    assert metrics["epochs_completed"] == 2 < 3 and metrics["best_epoch"] == 0
    assert metrics["valid"]["count"] == 20
    assert metrics["valid"]["loss"] == pytest.approx(val_loss[0], abs=2e-5)
    assert _valid_loss(os.path.join(job, "model.keras"), data_dir) == pytest.approx(val_loss[0], abs=2e-5)

    # The plateau: the learning rate was cut after epoch index 1; the state after it is kept.
    assert sorted(os.listdir(os.path.join(job, "checkpoints"))) == ["plateau-epoch-0002"]
    plateau = os.path.join(job, "checkpoints", "plateau-epoch-0002")
    folder, saved = helpers.newest_generation(plateau)
    assert saved["epoch"] == 2 and saved["step_in_epoch"] == 0
    assert saved["learning_rate"] == pytest.approx(1e-7)
    assert saved["callbacks"]["early_stopping"]["wait"] == 1
    assert os.path.exists(os.path.join(folder, saved["checkpoint"] + ".index"))
    assert f"plateau at epoch 2: learning rate reduced, state saved to {plateau}" in plateau_job["stderr"]

    # Branch exactly as docs/trainer.md says: its shell lines, then the first command
    # with --job-dir (and a changed flag) appended.
    env = helpers.cli_env(JOB=job, BRANCH=branch, EPOCH="0002")
    subprocess.run(["bash", "-euc", _docs_branch_commands()], check=True, env=env, cwd=helpers.ROOT)
    # The branch checks no calibration: the reference run's temperature fit is turned off (a trace).
    second = helpers.run_cli([*args, "--job-dir", branch, "--epochs", "4", "--calibration", "none"])
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed at epoch 2 step 0" in second.stderr
    rows = helpers.read_history(branch)
    assert [int(r["epoch"]) for r in rows] == [2]
    assert float(rows[0]["learning_rate"]) == pytest.approx(1e-7)
    metrics = helpers.read_job_json(branch, "metrics.json")
    # The early-stopping wait came along (1 of patience 1): no improvement at epoch 2 stops the branch.
    assert metrics["stopped_early"] is True and metrics["epochs_completed"] == 3
    assert helpers.read_job_json(branch, "config.json")["epochs"] == 4
    assert os.path.exists(os.path.join(branch, "model.keras"))
    assert not os.path.exists(os.path.join(branch, "backup"))


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

    return {
        "best_model": callbacks.BestModelCheckpoint(str(tmp_path / "m.keras"), model),
        "early_stopping": callbacks.EarlyStopping(patience=5, restore_best_weights=True, mode="min"),
        "lr_plateau": callbacks.ReduceLROnPlateau(patience=1, factor=0.5, mode="min"),
    }


def test_state_round_trip_with_loop(tmp_path):
    import keras
    import tensorflow as tf

    from trainer import loop, state

    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    model = _tiny_model(keras)
    stateful = _callbacks(tmp_path, model)
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
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.005)
    stateful["early_stopping"].wait = 3
    saved = state.TrainingState(model, stateful).save(str(tmp_path / "backup"), epoch=3)
    assert saved["learning_rate"] == pytest.approx(0.005)

    keras.utils.set_random_seed(1)
    fresh = _tiny_model(keras)
    fresh_callbacks = _callbacks(tmp_path, fresh)
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

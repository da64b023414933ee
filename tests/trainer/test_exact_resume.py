"""Exact resume: the training stream is a pure function of (seed, epoch, step), so a run killed
(SIGKILL after a step-level backup, or SIGTERM) and rerun ends with the weights of an uninterrupted
run (tests/trainer/test_multi_worker.py: the same in a cluster)."""

import os
import shutil
import signal

import numpy as np
import pytest
import tensorflow as tf

from tests import tiers
from tests.trainer import helpers
from trainer import data

STEPS = 6  # per epoch; a step-level backup every 2 steps lands mid-epoch at steps 2 and 4.


def _read_state(backup_dir):
    """The backup's state through the trainer's own reader (``None`` while there is none)."""
    from trainer import state

    return state.read_state(backup_dir)


# Every option with state or randomness of its own: the per-image augmentation on top of the
# policy, the in-step mixing (seeded by the global step), the cosine schedule (the optimizer's
# step counter), AdamW with weight decay, clipping and the weights' moving average (optimizer variables).
MODERN = ["--flip", "--randaugment", "1,5", "--random-erasing", "0.25", "--mixup", "0.2", "--cutmix", "1.0"]
MODERN += ["--label-smoothing", "0.1", "--optimizer", "adamw", "--weight-decay", "0.01", "--clip-norm", "5"]
MODERN += ["--lr-schedule", "cosine", "--lr-warmup-epochs", "1", "--ema", "0.9"]


def _args(data_dir, job):
    # minception's default policy, crop, runs on the host: augmentation is part of the stream.
    extra = ["--steps-per-epoch", str(STEPS), "--backup-every-steps", "2", "--explain", "false", *MODERN]
    # The precise pass before each validation moves the statistics a resumed run must restore.
    return helpers.quick_args(data_dir, job, 3, *extra, "--precise-bn", "auto", "--deterministic")


def _model_weights(job):
    import keras

    model = keras.saving.load_model(os.path.join(job, "model.keras"))
    return {variable.path: variable.numpy() for variable in model.weights}


def _assert_same_run(job, reference):
    """Every weight of model.keras and every epoch's validation metrics equal the uninterrupted run's."""
    weights, expected = _model_weights(job), _model_weights(reference)
    assert sorted(weights) == sorted(expected)
    differences = {path: float(np.max(np.abs(weights[path] - expected[path]))) for path in expected}
    worst = max(differences, key=differences.get)
    print(f"largest weight difference: {differences[worst]:.3g} ({worst})")
    for path in expected:
        np.testing.assert_allclose(weights[path], expected[path], rtol=0, atol=1e-6, err_msg=path)
    rows, expected_rows = helpers.read_history(job), helpers.read_history(reference)
    assert [r["epoch"] for r in rows] == [r["epoch"] for r in expected_rows] == ["0", "1", "2"]
    for row, expected_row in zip(rows, expected_rows, strict=True):
        for key in ("val_loss", "val_accuracy", "learning_rate"):
            assert float(row[key]) == pytest.approx(float(expected_row[key]), abs=1e-6), (row, key)
    assert not os.path.exists(os.path.join(job, "backup"))


def _assert_backup_holds_the_weights_reached(job, data_dir, backup):
    """The SIGTERM backup holds the weights reached mid-epoch, not the best epoch's in model.keras.

    (The resumed run's equality with the uninterrupted one then shows they were the right ones.)
    """
    import keras

    model = helpers.build_like_trainer(job, data_dir)
    helpers.read_backup_weights(model, backup)
    best = {v.path: v.numpy() for v in keras.saving.load_model(os.path.join(job, "model.keras")).weights}
    trainable = [v for v in model.trainable_weights if v.path in best]
    assert trainable, "model.keras and the trainer's model share no weight paths"
    same = [v.path for v in trainable if np.array_equal(v.numpy(), best[v.path])]
    assert not same, f"{len(same)} of {len(trainable)} weights equal the best epoch's, e.g. {same[:3]}"


@pytest.fixture(scope="module")
@tiers.long("an 18-step modern-recipe run, then interrupted and resumed copies of it")
def reference_job(sample_records, tmp_path_factory):
    """An uninterrupted run with the flags of the interrupted ones."""
    data_dir, _ = sample_records
    job = str(tmp_path_factory.mktemp("reference") / "job")
    done = helpers.run_cli(_args(data_dir, job))
    assert done.returncode == 0, done.stderr[-4000:]
    return job


def test_run_stopped_by_sigterm_then_killed_and_resumed_equals_the_uninterrupted_one(
    sample_records, reference_job, tmp_path, processes
):
    """One run interrupted twice (a SIGTERM, then a SIGKILL after it resumed), then finished.

    Both interruptions in one chain: each rerun of the same command resumes where the last
    backup left off, and the run that finishes ends with the uninterrupted run's weights.
    """
    data_dir, _ = sample_records
    job = str(tmp_path / "job")
    backup = os.path.join(job, "backup")

    # A preemption notice (SIGTERM): the run saves where it is and exits 143.
    log = tmp_path / "first.log"
    proc = helpers.start_cli(_args(data_dir, job), str(log))
    processes.append(proc)
    assert helpers.wait_for(helpers.mid_epoch_backup(backup), 400, proc, interval=0.02), helpers.tail(log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, helpers.tail(log)
    stopped = _read_state(backup)
    assert 1 <= stopped["epoch"] < 3 and 0 < stopped["step_in_epoch"] < STEPS, stopped
    assert "preempted" in log.read_text()
    _assert_backup_holds_the_weights_reached(job, data_dir, backup)
    # A cosine schedule runs no plateau callback; the schedule itself follows the restored step counter.
    assert set(stopped["callbacks"]) == {"best_model", "early_stopping"}

    # The rerun resumes there and is killed outright once it has saved a later mid-epoch backup.
    log = tmp_path / "second.log"
    proc = helpers.start_cli(_args(data_dir, job), str(log))
    processes.append(proc)
    position = (stopped["epoch"], stopped["step_in_epoch"])
    later = helpers.mid_epoch_backup(backup, after=position)
    assert helpers.wait_for(later, 400, proc, interval=0.02), helpers.tail(log)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=120) == -signal.SIGKILL, helpers.tail(log)
    assert f"resumed at epoch {position[0]} step {position[1]}" in log.read_text()
    killed = _read_state(backup)
    assert (killed["epoch"], killed["step_in_epoch"]) > position and 0 < killed["step_in_epoch"] < STEPS, (
        killed
    )

    last = helpers.run_cli(_args(data_dir, job))
    assert last.returncode == 0, last.stderr[-4000:]
    assert f"resumed at epoch {killed['epoch']} step {killed['step_in_epoch']}" in last.stderr
    _assert_same_run(job, reference_job)


# ------------------------------------------------------------------ the stream itself, in process


def _stream(info, **kwargs):
    options = {"global_batch_size": 8, "training": True, "policy": "crop", "seed": 11, "steps_per_epoch": 5}
    return data.make_dataset(info, "train", **{**options, **kwargs})


def _batches(dataset, count):
    return [tuple(tensor.numpy() for tensor in batch) for batch in dataset.take(count)]


def _names(info, count, **kwargs):
    plain = _stream(info, policy="none", features="all", **kwargs)  # Same seed: same order.
    return [batch["filename"].numpy() for batch in plain.take(count)]


@pytest.mark.parametrize("cache", [False, True])
@tiers.dev("streams several epochs through tf.data, twice: seconds")
def test_training_stream_is_a_pure_function_of_seed_epoch_and_step(sample_info, cache):
    from_start = _batches(_stream(sample_info, cache=cache), 15)  # Epochs 0, 1 and 2.
    resumed = _batches(_stream(sample_info, cache=cache, initial_epoch=1, initial_step=3), 7)
    for (images, labels), (expected_images, expected_labels) in zip(resumed, from_start[8:], strict=True):
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(images, expected_images)

    # Epochs differ in order and in augmentation: the same records are cropped elsewhere.
    names = _names(sample_info, 10, cache=cache)
    assert not np.array_equal(np.concatenate(names[:5]), np.concatenate(names[5:]))
    first = {name: i for i, name in enumerate(np.concatenate(names[:5]))}
    images = [
        np.concatenate([b[0] for b in from_start[:5]]),
        np.concatenate([b[0] for b in from_start[5:10]]),
    ]
    shared = [(first[name], j) for j, name in enumerate(np.concatenate(names[5:])) if name in first]
    assert shared, "5 batches of 8 out of 180 records share a few records between epochs"
    assert all(not np.array_equal(images[0][i], images[1][j]) for i, j in shared)


@pytest.mark.parametrize("cache", [False, True])
@tiers.dev("streams several epochs through tf.data, twice: seconds")
def test_training_stream_does_not_depend_on_the_global_seed(sample_info, cache):
    """A global seed of 0 once broke the shuffle (a tensor seed compared as a bool); others changed it."""
    streams = []
    for global_seed in (0, 5):
        tf.random.set_seed(global_seed)
        streams.append(_names(sample_info, 6, cache=cache))
    np.testing.assert_array_equal(np.concatenate(streams[0]), np.concatenate(streams[1]))


@tiers.dev("streams several epochs through tf.data: seconds")
def test_epochs_longer_than_a_pass_continue_into_the_next_pass(sample_info):
    count = sample_info.split_counts["train"]
    steps = count // 8 + 5
    names = np.concatenate(_names(sample_info, steps, steps_per_epoch=steps))
    assert len(names) > count and len(set(names[:count])) == count  # Every record once per pass.
    again = np.concatenate(_names(sample_info, 5, steps_per_epoch=steps, initial_step=steps - 5))
    np.testing.assert_array_equal(again, names[-40:])


@tiers.dev("streams several epochs through tf.data, twice: seconds")
def test_resuming_a_pipeline_that_feeds_two_replicas_skips_two_batches_per_step(sample_info):
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=2)
    kwargs = {"global_batch_size": 8, "input_context": context}
    from_start = _batches(_stream(sample_info, **kwargs), 10)  # Epoch 0: 5 steps of 2 replica batches.
    resumed = _batches(_stream(sample_info, initial_step=2, **kwargs), 6)
    assert from_start[0][0].shape[0] == 4  # Per-replica batches.
    for (images, labels), (expected_images, expected_labels) in zip(resumed, from_start[4:], strict=True):
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(images, expected_images)


@tiers.dev("streams several epochs through tf.data: seconds")
def test_cached_training_stream_reads_the_files_once(sample_records, tmp_path):
    from contracts import dataset

    info = dataset.load_metadata(shutil.copytree(sample_records[0], str(tmp_path / "records")))
    streamed = _batches(_stream(info, cache=True), 12)
    cached = _stream(info, cache=True)  # Filled here, before any epoch runs.
    for path in info.shards["train"]:
        os.remove(path)
    # Every epoch (a new shuffle inside flat_map) is served by the one cache.
    for (images, labels), (expected_images, expected_labels) in zip(
        _batches(cached, 12), streamed, strict=True
    ):
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(images, expected_images)

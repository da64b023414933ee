"""Faults the trainer meets in the field: a damaged backup, a diverging run, a non-finite setting,
an output folder that is a file. Each ends in a known way (a fallback, a fresh start, one error
line and a known exit code), never a traceback or a crash loop."""

import json
import os
import re
import shutil
import signal

import numpy as np
import pytest

from tests import tiers
from tests.trainer import helpers
from trainer import backup

STEPS = 3  # per epoch; with a backup after every step, consecutive generations differ in position.


def _args(data_dir, job, epochs, *extra):
    return helpers.quick_args(
        data_dir, job, epochs, "--steps-per-epoch", str(STEPS), "--explain", "false", *extra
    )


@pytest.fixture(scope="module")
@tiers.long("a trainer run killed mid-run")
def killed_job(sample_records, tmp_path_factory):
    """The job dir of a real run killed (SIGKILL) after a few step-level backups.

    Its backup is trimmed to the two newest complete generations, both past the first
    epoch (so both hold the early-stopping best weights as an ``.npz``).

    Returns:
        ``(job_dir, newest, previous)``: the job dir and the two generations' states.
    """
    data_dir, _ = sample_records
    root = tmp_path_factory.mktemp("killed")
    job, log = str(root / "job"), root / "run.log"
    folder = os.path.join(job, "backup")
    proc = helpers.start_cli(_args(data_dir, job, 50, "--backup-every-steps", "1"), str(log))

    def two_past_first_epoch():
        found = backup.scan(folder).usable
        return len(found) >= 2 and found[1].state["epoch"] >= 1

    try:
        assert helpers.wait_for(two_past_first_epoch, 400, proc, interval=0.05), helpers.tail(log)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    newest, previous = backup.scan(folder).usable[:2]
    backup.prune(folder, keep={newest.name, previous.name})
    return job, newest.state, previous.state


def _copy(killed_job, tmp_path):
    job = str(tmp_path / "job")
    shutil.copytree(killed_job[0], job)
    return job, os.path.join(job, "backup")


def _truncate_state(generation):
    path = generation.file(backup.STATE_FILE)
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    return "state.json: truncated JSON"


def _delete_checkpoint_data(generation):
    (name,) = [n for n in generation.state["files"] if n.startswith("ckpt.data-")]
    os.remove(generation.file(name))
    return f"{name}: missing"


def _corrupt_checkpoint_bytes(generation):
    (name,) = [n for n in generation.state["files"] if n.startswith("ckpt.data-")]
    with open(generation.file(name), "r+b") as f:
        f.seek(os.path.getsize(generation.file(name)) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return f"{name}: checksum mismatch"


def _delete_npz(generation):
    name = generation.state["arrays"]["early_stopping"]
    os.remove(generation.file(name))
    return f"{name}: missing"


def _wrong_checksum(generation):
    path = generation.file(backup.STATE_FILE)
    state = dict(generation.state)
    state["files"] = {**state["files"], "ckpt.index": "0" * 64}
    with open(path, "w") as f:
        json.dump(state, f)
    return "ckpt.index: checksum mismatch"


DAMAGE = {
    "truncated_state": _truncate_state,
    "deleted_checkpoint_data": _delete_checkpoint_data,
    "corrupted_checkpoint_bytes": _corrupt_checkpoint_bytes,
    "missing_npz": _delete_npz,
    "checksum_mismatch": _wrong_checksum,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_generation_falls_back_to_the_previous(killed_job, tmp_path, damage):
    _, newest, previous = killed_job
    _, folder = _copy(killed_job, tmp_path)
    problem = DAMAGE[damage](backup.read(folder, newest["generation"]))
    found = backup.scan(folder)
    assert [g.name for g in found.generations] == [newest["generation"], previous["generation"]]
    assert found.generations[0].problem == f"{newest['generation']}/{problem}"
    assert [g.state for g in found.usable] == [previous]


@tiers.long("a rerun of a killed run")
def test_rerun_with_every_generation_damaged_starts_over_with_one_warning(
    sample_records, killed_job, tmp_path
):
    data_dir, _ = sample_records
    _, newest, previous = killed_job
    job, folder = _copy(killed_job, tmp_path)
    _truncate_state(backup.read(folder, newest["generation"]))
    _delete_npz(backup.read(folder, previous["generation"]))
    done = helpers.run_cli(_args(data_dir, job, 1))
    assert done.returncode == 0, done.stderr[-4000:]
    warnings = [line for line in helpers.warnings(done.stderr) if "backup" in line]
    npz = previous["arrays"]["early_stopping"]
    assert warnings == [
        f"backup in {folder} is damaged ({newest['generation']}/state.json: truncated "
        f"JSON; {previous['generation']}/{npz}: missing): starting over"
    ]
    assert "resumed at" not in done.stderr and "Traceback" not in done.stderr
    assert [int(row["epoch"]) for row in helpers.read_history(job)] == [0]
    assert not os.path.exists(folder)


@tiers.long("a trainer run killed and rerun in the bucket")
def test_gcs_backup_keeps_two_generations_and_falls_back_in_the_bucket(sample_records, gcs_bucket, tmp_path):
    """The mirror deletes pruned generations in the bucket; a damaged newest one there is skipped.

    The rerun is also the suite's check that a damaged newest generation falls back to the
    previous one and the run finishes (the scan of a gs:// job dir's backup is the local scan of
    its downloaded copy; the damage kinds are checked on the killed local run above).
    """
    from contracts import storage

    data_dir, _ = sample_records
    client = storage.gcs_client()
    job, prefix = f"gs://{gcs_bucket}/runs/a", "runs/a/backup/"

    def states():
        found = {}
        for blob in client.list_blobs(gcs_bucket, prefix=prefix):
            if blob.name.endswith("/state.json"):
                found[blob.name.split("/")[-2]] = json.loads(blob.download_as_bytes())
        return found

    log = tmp_path / "first.log"
    proc = helpers.start_cli(_args(data_dir, job, 50, "--backup-every-steps", "1"), str(log))
    try:
        assert helpers.wait_for(lambda: any(s["epoch"] >= 1 for s in states().values()), 400, proc, 0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, helpers.tail(log)
    saved = states()
    folders = {blob.name.split("/")[-2] for blob in client.list_blobs(gcs_bucket, prefix=prefix)}
    assert len(saved) == 2 and folders == set(saved), (sorted(folders), sorted(saved))
    newest, previous = (saved[name] for name in sorted(saved, reverse=True))
    blob = client.bucket(gcs_bucket).blob(f"{prefix}{newest['generation']}/state.json")
    blob.upload_from_string(blob.download_as_bytes()[:100])

    done = helpers.run_cli(_args(data_dir, job, previous["epoch"] + 1))
    assert done.returncode == 0, done.stderr[-4000:]
    warnings = [line for line in helpers.warnings(done.stderr) if line.startswith("backup in")]
    damaged = f"({newest['generation']}/state.json: truncated JSON): resuming from {previous['generation']}"
    assert len(warnings) == 1 and warnings[0].endswith(f"is damaged {damaged}"), done.stderr[-3000:]
    position = f"epoch {previous['epoch']} step {previous['step_in_epoch']}"
    assert f"resumed at {position} from {previous['generation']}" in done.stderr
    metrics = json.loads(client.bucket(gcs_bucket).blob("runs/a/metrics.json").download_as_text())
    assert metrics["epochs_completed"] == previous["epoch"] + 1
    assert not list(client.list_blobs(gcs_bucket, prefix=prefix))


def _tiny_model(keras, width=8):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(width, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    model.optimizer.build(model.trainable_variables)
    return model


def test_generation_that_does_not_restore_is_skipped_and_rolled_back(tmp_path):
    import keras

    from trainer import state

    folder = str(tmp_path / "backup")
    keras.utils.set_random_seed(0)
    model = _tiny_model(keras)
    saver = state.TrainingState(model)
    first = saver.save(folder, epoch=1)
    kept = [v.numpy().copy() for v in model.weights]
    for variable in model.weights:
        variable.assign(variable + 1.0)
    second = saver.save(folder, epoch=2)
    assert backup.names(folder) == [second["generation"], first["generation"]]
    # The second generation's checkpoint becomes one of another model, its checksums updated:
    # it passes every file check but cannot restore into this model.
    other = state.TrainingState(_tiny_model(keras, width=5))
    stray = other.save(str(tmp_path / "other"), epoch=2)
    newest = backup.read(folder, second["generation"])
    for name in stray["files"]:
        shutil.copy(os.path.join(tmp_path, "other", stray["generation"], name), newest.file(name))
    backup.commit(newest, {k: v for k, v in newest.state.items() if k not in ("files", "generation")})
    assert len(backup.scan(folder).usable) == 2

    fresh = _tiny_model(keras)
    lines = []
    restored = state.TrainingState(fresh).restore(folder, log=lines.append)
    assert restored["epoch"] == 1
    for variable, value in zip(fresh.weights, kept, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    (line,) = lines
    assert line.startswith(f"backup in {folder} is damaged ({second['generation']}: does not restore (")
    assert line.endswith(f"): resuming from {first['generation']}")

    # With the first generation gone too, nothing restores: the model keeps its initial values.
    shutil.rmtree(os.path.join(folder, first["generation"]))
    fresh = _tiny_model(keras)
    initial = [v.numpy().copy() for v in fresh.weights + fresh.optimizer.variables]
    lines = []
    assert state.TrainingState(fresh).restore(folder, log=lines.append) is None
    for variable, value in zip(fresh.weights + fresh.optimizer.variables, initial, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    assert len(lines) == 1 and lines[0].endswith(": starting over")


def test_save_keeps_the_previous_generation_and_deletes_older_ones(tmp_path):
    import keras

    from trainer import state

    folder = str(tmp_path / "backup")
    saver = state.TrainingState(_tiny_model(keras))
    written = [saver.save(folder, epoch=epoch)["generation"] for epoch in range(1, 5)]
    assert written == ["gen-000001", "gen-000002", "gen-000003", "gen-000004"]
    assert backup.names(folder) == ["gen-000004", "gen-000003"]
    # A half-written generation (no state.json) is ignored, then numbered past and pruned.
    os.makedirs(os.path.join(folder, "gen-000005"))
    assert state.read_state(folder)["generation"] == "gen-000004"
    assert saver.save(folder, epoch=5)["generation"] == "gen-000006"
    assert backup.names(folder) == ["gen-000006", "gen-000004"]
    with open(os.path.join(folder, "gen-000006", "state.json")) as f:
        saved = json.load(f)
    assert set(saved["files"]) == {"ckpt.index", "ckpt.data-00000-of-00001"}


def test_mirror_uploads_state_last_and_deletes_pruned_generations(gcs_bucket, tmp_path, monkeypatch):
    from google.cloud.storage import Blob

    from contracts import mirror, storage

    folder_mirror = mirror.Mirror(f"gs://{gcs_bucket}/job", staging_root=str(tmp_path))
    files = ("ckpt.index", "ckpt.data-00000-of-00001", "state.json")  # in the order they are written
    for generation in ("gen-000001", "gen-000002"):
        folder = os.path.join(folder_mirror.local, "backup", generation)
        os.makedirs(folder)
        for name in files:
            with open(os.path.join(folder, name), "w") as f:
                f.write(name)
    uploaded, upload = [], Blob.upload_from_filename

    def recording(blob, *args, **kwargs):
        uploaded.append(blob.name.removeprefix("job/backup/"))
        return upload(blob, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_filename", recording)
    assert folder_mirror.upload() == 6
    assert uploaded == [
        f"{generation}/{name}" for generation in ("gen-000001", "gen-000002") for name in files
    ]
    backup.prune(os.path.join(folder_mirror.local, "backup"), keep={"gen-000002"})
    assert folder_mirror.upload() == 0
    names = sorted(blob.name for blob in storage.gcs_client().list_blobs(gcs_bucket))
    assert names == sorted(f"job/backup/gen-000002/{name}" for name in files)


# ------------------------------------------------------------------------------ divergence


@tiers.long("a trainer run that diverges")
def test_diverging_run_stops_keeps_the_last_good_backup_and_exports_nothing(sample_records, tmp_path):
    data_dir, _ = sample_records
    job = str(tmp_path / "job")
    folder = os.path.join(job, "backup")
    # Real flags only: SGD at 20 multiplies the loss by ~100 a step on the sample data; around
    # step 10 the batch-norm statistics, then the loss, overflow: before the first epoch ends,
    # with a backup every 2 steps before that.
    args = helpers.quick_args(data_dir, job, 2, "--steps-per-epoch", "16", "--learning-rate", "20")
    args += ["--optimizer", "sgd", "--backup-every-steps", "2", "--explain", "false", "--deterministic"]
    args += ["--export", "true"]  # asked for, and still nothing exported
    done = helpers.run_cli(args)
    assert done.returncode == 3, done.stderr[-4000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-4000:]
    print(errors[0])
    match = re.fullmatch(
        r"error: (training loss is (nan|inf|-inf) at|training diverged: \S+ is not finite after) "
        r"epoch 0 step (\d+); "
        rf"the last good backup \(epoch 0 step (\d+)\) is kept in {re.escape(folder)}",
        errors[0],
    )
    assert match, errors[0]
    bad_step, kept_step = int(match.group(3)), int(match.group(4))
    assert 2 <= kept_step <= bad_step + 1 and kept_step % 2 == 0
    assert not os.path.exists(os.path.join(job, "metrics.json"))
    assert not os.path.exists(os.path.join(job, "export", "saved_model.pb"))
    # The backup is intact: the newest generation verifies, holds the position the error
    # named, and its weights are finite.
    found = backup.scan(folder)
    assert found.usable and found.usable[0] is found.generations[0]
    assert (found.usable[0].state["epoch"], found.usable[0].state["step_in_epoch"]) == (0, kept_step)
    model = helpers.build_like_trainer(job, data_dir)
    helpers.read_backup_weights(model, folder)
    assert all(np.isfinite(weight).all() for weight in model.get_weights())


def test_loop_names_the_first_non_finite_step():
    import keras
    import tensorflow as tf

    from trainer import loop

    model = _tiny_model(keras)
    runner = loop.DistributedLoop(
        tf.distribute.get_strategy(), model, model, num_classes=3, global_batch_size=8
    )
    runner._unchecked = [(4, s, tf.constant(v)) for s, v in enumerate([1.0, 2.0, np.inf, np.nan])]
    runner._position = (4, 3)
    with pytest.raises(loop.NonFiniteError, match=r"^training loss is inf at epoch 4 step 2$"):
        runner.check_finite()
    runner.check_finite()  # Checked once: the losses are gone, the weights are finite.
    model.weights[0].assign(np.full(model.weights[0].shape, np.nan, dtype="float32"))
    message = rf"^training diverged: {model.weights[0].path} is not finite after epoch 4 step 3$"
    with pytest.raises(loop.NonFiniteError, match=message):
        runner.check_finite()


def test_variable_check_reads_on_the_host_then_traces(monkeypatch):
    import keras

    from trainer import finite

    monkeypatch.setattr(finite, "HOST_CHECKS", 2)
    weight, later = keras.Variable([1.0, 2.0], name="weight"), keras.Variable([[0.5]], name="later")
    counter = keras.Variable(3, dtype="int64", name="counter")
    check = finite.VariableCheck([weight, counter, later])
    assert check.variables == [weight, later]  # integers are never NaN
    assert [float(check.any_non_finite()) for _ in range(2)] == [0.0, 0.0]
    assert check._traced is None  # the first checks read the variables on the host
    assert float(check.any_non_finite()) == 0.0 and check._traced is not None
    later.assign([[np.inf]])
    assert float(check.any_non_finite()) == 1.0  # the traced check reads the variable anew
    assert check.non_finite_paths() == [later.path]
    fresh = finite.VariableCheck([weight, later])
    assert float(fresh.any_non_finite()) == 1.0 and fresh._traced is None  # the host check sees it too
    weight.assign([np.nan, 1.0])
    assert fresh.non_finite_paths() == [weight.path, later.path]
    assert fresh.non_finite_paths(first_only=True) == [weight.path]


# ------------------------------------------------------------------------------ bad settings


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--learning-rate", "inf", "error: learning_rate must be a finite number, got inf"),
        ("--dropout", "nan", "error: dropout must be a finite number, got nan"),
        ("--min-delta", "-inf", "error: min_delta must be a finite number, got -inf"),
        ("--aux-loss-weight", "1e999", "error: aux_loss_weight must be a finite number, got inf"),
    ],
)
def test_non_finite_setting_is_one_error_line(tmp_path, capsys, flag, value, message):
    from trainer import task

    argv = ["--data-dir", str(tmp_path), "--job-dir", str(tmp_path / "job"), "--arch", "minception"]
    assert task.main([*argv, f"{flag}={value}"]) == 2  # "=": argparse takes a bare -inf for a flag
    assert capsys.readouterr().err.splitlines() == [message]
    assert not os.path.exists(tmp_path / "job")


def test_strict_json_writes_null_for_non_finite_numbers(tmp_path):
    from contracts import jobdir
    from trainer import report

    path = str(tmp_path / "metrics.json")
    report.write_metrics(path, {"loss": float("nan"), "valid": {"top5": np.float32("inf"), "n": np.int64(3)}})
    with open(path) as f:
        text = f.read()
    assert json.loads(text, parse_constant=pytest.fail) == {"loss": None, "valid": {"n": 3, "top5": None}}
    assert jobdir.to_json([1.5, -float("inf")]) == "[1.5, null]"


# ------------------------------------------------------------------------------ output paths


@pytest.fixture
def in_the_way(tmp_path):
    """A file where a folder belongs."""
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return str(path)


@pytest.mark.parametrize("below", [False, True])
def test_trainer_output_folder_that_is_a_file(tmp_path, capsys, in_the_way, below):
    from trainer import task

    job = os.path.join(in_the_way, "job") if below else in_the_way
    argv = ["--data-dir", str(tmp_path), "--job-dir", job, "--arch", "minception"]
    assert task.main(argv) == 2
    expected = f"{in_the_way} is a file, not a folder" if below else "is a file, not a folder"
    assert capsys.readouterr().err.splitlines() == [f"error: --job-dir {job}: {expected}"]


def test_trainer_vertex_output_folder_that_is_a_file(tmp_path, capsys, in_the_way, monkeypatch):
    from trainer import task

    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", in_the_way)
    argv = ["--data-dir", str(tmp_path), "--job-dir", str(tmp_path / "job"), "--arch", "minception"]
    assert task.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: AIP_TENSORBOARD_LOG_DIR {in_the_way}: is a file, not a folder"
    ]


def test_predict_gradcam_folder_below_a_file(tmp_path, capsys, in_the_way):
    from trainer import predict

    target = os.path.join(in_the_way, "panels")
    assert predict.main(["--model", str(tmp_path / "job"), "image.jpg", "--gradcam", target]) == 2
    message = f"error: --gradcam {target}: {in_the_way} is a file, not a folder"
    assert capsys.readouterr().err.splitlines() == [message]


def test_writable_dir_check(tmp_path, monkeypatch):
    from contracts import cli

    cli.check_writable_dir(str(tmp_path / "new" / "deeper"), "--x")  # creatable: fine, not created
    assert not os.path.exists(tmp_path / "new")
    cli.check_writable_dir("gs://bucket/anything", "--x")  # not checked
    cli.check_writable_dir(None, "--x")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # tests run as root: chmod would not do
    with pytest.raises(cli.OutputPathError, match=rf"^--x {tmp_path}/new: {tmp_path} is not writable$"):
        cli.check_writable_dir(str(tmp_path / "new"), "--x")

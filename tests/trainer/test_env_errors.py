"""What the trainer's surroundings can get wrong, each one ``error:`` line and exit code 2 (never a
traceback): a wrong-shaped ``TF_CONFIG``, an ``AIP_*`` output folder that cannot be written, and a job
dir that another live run holds (contracts/lease.py). A dead holder's lease is taken over."""

import json
import os
import socket
import subprocess
import time

import pytest

from contracts import lease, storage
from tests.trainer import helpers
from trainer import config as config_lib
from trainer import distribute, environment, task, train

AIP_VARIABLES = ("AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR")


@pytest.fixture
def plain_env(monkeypatch):
    """One local process outside Vertex AI: no TF_CONFIG, no AIP_* folders."""
    for name in ("TF_CONFIG", *AIP_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _argv(tmp_path, *extra):
    return ["--data-dir", str(tmp_path / "data"), "--arch", "minception", *extra]


def _one_error_line(code, capsys):
    """The message of ``main``'s one ``error:`` line, after checking the exit code and that it is alone."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0].removeprefix("error: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "TF_CONFIG must be a JSON object like "),
        ('"worker"', "TF_CONFIG must be a JSON object like "),
        ('{"cluster": []}', "TF_CONFIG cluster must map task types to address lists, got []"),
        ('{"cluster": {"worker": "host:1"}}', "TF_CONFIG cluster 'worker' must be a list of host:port"),
        ('{"cluster": {"worker": [1, 2]}}', "TF_CONFIG cluster 'worker' must be a list of host:port"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}}', "TF_CONFIG names a cluster but no task"),
        ('{"cluster": {"worker": ["a:1"]}, "task": []}', "TF_CONFIG task must be an object"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "x"}}', "must be an integer"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker"}}', "must be an integer, got null"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": 0, "index": 0}}', "task type must be"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "index 2 is out"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": -1}}', "index -1 is out"),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "'chief' is not in"),
        ('{"cluster": ', "TF_CONFIG is not valid JSON"),
    ],
)
def test_wrong_shaped_tf_config_is_one_error_line(text, message, tmp_path, capsys, plain_env):
    plain_env.setenv("TF_CONFIG", text)
    said = _one_error_line(task.main(_argv(tmp_path, "--job-dir", str(tmp_path / "job"))), capsys)
    assert message in said
    assert not os.path.exists(tmp_path / "job")  # Refused before anything was written.


def test_tf_config_index_as_digits_is_read_as_tensorflow_reads_it(plain_env):
    # TensorFlow reads the index with int(): worker "0" is worker 0, the chief that writes the outputs.
    cluster = {"worker": ["a:1", "b:2"]}
    plain_env.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": "0"}}))
    assert distribute.tf_config()["task"]["index"] == 0
    assert distribute.is_chief()
    plain_env.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": "1"}}))
    assert not distribute.is_chief()


@pytest.mark.parametrize(
    "config",
    [
        # Vertex AI's shape: extra keys, a chief pool.
        {
            "cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]},
            "task": {"type": "worker", "index": 1, "trial": "3"},
            "job": {"worker_pool_specs": []},
            "environment": "cloud",
        },
        {"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}},
        {"cluster": {"chief": ["c:1"], "worker": ["w:1"]}, "task": {"type": "evaluator", "index": 0}},
        {"task": {"type": "worker", "index": 0}},
        {"cluster": {}, "task": {}},
        {},
    ],
)
def test_well_shaped_tf_config_passes_unchanged(config, plain_env):
    plain_env.setenv("TF_CONFIG", json.dumps(config))
    assert distribute.tf_config() == {"cluster": {}, "task": {}, **config}


def test_aip_folder_that_is_a_file_names_the_variable(tmp_path, capsys, plain_env):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("x")
    plain_env.setenv("AIP_CHECKPOINT_DIR", str(in_the_way))
    said = _one_error_line(task.main(_argv(tmp_path, "--job-dir", str(tmp_path / "job"))), capsys)
    assert said == f"AIP_CHECKPOINT_DIR {in_the_way}: is a file, not a folder"


def test_aip_model_dir_that_cannot_be_written_names_the_variable(tmp_path, capsys, plain_env):
    # /proc refuses new folders even to root, for whom every permission check says yes.
    plain_env.setenv("AIP_MODEL_DIR", "/proc/no-such-run/model")
    said = _one_error_line(task.main(_argv(tmp_path)), capsys)  # No --job-dir: AIP_MODEL_DIR is the job dir.
    assert said.startswith("AIP_MODEL_DIR /proc/no-such-run/model: ") and "/proc" in said.split(": ", 1)[1]


def test_aip_folder_in_a_missing_bucket_names_the_variable(gcs_bucket, tmp_path, capsys, plain_env):
    plain_env.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://no-such-bucket-here/tb")
    said = _one_error_line(task.main(_argv(tmp_path, "--job-dir", f"gs://{gcs_bucket}/job")), capsys)
    assert said.startswith("AIP_TENSORBOARD_LOG_DIR gs://no-such-bucket-here/tb: cannot write there (")
    assert storage.list_files(f"gs://{gcs_bucket}", recursive=True) == []  # The job dir's probe is gone.


def test_writable_folders_pass_and_nothing_stays_behind(gcs_bucket, tmp_path):
    environ = {"AIP_CHECKPOINT_DIR": f"gs://{gcs_bucket}/ckpt", "AIP_TENSORBOARD_LOG_DIR": f"{tmp_path}/tb"}
    (tmp_path / "job").mkdir()
    config = config_lib.TrainConfig(
        data_dir="d", job_dir=str(tmp_path / "job"), arch="minception", **environment.values(environ)
    )
    labels = [label for label, _ in environment.output_folders(config, environ)]
    named = ["--job-dir", "AIP_TENSORBOARD_LOG_DIR", "AIP_CHECKPOINT_DIR"]  # By the flag, by the variables.
    assert labels == [*named, "backup_dir", "export_dir"]
    environment.check_outputs(config, environ)
    assert storage.list_files(f"gs://{gcs_bucket}", recursive=True) == []
    assert sorted(os.listdir(tmp_path)) == ["job"] and os.listdir(tmp_path / "job") == []


def _lease_of(job, pid, host=None, heartbeat_age=0.0):
    """Writes the lease a run with ``pid`` on ``host`` (this one by default) holds."""
    now = time.time()
    holder = {
        "host": host or socket.gethostname(),
        "pid": pid,
        "token": "f" * 32,
        "since": now - 60,
        "heartbeat": now - heartbeat_age,
    }
    os.makedirs(job, exist_ok=True)
    storage.write_bytes(lease.lease_uri(job), json.dumps(holder).encode())
    return holder


def test_job_dir_held_by_a_live_run_is_refused_in_process(tmp_path, capsys, plain_env):
    job = str(tmp_path / "job")
    holder = _lease_of(job, os.getppid())  # The test's parent process: alive, not this one.
    said = _one_error_line(task.main(_argv(tmp_path, "--job-dir", job)), capsys)
    expected = lease.describe(holder).rsplit(", last heartbeat", 1)[0]
    assert said.startswith(f"job dir {job} is in use by another run ({expected}, last heartbeat ")
    assert os.listdir(job) == [lease.LEASE_FILE]  # Nothing of the refused run.


def test_job_dir_held_by_a_live_run_is_refused_by_the_cli_process(tmp_path):
    """The real ``python -m trainer.task``: one line naming host, pid and since; exit 2; no traceback."""
    job = str(tmp_path / "job")
    holder = subprocess.Popen(["sleep", "120"])  # A live process on this host holds the job dir.
    try:
        _lease_of(job, holder.pid)
        proc = helpers.run_cli(_argv(tmp_path, "--job-dir", job), timeout=300)
    finally:
        holder.kill()
        holder.wait(timeout=30)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(errors) == 1, proc.stderr[-2000:]
    in_use = f"error: job dir {job} is in use by another run (host {socket.gethostname()}, pid {holder.pid}, "
    assert errors[0].startswith(in_use + "since "), errors[0]


def test_lease_of_a_dead_run_is_taken_over_with_one_warning_and_given_back_on_error(
    tmp_path, capsys, plain_env
):
    job = str(tmp_path / "job")
    with open("/proc/sys/kernel/pid_max") as f:
        dead = _lease_of(job, int(f.read()))  # No process has a pid of pid_max.
    # The data dir is missing: the run that took the lease over fails, and gives the lease back.
    code = task.main(_argv(tmp_path, "--job-dir", job))
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1].startswith("error: ") and "metadata" in err.splitlines()[-1]
    said = helpers.warnings(err)
    assert len(said) == 1 and said[0].startswith("took over the job dir's lease from a run that is gone")
    assert f"pid {dead['pid']}, " in said[0]
    assert not os.path.exists(lease.lease_uri(job))


def test_a_preempted_run_gives_the_lease_back_and_workers_take_none(tmp_path, plain_env):
    config = config_lib.TrainConfig(data_dir="d", job_dir=str(tmp_path / "job"), arch="minception")
    seen = []

    @distribute.holding_job_dir_lease(warn=seen.append)
    def run(config):
        seen.append(os.path.exists(lease.lease_uri(config.job_dir)))
        raise train.Preempted("stopped at epoch 1 step 2")

    with pytest.raises(train.Preempted):
        run(config)
    assert seen == [True] and not os.path.exists(lease.lease_uri(config.job_dir))
    cluster = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    plain_env.setenv("TF_CONFIG", json.dumps(cluster))
    with pytest.raises(train.Preempted):
        run(config)
    assert seen == [True, False]  # Worker 1 shares the chief's job dir without a lease.

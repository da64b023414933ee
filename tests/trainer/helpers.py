"""Helpers of the trainer tests: run the CLI in a subprocess, free ports, wait for files,
a real TensorBoard server."""

import contextlib
import csv
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.request

from contracts import voice
from tests.conftest import free_port

# tests/trainer/helpers.py -> the repository root (three levels up).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A run small enough for CI: a few steps of a tiny batch. Early stopping and the best
# model watch every epoch (minception's default warm-up is longer than these runs).
QUICK = ["--arch", "minception", "--batch-size", "8", "--steps-per-epoch", "2", "--validation-steps", "1"]
QUICK += ["--monitor-start-epoch", "0"]
# Most tests read metrics.json and model.keras; the export (three traced signatures, about a
# quarter of a quick run) only where a test checks it: they pass "--export", "true".
QUICK += ["--export", "false"]
# The precise batch-norm pass (a traced probe of every batch-norm input, before each validation) and
# the temperature fit cost a quick run about 15 of its 50 s: only tests that check them, or that stand
# for a default run, turn them back on with FINAL_STAGES.
QUICK += ["--precise-bn", "0", "--calibration", "none"]
# The trainer's defaults for the stages QUICK turns off (after QUICK, the last flag wins).
FINAL_STAGES = ["--precise-bn", "auto", "--calibration", "temperature"]


def quick_args(data_dir, job_dir, epochs, *extra):
    """The flags of a :data:`QUICK` run of ``epochs`` epochs; ``extra`` flags override them."""
    return ["--data-dir", data_dir, "--job-dir", job_dir, *QUICK, "--epochs", str(epochs), *extra]


def warnings(text, command="trainer"):
    """The messages of ``command``'s warning lines in ``text`` (``HH:MM:SS trainer: warning: ...``)."""
    found = []
    for line in text.splitlines():
        match = voice.LINE_PATTERN.fullmatch(line)
        if match and match.group(2) == command and match.group(3).startswith("warning: "):
            found.append(match.group(3).removeprefix("warning: "))
    return found


def cli_env(**extra):
    """The environment of a trainer subprocess."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def run_cli(args, timeout=400, **env):
    """Runs ``python -m trainer.task`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "trainer.task", *args],
        capture_output=True,
        text=True,
        env=cli_env(**env),
        cwd=ROOT,
        timeout=timeout,
    )


def run_script(source, *args, timeout=300):
    """Runs a Python ``source`` text in a fresh interpreter (its own TensorFlow runtime, so it can
    ask for logical devices) with ``args`` as ``sys.argv[1:]``; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source), *args],
        capture_output=True,
        text=True,
        env=cli_env(),
        cwd=ROOT,
        timeout=timeout,
    )


def start_cli(args, log_path, **env):
    """Starts ``python -m trainer.task`` in the background, output to ``log_path``."""
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.task", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=cli_env(**env),
        cwd=ROOT,
    )


def mid_epoch_backup(backup_dir, after=(1, 0)):
    """A :func:`wait_for` predicate: the backup holds a mid-epoch state later than ``after``.

    ``after`` is ``(epoch, step_in_epoch)``; the default waits for any mid-epoch state of epoch 1 on.
    """
    from trainer import state

    def saved_later():
        saved = state.read_state(backup_dir)
        position = None if saved is None else (saved["epoch"], saved["step_in_epoch"])
        return position is not None and position > tuple(after) and position[1] > 0

    return saved_later


def wait_for(predicate, timeout, proc=None, interval=0.2):
    """Polls ``predicate`` until true; fails when ``proc`` exits first or on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(interval)
    return False


def tail(path, chars=3000):
    """Returns the end of a log file (for assertion messages)."""
    with open(path) as f:
        return f.read()[-chars:]


def http_json(url, body=None, timeout=10):
    """GETs ``url`` (or POSTs ``body`` as JSON) and returns the parsed JSON answer."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def tensorboard_server(logdir):
    """Runs a real TensorBoard server on ``logdir``; yields its ``/data/plugin`` base URL."""
    port = free_port()
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--reload_interval", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        yield proc, f"http://127.0.0.1:{port}/data/plugin"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def read_job_json(job_dir, name):
    """Returns the parsed JSON file ``name`` of a job dir."""
    with open(os.path.join(job_dir, name)) as f:
        return json.load(f)


def read_history(job_dir):
    """Returns the rows of a job dir's ``history.csv``."""
    with open(os.path.join(job_dir, "history.csv"), newline="") as f:
        return list(csv.DictReader(f))


def build_like_trainer(job_dir, data_dir):
    """Builds the model of a job dir as the trainer built it: its config.json, the dataset's classes.

    The weights are the seeded initial ones the run started from.
    """
    from contracts import dataset
    from trainer import config as config_lib
    from trainer import models, train

    config = config_lib.from_dict(read_job_json(job_dir, "config.json"))
    info = dataset.load_metadata(data_dir)
    options = train.model_build_options(config, models.get_defaults(config.arch), info.image_size)
    return models.build_model(config.arch, info.num_classes, seed=config.seed, **options)


def newest_generation(backup_dir):
    """Returns ``(folder, state)`` of the newest complete generation of a backup/plateau folder.

    Read independently of trainer.backup: the newest ``gen-NNNNNN`` folder holding a
    ``state.json``; ``(None, None)`` when there is none (yet).
    """
    if not os.path.isdir(backup_dir):
        return None, None
    for name in sorted((n for n in os.listdir(backup_dir) if n.startswith("gen-")), reverse=True):
        folder = os.path.join(backup_dir, name)
        try:
            return folder, read_job_json(folder, "state.json")
        except (OSError, ValueError):
            continue
    return None, None


def read_backup_weights(model, backup_dir):
    """Loads the model weights of a backup/plateau folder's newest generation into ``model``.

    Returns:
        That generation's state.json.
    """
    import tensorflow as tf

    folder, state = newest_generation(backup_dir)
    # The generation's own checkpoint, read independently of trainer.state.
    tf.train.Checkpoint(model=model).read(os.path.join(folder, state["checkpoint"])).expect_partial()
    return state


def snapshot(model):
    """Returns ``variable path -> numpy copy`` of every weight of ``model``."""
    return {variable.path: variable.numpy().copy() for variable in model.weights}


def two_head_model(num_classes, inputs=3):
    """A tiny compiled model with a main and an auxiliary softmax head, as Inception v1 has."""
    import keras

    features = keras.Input((inputs,))
    hidden = keras.layers.Dense(5, activation="relu")(features)
    main = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(hidden)
    aux = keras.layers.Dense(num_classes, activation="softmax", name="aux1_predictions")(hidden)
    model = keras.Model(features, {"predictions": main, "aux1_predictions": aux})
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    return model

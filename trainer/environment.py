"""What the launcher's environment gives a run: Vertex AI's ``AIP_*`` output folders and tuning tag,
and the check that every output folder can be written before anything trains.

Vertex AI passes the output folders as variables, not flags, so a folder that
cannot be written is named by its variable (``AIP_CHECKPOINT_DIR gs://b/ckpt:
...``): that is what the user has to look at (deploy/'s ``--job-dir``, the
job's base output directory).
"""

import os
import tempfile
import uuid

from contracts import cli, jobdir, storage

# Vertex AI's variable -> the TrainConfig field it sets. AIP_CHECKPOINT_DIR also holds backup/,
# AIP_MODEL_DIR is also the job dir when --job-dir is absent.
FOLDER_VARIABLES = {
    "AIP_TENSORBOARD_LOG_DIR": "log_dir",
    "AIP_CHECKPOINT_DIR": "checkpoint_dir",
    "AIP_MODEL_DIR": "export_dir",
}
JOB_DIR_VARIABLE = "AIP_MODEL_DIR"
PROBE_PREFIX = ".write-probe-"


def values(environ):
    """Returns the output folders and tuning tag the environment supplies (Vertex AI)."""
    found = {field: environ[name] for name, field in FOLDER_VARIABLES.items() if environ.get(name)}
    if "checkpoint_dir" in found:
        found["backup_dir"] = found["checkpoint_dir"].rstrip("/") + "/" + jobdir.FOLDERS["backup"]
    tag = environ.get("CLOUD_ML_HP_METRIC_TAG")
    if tag or environ.get("CLOUD_ML_TRIAL_ID"):
        found["hypertune_metric"] = tag or "accuracy"
    return found


def output_folders(config, environ):
    """Returns ``[(label, folder)]`` of the run's output folders, each labelled by what named it.

    The label is the ``AIP_*`` variable when the folder is that variable's
    value, else the flag or setting (``--job-dir``, ``log_dir``, ...).
    """
    labels = {
        field: name
        for name, field in FOLDER_VARIABLES.items()
        if environ.get(name) and environ[name] == getattr(config, field)
    }
    job_label = "--job-dir"
    if environ.get(JOB_DIR_VARIABLE) and environ[JOB_DIR_VARIABLE] == config.job_dir:
        job_label = JOB_DIR_VARIABLE
    folders = [(job_label, config.job_dir)]
    for field in ("log_dir", "checkpoint_dir", "backup_dir", "export_dir"):
        folders.append((labels.get(field, field), getattr(config, field)))
    folders.append(("--debug-dump-weights", config.debug_dump_weights))
    return [(label, folder) for label, folder in folders if folder]


def check_outputs(config, environ):
    """Refuses output folders that cannot be written, before anything trains.

    Each folder is checked as :func:`contracts.cli.check_writable_dir` does (a
    file in the way, no write permission), then really written: a temporary
    folder made and removed in its nearest existing ancestor (as root every
    permission check says yes, yet ``/proc`` or a read-only mount refuse), or
    for ``gs://`` an empty probe object written and deleted (a missing bucket,
    no permission). Nothing stays behind. A ``gs://`` folder inside one already
    probed is not probed again.

    Raises:
        contracts.cli.OutputPathError: Naming the variable or flag and the folder.
    """
    probed = []
    for label, folder in output_folders(config, environ):
        cli.check_writable_dir(folder, label)
        if storage.is_gcs(folder):
            if not any(folder.rstrip("/").startswith(done.rstrip("/") + "/") for done in probed):
                _probe_gcs(folder, label)
                probed.append(folder)
        else:
            _probe_local(folder, label)


def _probe_local(folder, label):
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=PROBE_PREFIX, dir=existing))
    except OSError as error:
        reason = error.strerror or str(error)
        message = f"{label} {folder}: cannot create a folder in {existing} ({reason})"
        raise cli.OutputPathError(message) from None


def _probe_gcs(folder, label):
    try:
        probe = storage.join(folder, f"{PROBE_PREFIX}{uuid.uuid4().hex}")
        storage.write_bytes(probe, b"")
        storage.delete([probe])
    except (OSError, ValueError) as error:
        raise cli.OutputPathError(f"{label} {folder}: cannot write there ({error})") from None

"""A cloud job's run: ``python -m trainer.task`` as Vertex AI and GKE start it, in one process.

A ``gs://`` job dir in the GCS emulator (as every cloud job has), Vertex AI's environment (its
TensorBoard folder, the hyperparameter-tuning metric file), and GKE's read-only root file system
(tests/deploy/test_gke_security.py checks the manifests): the run happens inside a mount namespace
whose root is remounted read-only, with only the two scratch folders writable (``unshare``, no
privileges needed). Where the kernel refuses user namespaces the same run happens on the
ordinary root, and only the read-only check skips.
"""

import csv
import json
import shutil
import subprocess
import sys

import pytest

from contracts import storage
from deploy import gke
from tests import tiers
from tests.trainer import helpers

# In a user + mount namespace: the scratch folders become mounts of their own (left writable), then the
# root is remounted read-only; a write outside the scratch must fail before the trainer starts.
READ_ONLY_ROOT = """
for folder in "$TMPDIR" "$HOME"; do mount --bind "$folder" "$folder" || exit 90; done
mount -o remount,bind,ro / || exit 91
touch "$OUTSIDE" 2>/dev/null && exit 92
exec "$@"
"""
UNSHARE = ["unshare", "--user", "--map-root-user", "--mount"]


def _namespaces_allowed():
    if shutil.which("unshare") is None:
        return False
    return subprocess.run([*UNSHARE, "true"], capture_output=True, timeout=30, check=False).returncode == 0


@pytest.fixture(scope="module")
@tiers.long("a trainer run on a read-only root file system, into the GCS emulator")
def cloud_run(sample_records, gcs_emulator, tmp_path_factory):
    """Returns a dict: ``bucket``, ``job`` and ``logs`` (prefixes in it), ``metric_file``, ``outside``
    (a path the run must not create) and ``read_only`` (whether the root was read-only)."""
    data_dir, _ = sample_records
    folder = tmp_path_factory.mktemp("cloud-run")
    bucket = "cloud-run"
    storage.gcs_client().create_bucket(bucket)
    scratch = {name: folder / name for name in gke.SCRATCH_VOLUMES}
    for path in scratch.values():
        path.mkdir()
    found = {"bucket": bucket, "job": "runs/a", "logs": "tensorboard/a", "outside": folder / "outside"}
    found["metric_file"] = scratch["tmp"] / "hypertune" / "output.metrics"
    found["read_only"] = _namespaces_allowed()
    env = helpers.cli_env(
        HOME=str(scratch["home"]),
        TMPDIR=str(scratch["tmp"]),
        OUTSIDE=str(found["outside"]),
        AIP_TENSORBOARD_LOG_DIR=f"gs://{bucket}/{found['logs']}",
        CLOUD_ML_HP_METRIC_TAG="val_acc",
        CLOUD_ML_HP_METRIC_FILE=str(found["metric_file"]),
    )
    command = [sys.executable, "-m", "trainer.task"]
    if found["read_only"]:
        command = [*UNSHARE, "sh", "-c", READ_ONLY_ROOT, "sh", *command]
    # Every stage that writes (the reliability diagram, the export) writes nowhere but the bucket.
    command += helpers.quick_args(data_dir, f"gs://{bucket}/{found['job']}", 2, "--export", "true")
    command += helpers.FINAL_STAGES
    proc = subprocess.run(
        command, cwd=scratch["home"], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-4000:])
    return found


def _blobs(run):
    client = storage.gcs_client()
    return client.bucket(run["bucket"]), {blob.name for blob in client.list_blobs(run["bucket"])}


def test_the_trainer_runs_on_a_read_only_root_writing_only_its_scratch(cloud_run):
    if not cloud_run["read_only"]:
        pytest.skip("this kernel refuses unprivileged user and mount namespaces")
    assert not cloud_run["outside"].exists()
    _, names = _blobs(cloud_run)
    for name in ("config.json", "metrics.json", "model.keras", "export/saved_model.pb"):
        assert f"{cloud_run['job']}/{name}" in names, sorted(names)


def test_gcs_job_dir_and_vertex_environment(cloud_run):
    bucket, names = _blobs(cloud_run)
    job, logs = cloud_run["job"], cloud_run["logs"]
    for name in ("config.json", "metrics.json", "model.keras", "history.csv", "export/saved_model.pb"):
        assert f"{job}/{name}" in names, sorted(names)
    assert any(n.startswith(f"{logs}/validation/events.out") for n in names)
    assert not any(n.startswith(f"{job}/backup/") for n in names)
    metrics = json.loads(bucket.blob(f"{job}/metrics.json").download_as_text())
    history = list(csv.DictReader(bucket.blob(f"{job}/history.csv").download_as_text().splitlines()))
    reported = [json.loads(line) for line in cloud_run["metric_file"].read_text().splitlines()]
    # Each epoch's validation accuracy at steps 1..N, then the final evaluation's at N + 1.
    assert [line["global_step"] for line in reported] == ["1", "2", "3"]
    per_epoch = [float(line["val_acc"]) for line in reported[:-1]]
    assert per_epoch == pytest.approx([float(row["val_accuracy"]) for row in history], rel=1e-5)
    assert float(reported[-1]["val_acc"]) == pytest.approx(metrics["valid"]["accuracy"])

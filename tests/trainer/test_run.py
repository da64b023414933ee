"""End-to-end runs of ``python -m trainer.task``: mirrored over 2 logical CPUs, outputs,
export, TensorBoard (a cluster: tests/trainer/test_multi_worker.py; a gs:// job dir in Vertex AI's
environment: tests/deploy/test_cloud_run.py)."""

import csv
import json
import os

import numpy as np
import pytest

from tests import tiers
from tests.trainer import helpers


@pytest.fixture(scope="module")
@tiers.long("a mirrored run on two logical devices, exported")
def mirrored_run(sample_records, tmp_path_factory):
    """One mirrored run over 2 logical CPU devices; returns ``(job_dir, data_dir, proc)``."""
    data_dir, _ = sample_records
    job = str(tmp_path_factory.mktemp("mirrored") / "job")
    args = helpers.quick_args(
        data_dir, job, 2, "--num-cpu-devices", "2", "--export", "true", *helpers.FINAL_STAGES
    )
    # An option whose all-reduce only a strategy with replicas exercises, and the soft-target loss.
    # Not --sync-bn: it doubles this run's first step (one cross-replica merge per batch-norm
    # layer while tracing), and test_optimizers checks it on two replicas numerically.
    args += ["--clip-norm", "5", "--label-smoothing", "0.1"]
    proc = helpers.run_cli(args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return job, data_dir, proc


def test_mirrored_outputs(mirrored_run):
    job, _, _ = mirrored_run
    with open(os.path.join(job, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["replicas"] == 2 and metrics["strategy"] == "mirrored"
    assert metrics["arch"] == "minception" and metrics["num_classes"] == 5
    assert metrics["epochs_completed"] == 2 and metrics["best_epoch"] in (0, 1)
    for split in ("valid", "test"):
        assert set(metrics[split]) >= {"loss", "accuracy", "top5_accuracy"}
        assert 0.0 <= metrics[split]["accuracy"] <= metrics[split]["top5_accuracy"] <= 1.0
    assert metrics["test"]["count"] == 40  # every test record evaluated exactly once over 2 replicas
    with open(os.path.join(job, "config.json")) as f:
        config = json.load(f)
    assert config["num_cpu_devices"] == 2 and config["batch_size"] == 8 and config["policy"] == "crop"
    with open(os.path.join(job, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"loss", "val_loss", "val_accuracy", "learning_rate"} <= set(rows[0])
    with open(os.path.join(job, "per_class_accuracy.csv")) as f:
        per_class = list(csv.DictReader(f))
    assert len(per_class) == 5 and all(row["name"] and row["wnid"] for row in per_class)
    assert [int(r["count"]) for r in per_class] == [8] * 5  # the sample's 8 val images per class
    correct = sum(int(r["correct"]) for r in per_class)
    assert correct / 40 == pytest.approx(metrics["test"]["accuracy"])
    for row in per_class:
        assert float(row["accuracy"]) == pytest.approx(int(row["correct"]) / 8, abs=1e-6)
    assert not os.path.exists(os.path.join(job, "backup")), "backup must be deleted after success"
    with open(os.path.join(job, "classes.json")) as f:
        classes = json.load(f)
    assert [c["index"] for c in classes] == list(range(5)) and all(c["name"] for c in classes)


def test_best_model_file_loads(mirrored_run):
    import keras

    from trainer import models  # noqa: F401 - registers the custom layers

    job, _, _ = mirrored_run
    model = keras.models.load_model(os.path.join(job, "model.keras"))
    assert len(model.outputs) == 1 and model.output_shape == (None, 5)


def test_export_serves_jpeg_bytes(mirrored_run, sample_raw):
    import tensorflow as tf

    job, data_dir, _ = mirrored_run
    raw_dir, info = sample_raw
    names = sorted(info["val"])[:3]
    images = [open(os.path.join(raw_dir, "val", "images", n), "rb").read() for n in names]
    loaded = tf.saved_model.load(os.path.join(job, "export"))
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    assert out["names"].shape == (3, 5) and out["wnids"].shape == (3, 5)
    with open(os.path.join(data_dir, "metadata.json")) as f:
        classes = {c["name"] for c in json.load(f)["classes"]}
    assert {n.decode() for n in out["names"].numpy().ravel()} <= classes
    probabilities = out["probabilities"].numpy()
    assert np.all(np.diff(probabilities, axis=1) <= 1e-6)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


@pytest.fixture(scope="module")
def tensorboard(mirrored_run):
    """A real TensorBoard server on the mirrored job's parent folder, as when runs are compared.

    Yields ``(base_url, prefix)``: runs are named ``prefix + "train"`` and so on.
    """
    job, _, _ = mirrored_run
    with helpers.tensorboard_server(os.path.dirname(job)) as (proc, base):
        assert helpers.wait_for(lambda: _runs_listed(base), 120, proc), "TensorBoard did not load the logs"
        yield base, f"{os.path.basename(job)}/logs/"


def _runs_listed(base):
    try:
        runs = helpers.http_json(f"{base}/scalars/tags")
    except OSError:
        return False
    return any(run.endswith("logs/validation") for run in runs)


def test_tensorboard_serves_scalars_and_images(tensorboard):
    base, prefix = tensorboard
    scalars, images = {}, {}

    def loaded():
        nonlocal scalars, images
        try:
            scalars = helpers.http_json(f"{base}/scalars/tags")
            images = helpers.http_json(f"{base}/images/tags")
        except OSError:
            return False
        return all(f"{prefix}{run}" in images for run in ("evaluation", "train"))

    assert helpers.wait_for(loaded, 120), (scalars, images)
    for run in ("train", "validation"):
        assert {"epoch_loss", "epoch_accuracy", "epoch_top5_accuracy"} <= set(scalars[f"{prefix}{run}"])
    assert "epoch_learning_rate" in scalars[f"{prefix}train"]
    assert "confusion_matrix/test" in images[f"{prefix}evaluation"]
    assert "augmented" in images[f"{prefix}train"]


# The request bodies TensorBoard's HParams dashboard posts.
_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
_SESSION_GROUPS = {
    "experimentName": "",
    "allowedStatuses": _STATUSES,
    "colParams": [],
    "startIndex": 0,
    "sliceSize": 100,
}


def test_tensorboard_hparams_match_the_job(tensorboard, mirrored_run):
    """The HParams dashboard's data API: this run's hyperparameters and final validation metrics."""
    base, _ = tensorboard
    job, _, _ = mirrored_run
    config = helpers.read_job_json(job, "config.json")
    groups = {}

    def loaded():
        nonlocal groups
        try:
            groups = helpers.http_json(f"{base}/hparams/session_groups", _SESSION_GROUPS)
        except OSError:
            return False
        return bool(groups.get("sessionGroups")) and groups["sessionGroups"][0]["metricValues"]

    assert helpers.wait_for(loaded, 120), groups
    [group] = groups["sessionGroups"]
    assert group["name"] == config["job_dir"]
    hparams = group["hparams"]
    assert {"arch", "learning_rate", "batch_size", "optimizer", "epochs", "dropout", "policy"} <= set(hparams)
    for name, value in hparams.items():
        expected = config[name]
        if name in ("dropout", "aux_dropout") and expected is None:
            expected = -1.0  # the dashboard's "architecture default"
        if name == "precise_bn" and expected is None:
            expected = -1  # the dashboard's "auto"
        assert value == expected, name
    experiment = helpers.http_json(f"{base}/hparams/experiment", {"experimentName": ""})
    assert sorted(info["name"] for info in experiment["hparamInfos"]) == sorted(hparams)
    # Final validation metrics of the session equal the last history.csv row.
    with open(os.path.join(job, "history.csv")) as f:
        last = list(csv.DictReader(f))[-1]
    values = {(m["name"]["group"], m["name"]["tag"]): m for m in group["metricValues"]}
    for tag in ("loss", "accuracy"):
        metric = values[("validation", f"epoch_{tag}")]
        assert metric["trainingStep"] == int(last["epoch"])
        assert metric["value"] == pytest.approx(float(last[f"val_{tag}"]), rel=1e-5)
    # ...and the final evaluation's metrics, so runs of different recipes compare on test accuracy.
    final = {
        m["name"]["tag"]: m["value"] for m in group["metricValues"] if m["name"]["tag"].startswith("final/")
    }
    metrics = helpers.read_job_json(job, "metrics.json")
    for split in ("valid", "test"):
        for name in ("accuracy", "top5_accuracy", "loss"):
            assert final[f"final/{split}_{name}"] == pytest.approx(metrics[split][name], rel=1e-6), (
                split,
                name,
            )
    assert hparams["label_smoothing"] == 0.1 and hparams["clip_norm"] == 5

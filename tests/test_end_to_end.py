"""The demo's flow at a smaller size: scripts/demo.sh itself, then every stage's outputs.

raw folder -> Beam job -> TFRecords -> trainer (three architectures) -> Grad-CAM
-> summary table, exactly as `make demo` runs it.
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from contracts import schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("minception", "inception_v1", "inception_resnet_v2")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": ROOT,
        "DEMO_CLASSES": "4",
        "DEMO_TRAIN_PER_CLASS": "120",
        "DEMO_VAL_PER_CLASS": "10",
        "DEMO_MINCEPTION_EPOCHS": "10",
        "DEMO_EXPLAIN_IMAGES": "8",
    }
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "demo.sh"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_raw_dataset_and_records(demo_run):
    out, _ = demo_run
    assert len((out / "raw" / "wnids.txt").read_text().split()) == 4
    metadata = json.loads((out / "data" / schema.METADATA_FILE).read_text())
    counts = {split: metadata["splits"][split]["count"] for split in ("train", "valid", "test")}
    assert counts["train"] + counts["valid"] == 4 * 120 and counts["test"] == 4 * 10
    assert metadata["rejected"]["count"] == 0 and len(metadata["classes"]) == 4
    shards = [str(out / "data" / name) for name in metadata["splits"]["test"]["shards"]]
    labels = [schema.decode_example(r.numpy())["label"] for r in tf.data.TFRecordDataset(shards)]
    assert sorted(labels) == sorted(list(range(4)) * 10)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_trained_and_explained(demo_run, arch):
    out, _ = demo_run
    job = out / "jobs" / arch
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["arch"] == arch and metrics["num_classes"] == 4
    assert 0.0 <= metrics["test"]["accuracy"] <= metrics["test"]["top5_accuracy"] <= 1.0
    for name in ("model.keras", "config.json", "history.csv", "per_class_accuracy.csv", "classes.json"):
        assert (job / name).is_file(), name
    assert (job / "export" / "saved_model.pb").is_file()
    explain = json.loads((job / "logs" / "explain" / "explain.json").read_text())
    assert explain["n"] > 0 and 0.0 <= explain["pointing_game"]["hit_rate"] <= 1.0
    assert list((out / "gradcam" / arch).glob("*.png")), "Grad-CAM grids written as PNG"


@pytest.mark.slow
def test_minception_learns_and_summary_table(demo_run):
    out, stdout = demo_run
    metrics = json.loads((out / "jobs" / "minception" / "metrics.json").read_text())
    assert metrics["epochs_completed"] <= 10
    assert metrics["test"]["accuracy"] > 0.5, "10 epochs on 4 shape classes clearly beat chance (0.25)"
    table = stdout[stdout.index("architecture") :]
    for arch in ARCHS:
        assert arch in table
    assert f"tensorboard --logdir {out / 'jobs'}" in stdout

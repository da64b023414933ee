"""The demo's flow at a smaller size: scripts/demo.sh itself, then every stage's outputs.

raw folder -> Beam job -> TFRecords -> trainer (three architectures) -> Grad-CAM
-> summary table, exactly as `make demo` runs it.
"""

import csv
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from contracts import schema
from tests import tiers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("minception", "inception_v1", "inception_resnet_v2")
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, MINCEPTION_EPOCHS = 4, 60, 6, 5
# At these sizes the module took 7.5 minutes on a busy 2-core machine (more beside another test
# worker: make test runs two), most of it the demo_run fixture: room for a slower machine.
DEMO_TIMEOUT = 2000
pytestmark = pytest.mark.timeout(DEMO_TIMEOUT + 300)


@pytest.fixture(scope="module")
@tiers.long("the demo: three architectures trained and explained")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    env = {
        **os.environ,
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": ROOT,
        "DEMO_CLASSES": str(CLASSES),
        "DEMO_TRAIN_PER_CLASS": str(TRAIN_PER_CLASS),
        "DEMO_VAL_PER_CLASS": str(VAL_PER_CLASS),
        "DEMO_MINCEPTION_EPOCHS": str(MINCEPTION_EPOCHS),
        "DEMO_EXPLAIN_IMAGES": "8",
    }
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "demo.sh"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=DEMO_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def _test_labels(out):
    """Returns the dataset's metadata and the labels of its test records, read back with TensorFlow."""
    metadata = json.loads((out / "data" / schema.METADATA_FILE).read_text())
    shards = [str(out / "data" / name) for name in metadata["splits"]["test"]["shards"]]
    return metadata, [schema.decode_example(r.numpy())["label"] for r in tf.data.TFRecordDataset(shards)]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_raw_dataset_and_records(demo_run):
    out, _ = demo_run
    assert len((out / "raw" / "wnids.txt").read_text().split()) == 4
    metadata, labels = _test_labels(out)
    counts = {split: metadata["splits"][split]["count"] for split in ("train", "valid", "test")}
    assert counts["train"] + counts["valid"] == CLASSES * TRAIN_PER_CLASS
    assert counts["test"] == CLASSES * VAL_PER_CLASS
    assert metadata["rejected"]["count"] == 0 and len(metadata["classes"]) == CLASSES
    assert sorted(labels) == sorted(list(range(CLASSES)) * VAL_PER_CLASS)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_trained_and_explained(demo_run, arch):
    out, _ = demo_run
    job = out / "jobs" / arch
    metadata, labels = _test_labels(out)
    metrics = json.loads((job / "metrics.json").read_text())
    config = json.loads((job / "config.json").read_text())
    assert metrics["arch"] == config["arch"] == arch and metrics["num_classes"] == 4
    # The final evaluation saw every test record once.
    assert (
        metrics["test"]["count"]
        == metadata["splits"]["test"]["count"]
        == len(labels)
        == CLASSES * VAL_PER_CLASS
    )
    assert metrics["valid"]["count"] == metadata["splits"]["valid"]["count"]
    assert metrics["test"]["top5_accuracy"] == 1.0, "4 classes: the true class is always in the top 4"

    per_class = _csv(job / "per_class_accuracy.csv")
    classes = json.loads((job / "classes.json").read_text())
    assert [(int(r["index"]), r["wnid"]) for r in per_class] == [(c["index"], c["wnid"]) for c in classes]
    assert [int(r["count"]) for r in per_class] == [labels.count(i) for i in range(4)]
    correct = sum(int(r["correct"]) for r in per_class)
    assert correct / len(labels) == pytest.approx(metrics["test"]["accuracy"])

    history = _csv(job / "history.csv")
    assert [int(r["epoch"]) for r in history] == list(range(metrics["epochs_completed"]))
    assert metrics["epochs_completed"] == config["epochs"] or metrics["stopped_early"]
    val_loss = [float(r["val_loss"]) for r in history]
    # Early stopping's best epoch is the first lowest val_loss (min_delta 0) from the
    # first epoch it watches on.
    start = min(config["monitor_start_epoch"], config["epochs"] - 1)
    watched = val_loss[start:]
    assert config["min_delta"] == 0 and metrics["best_epoch"] == start + watched.index(min(watched))
    assert metrics["chance"]["valid_count"] == metrics["valid"]["count"]
    assert metrics["chance"]["valid_accuracy"] == pytest.approx(metrics["valid"]["accuracy"])
    if config["validation_steps"] is None:
        # Epoch-end validation covered the whole split: the final evaluation of the
        # restored best weights reproduces the best epoch's val_loss.
        assert metrics["valid"]["loss"] == pytest.approx(val_loss[metrics["best_epoch"]], abs=2e-5)
    assert (job / "model.keras").is_file()
    # demo.sh exports Minception only: the export of a model a few steps from its start shows nothing more.
    assert config["export"] == (arch == "minception")
    assert (job / "export" / "saved_model.pb").is_file() == config["export"]

    requested = 8 if arch == "minception" else 4  # DEMO_EXPLAIN_IMAGES and demo.sh's halving
    explain = json.loads((job / "logs" / "explain" / "explain.json").read_text())
    assert explain["n"] == explain["n_with_box"] == requested and explain["split"] == "test"
    assert explain["policy"] == config["policy"] and explain["model"] == str(job)
    # --balanced: the same number of images from every class.
    assert [entry["n"] for entry in explain["per_class"]] == [requested // 4] * 4
    hits = explain["pointing_game"]["hit_rate"] * requested
    assert hits == pytest.approx(round(hits)), "a hit rate is a count of hits over the images"
    assert explain["accuracy"] * requested == pytest.approx(round(explain["accuracy"] * requested))
    # The demo scores faithfulness of the trained Minception only (demo.sh, step 4).
    if arch == "minception":
        scores = explain["faithfulness"]
        assert scores["n"] == requested and set(scores["deletion"]) >= {"auc", "random_auc", "center_auc"}
        assert scores["road_morf"] is not None
    else:
        assert "faithfulness" not in explain
    pngs = sorted((out / "gradcam" / arch).glob("*.png"))
    assert len(pngs) == -(-requested // 8), "one grid of up to 8 panels per PNG"


def test_minception_learns_and_summary_table(demo_run):
    out, stdout = demo_run
    metrics = json.loads((out / "jobs" / "minception" / "metrics.json").read_text())
    assert metrics["epochs_completed"] <= MINCEPTION_EPOCHS
    assert metrics["test"]["accuracy"] > 0.5, "5 epochs on 4 shape classes clearly beat chance (0.25)"
    assert metrics["chance"]["better_than_chance"] is True
    lines = stdout[stdout.index("architecture") :].splitlines()
    cells = [line.split() for line in lines[2:]]
    rows = {row[0]: row[1:] for row in cells if row and row[0] in ARCHS}
    assert sorted(rows) == sorted(ARCHS)
    for arch, cells in rows.items():
        job = out / "jobs" / arch
        metrics = json.loads((job / "metrics.json").read_text())
        game = json.loads((job / "logs" / "explain" / "explain.json").read_text())["pointing_game"]
        expected = [str(metrics["epochs_completed"]), f"{metrics['test']['accuracy']:.3f}"]
        expected += [f"{metrics['test']['top5_accuracy']:.3f}", f"{game['hit_rate']:.3f}"]
        expected += [f"{game['center_baseline']:.3f}", f"{game['random_baseline']:.3f}"]
        assert cells == expected, arch
    assert f"tensorboard --logdir {out / 'jobs'}" in stdout


def _megabytes(paths):
    return sum(path.stat().st_size for path in paths if path.is_file()) / 1e6


def test_disk_use_within_the_readme_figures(demo_run):
    out, _ = demo_run
    # README, "Quick start": a model.keras holds weights only, no optimizer state: Inception-ResNet-v2's
    # is its 54M float32 weights, Minception's a third of what it held with Adam's two slots per weight.
    irv2_model = out / "jobs" / "inception_resnet_v2" / "model.keras"
    assert 200 < _megabytes([irv2_model]) < 240
    minception = out / "jobs" / "minception"
    assert _megabytes([minception / "model.keras"]) < 1.2 * _megabytes(minception.glob("export/variables/*"))
    rest = [path for path in out.rglob("*") if path != irv2_model]
    assert _megabytes(rest) < 100, "the demo outside Inception-ResNet-v2's model.keras grew"

"""A dataset without test images trains, evaluates and calibrates on valid, and exits 0 with its reports."""

import csv
import os

from preprocessing import sample
from tests import datasets
from tests.trainer import helpers
from trainer import evaluate, evaluation

CLASSES, TRAIN_PER_CLASS = 3, 20


def test_a_dataset_without_test_images_is_evaluated_on_valid(tmp_path, capsys):
    # The Beam job's own output for a raw folder whose val/ (the labelled test split) is empty:
    # a test split of 0 records, as a folder of photos split into train and valid only gives.
    raw, records = str(tmp_path / "raw"), str(tmp_path / "records")
    spec = sample.SampleSpec(classes=CLASSES, train_per_class=TRAIN_PER_CLASS, val_per_class=0, test_images=0)
    sample.write_sample_dataset(raw, spec)
    metadata = datasets.write_records(raw, records, num_shards=1)
    assert metadata["splits"]["test"]["count"] == 0
    valid_count = metadata["splits"]["valid"]["count"]
    assert valid_count > 0

    job = str(tmp_path / "job")
    # --class-weight balanced rides along: its start-up line is checked in a real run too. The
    # temperature is fitted and measured on valid here; the export and precise batch norm read no
    # evaluation split (the mirrored run in test_run.py checks them).
    extra = ["--explain", "false", "--class-weight", "balanced", "--calibration", "temperature"]
    proc = helpers.run_cli(helpers.quick_args(records, job, 2, *extra))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "evaluation dataset is empty" not in proc.stderr
    said = helpers.warnings(proc.stderr)
    assert said.count(evaluation.NO_TEST_WARNING) == 1, proc.stderr[-3000:]
    assert "class weights balanced: " in proc.stderr
    assert "done: valid accuracy " in proc.stderr and "test accuracy" not in proc.stderr

    metrics = helpers.read_job_json(job, "metrics.json")
    assert "test" not in metrics and metrics["per_class_split"] == "valid"
    assert metrics["valid"]["count"] == valid_count
    with open(os.path.join(job, "per_class_accuracy.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == CLASSES and sum(int(row["count"]) for row in rows) == valid_count
    assert metrics["calibration"]["split"] == "valid" and metrics["calibration"]["temperature"] > 0
    config = helpers.read_job_json(job, "config.json")
    # The crop side resolved from the 64-px images (7/8), not left unset.
    assert (config["policy"], config["crop_size"], config["class_weight"]) == ("crop", 56, "balanced")

    # python -m trainer.evaluate on the missing split: one line that names the split to use.
    capsys.readouterr()
    assert evaluate.main(["--model", job, "--data-dir", records, "--split", "test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split 'test' has no images; try --split valid" in err[0], err

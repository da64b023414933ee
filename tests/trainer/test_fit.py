"""A short CPU fit of minception on a learnable generated sample clearly beats chance."""

import json
import os

import pytest

from preprocessing import sample
from tests import datasets
from tests.trainer import helpers


@pytest.mark.slow
def test_minception_learns_the_sample(tmp_path):
    raw = str(tmp_path / "raw")
    spec = sample.SampleSpec(classes=4, train_per_class=150, val_per_class=20, seed=3)
    sample.write_sample_dataset(raw, spec)
    records = str(tmp_path / "records")
    datasets.write_records(raw, records, num_shards=2)
    job = str(tmp_path / "job")
    args = ["--data-dir", records, "--job-dir", job, "--arch", "minception", "--epochs", "6"]
    args += ["--batch-size", "32", "--seed", "1", "--early-stopping-patience", "6"]
    proc = helpers.run_cli(args, timeout=850)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(os.path.join(job, "metrics.json")) as f:
        metrics = json.load(f)
    chance = 1.0 / metrics["num_classes"]
    assert metrics["test"]["count"] == 80
    assert metrics["test"]["accuracy"] >= 2 * chance, metrics

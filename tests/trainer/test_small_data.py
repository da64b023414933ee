"""A folder of a few hundred photos learns, and a chance-level best model is reported as such."""

import json
import math
import os

import numpy as np
import pytest

from preprocessing import sample
from tests import datasets, tiers
from tests.trainer import helpers
from trainer import report

CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 30, 10


@tiers.long("trains until a small set is learnt")
def test_minception_learns_thirty_images_per_class(tmp_path):
    """Default settings on 27 training images per class (after the split): far above chance.

    With Keras' batch-norm momentum and no precise statistics, the same run
    validates a chance-level model (benchmarks/small_data.py measures both).
    """
    raw = str(tmp_path / "raw")
    spec = sample.SampleSpec(
        classes=CLASSES, train_per_class=TRAIN_PER_CLASS, val_per_class=TEST_PER_CLASS, seed=5
    )
    sample.write_sample_dataset(raw, spec)
    records = str(tmp_path / "records")
    datasets.write_records(raw, records, num_shards=2)
    job = str(tmp_path / "job")
    args = ["--data-dir", records, "--job-dir", job, "--arch", "minception", "--epochs", "6"]
    args += ["--batch-size", "16", "--seed", "1", "--explain", "false"]
    proc = helpers.run_cli(args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = helpers.read_job_json(job, "metrics.json")
    assert metrics["test"]["count"] == CLASSES * TEST_PER_CLASS
    assert metrics["steps_per_epoch"] <= 10, "a handful of steps per epoch: the case this is about"
    print("small-data run:", json.dumps({k: metrics[k] for k in ("test", "valid", "best_epoch", "chance")}))
    assert metrics["test"]["accuracy"] >= 0.6, metrics  # chance: 1/6
    assert metrics["chance"]["better_than_chance"] is True and helpers.warnings(proc.stderr) == []
    assert "precise batch norm: statistics from" in proc.stderr


def test_chance_level_best_model_warns_and_says_so_in_metrics(plateau_job):
    """A model that has not learned is flagged, not silently exported: the shared reference run
    (learning rate 1e-6, its first epoch's weights kept) validates at chance."""
    job = plateau_job["job_dir"]
    chance = helpers.read_job_json(job, "metrics.json")["chance"]
    warnings = helpers.warnings(plateau_job["stderr"])
    assert len(warnings) == 1 and "is not better than chance" in warnings[0], plateau_job["stderr"][-2000:]
    assert chance["better_than_chance"] is False and chance["p_value"] >= 0.05
    assert chance["valid_count"] == 20 and chance["accuracy"] >= 0.2  # 5 classes, 20 images
    assert f"{chance['valid_accuracy']:.3f} over 20 images" in warnings[0]
    # The quick flags' --export false: the model is saved, no SavedModel is written.
    assert os.path.isfile(os.path.join(job, "model.keras"))
    assert not os.path.exists(os.path.join(job, "export", "saved_model.pb"))


def test_binomial_tail_is_exact():
    for successes, trials, p in ((7, 30, 0.1), (0, 5, 0.3), (30, 30, 0.1), (3, 10, 0.5)):
        expected = sum(
            math.comb(trials, k) * p**k * (1 - p) ** (trials - k) for k in range(successes, trials + 1)
        )
        assert report.binomial_tail(successes, trials, p) == pytest.approx(expected, rel=1e-9)
    assert report.binomial_tail(5, 10, 0.0) == 0.0 and report.binomial_tail(5, 10, 1.0) == 1.0
    # Thousands of images: no overflow or underflow.
    assert report.binomial_tail(1200, 10_000, 0.1) == pytest.approx(1.0 - 0.999999, abs=1e-5)


def test_chance_level_is_the_most_frequent_class():
    # 30 images, 10 classes, 3 each: chance 0.1. 4 right is chance-like, 9 right is not.
    confusion = np.zeros((10, 10), np.int64)
    for label in range(10):
        confusion[label, (label + 1) % 10] = 3
    for right in (4, 9):
        matrix = confusion.copy()
        for label in range(right):
            matrix[label % 10, (label + 1) % 10] -= 1
            matrix[label % 10, label % 10] += 1
        result = report.chance_level(matrix)
        assert result["accuracy"] == pytest.approx(0.1) and result["valid_count"] == 30
        assert result["valid_accuracy"] == pytest.approx(right / 30)
        assert result["better_than_chance"] is (right == 9), result
    # One class holds 80% of the images: 80% accuracy is what always answering it gets.
    skewed = np.array([[8, 0], [2, 0]])
    assert report.chance_level(skewed)["accuracy"] == 0.8
    assert report.chance_level(skewed)["better_than_chance"] is False
    json.dumps(report.chance_level(skewed))  # plain values for metrics.json

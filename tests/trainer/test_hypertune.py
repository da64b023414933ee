"""The tuning metric goes to cloudml-hypertune after every epoch, and once more after the final evaluation."""

import json

import keras
import numpy as np
import pytest

from trainer import callbacks, report

TAG = "accuracy"


def _reported(path):
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines()]


@pytest.fixture
def metric_file(tmp_path, monkeypatch):
    # hypertune.HyperTune reads the file name when it is created, as on a Vertex AI trial.
    path = tmp_path / "hypertune" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(path))
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "7")
    return path


def test_every_epoch_then_the_final_value(metric_file):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, size=64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    reporter = report.HypertuneReporter(TAG)
    history = model.fit(
        x,
        y,
        validation_data=(x[:32], y[:32]),
        epochs=3,
        batch_size=16,
        callbacks=[callbacks.HypertuneReport(reporter)],
        verbose=0,
    )

    lines = _reported(metric_file)
    assert [line["global_step"] for line in lines] == ["1", "2", "3"]
    assert [float(line[TAG]) for line in lines] == [float(v) for v in history.history["val_accuracy"]]
    assert {line["trial"] for line in lines} == {"7"}

    # The trainer's final report through the same reporter keeps the epochs' lines.
    reporter.report(0.625, step=4)
    lines = _reported(metric_file)
    assert [line["global_step"] for line in lines] == ["1", "2", "3", "4"]
    assert float(lines[-1][TAG]) == 0.625


def test_resumed_run_counts_on_and_skips_missing_logs(metric_file):
    epochs = callbacks.HypertuneReport(report.HypertuneReporter(TAG))
    epochs.on_epoch_end(4, {"val_accuracy": 0.5})  # resumed at epoch index 4: the fifth epoch
    epochs.on_epoch_end(5, {"loss": 1.0})  # no validation this epoch: nothing to report
    assert [(line["global_step"], line[TAG]) for line in _reported(metric_file)] == [("5", "0.5")]

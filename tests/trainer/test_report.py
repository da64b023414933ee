"""The per-class CSV (old columns kept, precision/recall/f1/support added), the confusion summary's most
confused text, the final macro-F1 scalars and the run's summary lines, on a small unequal matrix."""

import csv
import math

import numpy as np
import pytest

from tests import events
from tests.trainer import test_class_metrics as by_hand
from trainer import evaluation, report

WNIDS = [f"n0{i}" for i in range(5)]


def _split(confusion, accuracy=0.5):
    """A split's metrics.json entry, as evaluation.evaluate_split returns it."""
    from trainer import class_metrics

    count = int(np.asarray(confusion).sum())
    base = {"loss": 1.0, "accuracy": accuracy, "top5_accuracy": 1.0, "count": count}
    return {**base, **class_metrics.split_summary(confusion, by_hand.NAMES)}


def test_per_class_csv_keeps_the_old_columns_and_adds_the_scores(tmp_path):
    path = tmp_path / "per_class_accuracy.csv"
    report.write_per_class_csv(path, by_hand.CONFUSION, WNIDS, by_hand.NAMES)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    old = ["index", "wnid", "name", "count", "correct", "accuracy"]
    assert reader.fieldnames == [*old, "precision", "recall", "f1", "support"]
    assert [(r["wnid"], r["name"]) for r in rows] == list(zip(WNIDS, by_hand.NAMES, strict=True))
    assert [int(r["count"]) for r in rows] == [int(r["support"]) for r in rows] == [8, 4, 3, 0, 0]
    assert [int(r["correct"]) for r in rows] == [5, 3, 0, 0, 0]
    for column, expected in (
        ("precision", by_hand.PRECISION),
        ("recall", by_hand.RECALL),
        ("f1", by_hand.F1),
    ):
        assert [r[column] for r in rows] == [f"{value:.6f}" for value in expected], column
    # Recall is accuracy where a class has images; a class without images keeps an empty accuracy.
    assert [r["accuracy"] for r in rows] == ["0.625000", "0.750000", "0.000000", "", ""]
    assert all(r["recall"] == r["accuracy"] for r in rows if int(r["support"]))


def test_evaluation_per_class_holds_the_csv_numbers(tmp_path):
    path = tmp_path / "per_class.csv"
    report.write_per_class_csv(path, by_hand.CONFUSION, WNIDS, by_hand.NAMES)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    entries = evaluation.per_class(by_hand.CONFUSION, WNIDS, by_hand.NAMES)
    assert [list(entry) for entry in entries] == [list(report.PER_CLASS_COLUMNS)] * 5
    for row, entry in zip(rows, entries, strict=True):
        for key in ("count", "correct", "support"):
            assert int(row[key]) == entry[key], key
        for key in ("precision", "recall", "f1"):
            assert row[key] == f"{entry[key]:.6f}", key
    assert math.isnan(entries[3]["accuracy"]) and entries[3]["recall"] == 0.0


def test_confusion_summary_writes_the_image_and_the_most_confused_text(tmp_path):
    split = _split(by_hand.CONFUSION)
    report.write_confusion_summary(
        str(tmp_path), by_hand.CONFUSION, step=3, split="valid", most_confused=split["most_confused"]
    )
    images = events.read_events(str(tmp_path / "evaluation"), "images")
    texts = events.read_events(str(tmp_path / "evaluation"), "text")
    assert list(images) == ["confusion_matrix/valid"] and list(images["confusion_matrix/valid"]) == [3]
    text = texts["most_confused/valid"][3].item().decode("utf-8")
    assert text.splitlines()[2:4] == ["| cat | dog | 2 |", "| fox | cat | 2 |"]
    assert len(text.splitlines()) == 2 + 5  # header, rule, the five confused pairs


def test_final_scalars_include_macro_f1(tmp_path):
    metrics = {"valid": _split(by_hand.CONFUSION)}
    report.write_final_scalars(str(tmp_path), metrics, step=2)
    scalars = events.read_events(str(tmp_path), "scalars")
    assert set(scalars) == {
        f"final/valid_{name}" for name in ("accuracy", "top5_accuracy", "loss", "macro_f1")
    }
    assert float(scalars["final/valid_macro_f1"][2]) == pytest.approx(by_hand.MACRO["macro_f1"])


def test_summary_lines_name_the_per_class_split(tmp_path):
    perfect = _split(np.diag([1, 1, 1, 1, 1]), accuracy=1.0)
    metrics = {"valid": perfect, "test": _split(by_hand.CONFUSION)}
    lines = report.summary_lines(metrics, ("valid", "test"), by_hand.NAMES)
    assert lines[0].startswith("most confused on test (true as predicted, images): 'cat' as 'dog' 2, ")
    assert lines[1] == "done: valid accuracy 1.0000 macro f1 1.0000, test accuracy 0.5000 macro f1 0.3063"
    # The metrics.json entry is strict JSON with the new keys.
    path = tmp_path / "metrics.json"
    report.write_metrics(path, metrics)
    written = path.read_text()
    assert '"macro_f1": 0.30625' in written and '"never_predicted": [\n      2\n    ]' in written

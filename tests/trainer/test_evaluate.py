"""python -m trainer.evaluate on a real job: metrics.json and per_class_accuracy.csv reproduced, a bare
.keras file and a plateau checkpoint, flip test-time augmentation against numpy, gs://, bad input."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer import helpers
from trainer import class_metrics, evaluate, evaluation

SUMMARY = (
    "evaluate: {split} top-1 {accuracy:.4f} top-5 {top5_accuracy:.4f} loss {loss:.4f} "
    "macro precision {macro_precision:.4f} recall {macro_recall:.4f} f1 {macro_f1:.4f} on {count} images"
)


def _summary(result):
    """The two lines printed for ``result``: the numbers, then its most confused pairs (or none)."""
    keys = ("split", "accuracy", "top5_accuracy", "loss", "count", *class_metrics.MACRO_KEYS)
    pairs = result["most_confused"][: class_metrics.SHOWN_CONFUSED]
    if pairs:
        named = ", ".join(f"{p['true_name']!r} as {p['predicted_name']!r} {p['count']}" for p in pairs)
        confused = f"evaluate: most confused on {result['split']} (true as predicted, images): {named}"
    else:
        confused = f"evaluate: no class confused with another on {result['split']}"
    if result["never_predicted"]:
        names = ", ".join(repr(result["per_class"][i]["name"]) for i in result["never_predicted"])
        confused += f"; never predicted (precision 0): {names}"
    return [SUMMARY.format(**{key: result[key] for key in keys}), confused]


@pytest.fixture(scope="module")
def job(plateau_job, tmp_path_factory):
    """A copy of the shared plateau run (tests/trainer/conftest.py): ``(job_dir, data_dir)``.

    Evaluate writes its results into the job dir, so these tests read and write a copy.
    """
    job_dir = str(tmp_path_factory.mktemp("evaluate") / "job")
    shutil.copytree(plateau_job["job_dir"], job_dir)
    assert os.listdir(os.path.join(job_dir, "checkpoints")) == ["plateau-epoch-0002"]
    return job_dir, plateau_job["data_dir"]


def _evaluate(argv, capsys):
    """Runs ``trainer.evaluate`` in this process; returns ``(exit code, stdout, stderr)``."""
    code = evaluate.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _read(path):
    with open(path) as f:
        return json.load(f)


def _per_class_csv(job_dir):
    with open(os.path.join(job_dir, "per_class_accuracy.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_numbers(result, expected):
    """Top-1, top-5, count, macro scores and most confused pairs exactly, the loss to 1e-5: the trainer's."""
    keys = (
        "accuracy",
        "top5_accuracy",
        "count",
        *class_metrics.MACRO_KEYS,
        "most_confused",
        "never_predicted",
    )
    for key in keys:
        assert result[key] == expected[key], key
    assert result["loss"] == pytest.approx(expected["loss"], abs=1e-5)


def _assert_consistent(result, num_classes=5):
    confusion = np.asarray(result["confusion"])
    assert confusion.shape == (num_classes, num_classes)
    assert confusion.sum() == result["count"]
    assert result["accuracy"] == np.trace(confusion) / result["count"]
    assert [row["count"] for row in result["per_class"]] == confusion.sum(axis=1).tolist()
    assert [row["correct"] for row in result["per_class"]] == np.diag(confusion).tolist()
    # Precision, recall and F1 from the matrix, by their definitions (0/0 is 0).
    predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
    for index, row in enumerate(result["per_class"]):
        assert row["support"] == support[index]
        assert row["precision"] == (confusion[index, index] / predicted[index] if predicted[index] else 0.0)
        assert row["recall"] == (confusion[index, index] / support[index] if support[index] else 0.0)
    present = [row for row, p, t in zip(result["per_class"], predicted, support, strict=True) if p or t]
    assert result["macro_precision"] == pytest.approx(np.mean([row["precision"] for row in present]))
    assert result["macro_recall"] == pytest.approx(np.mean([row["recall"] for row in present]))
    assert result["macro_f1"] == pytest.approx(np.mean([row["f1"] for row in present]))
    counts = [pair["count"] for pair in result["most_confused"]]
    assert counts == sorted(counts, reverse=True) and all(
        pair["true"] != pair["predicted"] for pair in result["most_confused"]
    )


def test_job_dir_test_split_reproduces_metrics_and_per_class_csv(job):
    job_dir, data_dir = job
    argv = ["--model", job_dir, "--data-dir", data_dir, "--split", "test"]
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.evaluate", *argv],
        capture_output=True,
        text=True,
        env=helpers.cli_env(),
        cwd=helpers.ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    expected = helpers.read_job_json(job_dir, "metrics.json")["test"]
    result = _read(os.path.join(job_dir, "evaluation_test.json"))
    _assert_same_numbers(result, expected)
    _assert_consistent(result)
    assert proc.stdout.splitlines() == _summary(result)
    assert (result["policy"], result["crop_size"], result["batch_size"]) == ("crop", 56, 8)
    # The per-class numbers are the job's per_class_accuracy.csv.
    rows = _per_class_csv(job_dir)
    assert len(rows) == len(result["per_class"]) == 5
    for row, entry in zip(rows, result["per_class"], strict=True):
        assert (int(row["index"]), row["wnid"], row["name"]) == (entry["index"], entry["wnid"], entry["name"])
        assert (int(row["count"]), int(row["correct"])) == (entry["count"], entry["correct"])
        assert row["accuracy"] == f"{entry['accuracy']:.6f}"
        for key in ("precision", "recall", "f1"):
            assert row[key] == f"{entry[key]:.6f}", key
        assert int(row["support"]) == entry["support"]


def test_valid_split_reproduces_metrics(job, tmp_path, capsys):
    job_dir, data_dir = job
    output = str(tmp_path / "out" / "valid.json")
    argv = ["--model", job_dir, "--data-dir", data_dir, "--split", "valid", "--output", output]
    code, out, err = _evaluate(argv, capsys)
    assert code == 0, err
    result = _read(output)
    _assert_same_numbers(result, helpers.read_job_json(job_dir, "metrics.json")["valid"])
    _assert_consistent(result)
    assert out.splitlines() == _summary(result)
    assert result["split"] == "valid" and result["count"] == 20
    assert not os.path.exists(os.path.join(job_dir, "evaluation_valid.json")), "--output replaces the default"


def test_bare_keras_file_infers_the_centre_crop(job, tmp_path, capsys):
    """model.keras outside its job dir: no config.json; a 56px input for 64px images means the crop."""
    job_dir, data_dir = job
    bare = str(tmp_path / "best.keras")
    shutil.copy(os.path.join(job_dir, "model.keras"), bare)
    code, _, err = _evaluate(["--model", bare, "--data-dir", data_dir, "--batch-size", "8"], capsys)
    assert code == 0, err
    result = _read(str(tmp_path / "best_evaluation_test.json"))
    assert (result["policy"], result["crop_size"], result["input_size"]) == ("crop", 56, 56)
    _assert_same_numbers(result, helpers.read_job_json(job_dir, "metrics.json")["test"])
    _assert_consistent(result)


def test_plateau_checkpoint_saved_as_keras_file(job, tmp_path, capsys):
    """The plateau checkpoint is a full training state: its model, saved as a .keras file, evaluates."""
    import keras

    from trainer import models

    job_dir, data_dir = job
    model = helpers.build_like_trainer(job_dir, data_dir)
    state = helpers.read_backup_weights(model, os.path.join(job_dir, "checkpoints", "plateau-epoch-0002"))
    assert state["epoch"] == 2
    path = str(tmp_path / "plateau-epoch-0002.keras")
    models.main_output_model(model).save(path)
    code, _, err = _evaluate(["--model", path, "--data-dir", data_dir, "--split", "test"], capsys)
    assert code == 0, err
    result = _read(str(tmp_path / "plateau-epoch-0002_evaluation_test.json"))
    _assert_consistent(result)
    assert result["count"] == 40 and result["batch_size"] == evaluate.DEFAULT_BATCH_SIZE
    best = keras.saving.load_model(os.path.join(job_dir, "model.keras"))
    same = all(np.array_equal(a, b) for a, b in zip(best.get_weights(), model.get_weights(), strict=True))
    if same:  # Only when the plateau's weights are the best ones; this recipe's are not (epoch 1 vs 0).
        _assert_same_numbers(result, helpers.read_job_json(job_dir, "metrics.json")["test"])


def _test_split(data_dir):
    """Every test image (centre-cropped to 56) and label, read by the project's reader."""
    from contracts import dataset

    info = dataset.load_metadata(data_dir)
    split = dataset.make_dataset(info, "test", global_batch_size=64, policy="crop", crop_size=56)
    batches = list(split.as_numpy_iterator())
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def test_flip_tta_is_the_average_of_image_and_mirror(job, capsys):
    import keras

    job_dir, data_dir = job
    code, out, err = _evaluate(["--model", job_dir, "--data-dir", data_dir, "--tta", "flip"], capsys)
    assert code == 0, err
    result = _read(os.path.join(job_dir, "evaluation_test_tta-flip.json"))
    assert result["tta"] == "flip"
    _assert_consistent(result)
    assert out.splitlines() == _summary(result)

    model = keras.saving.load_model(os.path.join(job_dir, "model.keras"))
    images, labels = _test_split(data_dir)
    plain = np.asarray(model(images, training=False))
    mirrored = np.asarray(model(images[:, :, ::-1], training=False))
    by_hand = (plain + mirrored) / 2
    assert not np.allclose(plain, mirrored, atol=1e-6), "the mirror must change the probabilities"
    # The wrapper on a small batch is the numpy average.
    averaged = evaluation.flip_averaged(model)(images[:6])
    np.testing.assert_allclose(np.asarray(averaged), by_hand[:6], atol=1e-6)
    # The whole split: the same predictions, confusion and loss as the numpy average.
    predicted = by_hand.argmax(axis=1)
    confusion = np.zeros((5, 5), np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    assert result["confusion"] == confusion.tolist()
    assert result["accuracy"] == np.mean(predicted == labels)
    loss = -np.mean(np.log(np.clip(by_hand[np.arange(len(labels)), labels], 1e-7, 1.0)))
    assert result["loss"] == pytest.approx(loss, abs=1e-5)


def test_gcs_job_dir(job, gcs_bucket, capsys):
    from contracts import storage

    job_dir, data_dir = job
    remote = f"gs://{gcs_bucket}/runs/a"
    for name in ("model.keras", "config.json", "classes.json"):
        with open(os.path.join(job_dir, name), "rb") as f:
            storage.write_bytes(f"{remote}/{name}", f.read())
    code, _, err = _evaluate(["--model", remote + "/", "--data-dir", data_dir, "--split", "valid"], capsys)
    assert code == 0, err
    result = json.loads(storage.read_bytes(f"{remote}/evaluation_valid.json"))
    _assert_same_numbers(result, helpers.read_job_json(job_dir, "metrics.json")["valid"])


def _tiny_model(path, input_size, num_classes):
    import keras

    from tests.explain import tiny_cnn

    keras.utils.set_random_seed(0)
    tiny_cnn(input_size, num_classes, filters=(4,)).save(path)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing job dir", "model not found"),
        ("missing file", "model not found"),
        ("other class count", "the model has 3 classes, the dataset 5"),
        ("input larger than the images", "72px"),
        ("unknown split", "argument --split: invalid choice: 'train'"),
        ("unknown tta", "argument --tta: invalid choice: 'rotate'"),
        ("zero batch size", "--batch-size must be >= 1, got 0"),
        ("word batch size", "argument --batch-size: invalid int value: 'x'"),
        ("missing data dir", "metadata.json"),
        ("output below a file", "is a file, not a folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, message, sample_records, tmp_path, capsys):
    data_dir, _ = sample_records
    model = str(tmp_path / "job")
    extra = []
    if case == "missing file":
        model = str(tmp_path / "nothing.keras")
    elif case == "other class count":
        model = _tiny_model(str(tmp_path / "three.keras"), 56, 3)
    elif case == "input larger than the images":
        model = _tiny_model(str(tmp_path / "large.keras"), 72, 5)
    elif case == "unknown split":
        extra = ["--split", "train"]
    elif case == "unknown tta":
        extra = ["--tta", "rotate"]
    elif case == "zero batch size":
        extra = ["--batch-size", "0"]
    elif case == "word batch size":
        extra = ["--batch-size", "x"]
    elif case == "missing data dir":
        data_dir = str(tmp_path / "no-data")
    elif case == "output below a file":
        (tmp_path / "file").write_text("")
        model = _tiny_model(str(tmp_path / "fine.keras"), 56, 5)
        extra = ["--output", str(tmp_path / "file" / "out.json")]
    code, out, err = _evaluate(["--model", model, "--data-dir", data_dir, *extra], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert out == ""

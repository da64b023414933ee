"""Final files are written whole or not at all (``contracts.storage.write_atomically``).

A full disk midway through ``model.keras``, ``metrics.json``, the per-class CSV or
``history.csv`` must leave the file that was there unchanged, no temporary file
behind, and one error naming the file. Two ways of failing midway are used: a
writer that raises ``ENOSPC`` after writing half (the helper's own path: temporary
file, cleanup, the error), and a real refusal by the kernel, a file-size limit
(``RLIMIT_FSIZE``: a write past it fails with ``EFBIG`` as a full disk fails one
with ``ENOSPC``), under which the real writers run unchanged: Keras' own save
included.
"""

import errno
import json
import os
import re

import numpy as np
import pytest

from contracts import storage
from tests import disk

PREVIOUS = b"the last good version\n"
# Smaller than every payload the limited writers write, larger than any line the test prints.
LIMIT = 64 * 1024


def _folder_with_previous(tmp_path, name):
    path = tmp_path / "job" / name
    path.parent.mkdir()
    path.write_bytes(PREVIOUS)
    return str(path)


def _assert_unchanged(path):
    with open(path, "rb") as f:
        assert f.read() == PREVIOUS
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]  # No temporary file left.


def test_write_atomically_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = _folder_with_previous(tmp_path, "metrics.json")
    seen = []

    def write(temporary):
        seen.append(temporary)
        assert os.path.dirname(temporary) == os.path.dirname(path)  # Same folder: the rename is atomic.
        assert temporary.endswith(".json") and os.path.basename(temporary).startswith(".")
        with open(path, "rb") as f:
            assert f.read() == PREVIOUS  # Readers see the old file until the rename.
        with open(temporary, "wb") as f:
            f.write(b"new")

    storage.write_atomically(path, write)
    with open(path, "rb") as f:
        assert f.read() == b"new"
    assert os.listdir(os.path.dirname(path)) == ["metrics.json"] and len(seen) == 1


def test_full_disk_midway_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = _folder_with_previous(tmp_path, "model.keras")

    def write(temporary):
        with open(temporary, "wb") as f:
            f.write(b"PK\x03\x04 half an archive")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(storage.WriteError) as raised:
        storage.write_atomically(path, write)
    _assert_unchanged(path)
    error = raised.value
    # One line naming the file; an OSError and a ValueError, so the CLIs make it one error line.
    assert str(error) == f"{path}: not written (No space left on device); a file already there is unchanged"
    assert isinstance(error, OSError) and isinstance(error, ValueError) and error.errno == errno.ENOSPC


def test_full_disk_on_a_new_file_leaves_no_file(tmp_path):
    path = str(tmp_path / "new" / "per_class_accuracy.csv")

    def write(temporary):
        with open(temporary, "w") as f:
            f.write("index,wnid\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(storage.WriteError, match=re.escape("per_class_accuracy.csv: not written")):
        storage.write_atomically(path, write)
    assert os.listdir(tmp_path / "new") == []


def test_other_failures_of_the_writer_clean_up_and_pass_through(tmp_path):
    path = _folder_with_previous(tmp_path, "history.csv")

    def write(temporary):
        with open(temporary, "w") as f:
            f.write("epoch\n")
        raise KeyError("a bug in the writer")

    with pytest.raises(KeyError, match="a bug in the writer"):
        storage.write_atomically(path, write)
    _assert_unchanged(path)


def test_write_bytes_over_a_folder_is_one_error(tmp_path):
    (tmp_path / "metrics.json").mkdir()
    with pytest.raises(storage.WriteError, match=re.escape("metrics.json: not written")):
        storage.write_bytes(str(tmp_path / "metrics.json"), b"{}")
    assert os.listdir(tmp_path) == ["metrics.json"]


def _keras_model():
    import keras

    from tests.explain import tiny_cnn

    keras.utils.set_random_seed(0)
    return tiny_cnn(16, 5, filters=(64, 128))  # About 300 KB of weights: past the limit.


def _save_model(path):
    from trainer import callbacks

    model = _keras_model()
    callbacks.save_model(model, path)
    return model


def _write_metrics(path):
    from trainer import report

    report.write_metrics(path, {"valid": {"confusion": np.arange(20_000).tolist()}})


def _write_per_class_csv(path):
    from trainer import report

    classes = 2_000
    names = [f"class number {i}" for i in range(classes)]
    report.write_per_class_csv(path, np.eye(classes, dtype=np.int64) * 3, names, names)


def _write_history(path):
    from trainer import callbacks

    history = callbacks.HistoryCSV(path)
    history.rows = [{"epoch": e, "loss": f"{1 / (e + 1):.6g}"} for e in range(5_000)]
    history.on_epoch_end(5_000, {"loss": 0.5, "val_loss": 0.25})


def _write_evaluation(path):
    storage.write_bytes(path, json.dumps({"confusion": np.arange(20_000).tolist()}).encode())


WRITERS = {
    "model.keras": _save_model,
    "metrics.json": _write_metrics,
    "per_class_accuracy.csv": _write_per_class_csv,
    "history.csv": _write_history,
    "evaluation_test.json": _write_evaluation,
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_final_file_cut_short_by_the_kernel_keeps_the_last_good_one(name, tmp_path):
    path = _folder_with_previous(tmp_path, name)
    writer = WRITERS[name]
    with disk.file_size_limit(LIMIT), pytest.raises(storage.WriteError) as raised:
        writer(path)
    assert str(raised.value).startswith(f"{path}: not written (File too large)")
    assert raised.value.errno == errno.EFBIG
    _assert_unchanged(path)
    # Without the limit the same writer writes the whole file, past the limit.
    writer(path)
    assert os.path.getsize(path) > LIMIT
    assert os.listdir(os.path.dirname(path)) == [name]


def test_saved_model_file_loads_back_without_the_optimizer(tmp_path):
    import zipfile

    import h5py
    import keras

    from trainer import callbacks

    path = str(tmp_path / "model.keras")
    model = _keras_model()
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    callbacks.save_model(model, path)
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    loaded = keras.models.load_model(path)
    # The same structure (one tensor, not a list of one) and the same numbers.
    assert not keras.tree.is_nested(loaded.output) and not keras.tree.is_nested(loaded(images))
    np.testing.assert_allclose(loaded(images), model(images), rtol=1e-6)
    assert loaded.name == model.name and [layer.name for layer in loaded.layers] == [
        layer.name for layer in model.layers
    ]
    assert os.listdir(tmp_path) == ["model.keras"]
    # The weights alone: the compiled model's optimizer (two Adam slots per weight) stays out.
    with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as weights:
        assert "optimizer" not in h5py.File(weights, "r")
    assert getattr(loaded, "optimizer", None) is None and model.optimizer.built


def test_per_class_csv_is_whole(tmp_path):
    import csv

    from trainer import report

    path = str(tmp_path / "per_class_accuracy.csv")
    report.write_per_class_csv(path, [[2, 1], [0, 3]], ["n1", "n2"], ["cat", "dog"])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["wnid"], r["count"], r["correct"], r["accuracy"]) for r in rows] == [
        ("n1", "3", "2", "0.666667"),
        ("n2", "3", "3", "1.000000"),
    ]
    with open(path, "rb") as f:
        assert f.read().count(b"\r\n") == 3  # The csv module's line ends, as before.


def test_gcs_object_written_whole(gcs_bucket):
    uri = f"gs://{gcs_bucket}/jobs/run/metrics.json"

    def whole(local):
        with open(local, "wb") as f:
            f.write(b'{"ok": 1}')

    storage.write_atomically(uri, whole)
    assert storage.read_bytes(uri) == b'{"ok": 1}'

    def full(local):
        with open(local, "wb") as f:
            f.write(b"{")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(storage.WriteError, match=re.escape(f"{uri}: not written")):
        storage.write_atomically(uri, full)
    assert storage.read_bytes(uri) == b'{"ok": 1}'


def test_a_pathlib_path_is_written_too(tmp_path):
    storage.write_bytes(tmp_path / "config.json", b"{}")
    assert (tmp_path / "config.json").read_bytes() == b"{}" and os.listdir(tmp_path) == ["config.json"]

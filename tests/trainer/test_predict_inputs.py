"""trainer.predict's inputs refused cleanly (issue 27: 7c, 9's predict half, 10, 12a).

Each case runs through ``predict.main(argv)`` in-process, as a user's command
line does: a device, a FIFO or a file over the preprocessing job's size cap is
an error row (exit code 1) that is never read, and the other images still run;
a damaged model file, a class list of another length than the model's, or an
``--output`` FIFO is one ``error:`` line and exit code 2. CSV cells a
spreadsheet would run as formulas are escaped in predict's CSV and in the
trainer's per-class CSV.

The photos are the sample generator's (preprocessing/sample_photos.py); the
model is an untrained tiny CNN saved as a ``.keras`` file.
"""

import csv
import json
import os
import struct
import tracemalloc
import zipfile

import keras
import numpy as np
import pytest
from google.cloud.storage import blob as blob_module

from contracts import csv_cells, jobdir, storage
from preprocessing import images as beam_images
from preprocessing import sample_photos
from tests.explain import NUM_CLASSES, tiny_cnn
from trainer import predict, predict_inputs, report

# Names a spreadsheet would run as formulas (OWASP's list of leading characters), and a plain one.
FORMULA_NAMES = ('=HYPERLINK("http://x","y")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR")
SAFE_NAME = "goldfish, Carassius auratus"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained 5-class tiny CNN (input 64, no config: no crop) saved as ``tiny.keras``."""
    path = str(tmp_path_factory.mktemp("inputs-model") / "tiny.keras")
    keras.utils.set_random_seed(11)
    tiny_cnn(64, NUM_CLASSES, filters=(4,)).save(path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """One photo written by the sample generator."""
    root = tmp_path_factory.mktemp("inputs-photos")
    (first, *_) = sample_photos.write_photo_tree(str(root), sample_photos.PhotoSpec(classes=1, per_class=1))
    return os.path.join(str(root), *first.path.split("/"))


def _errors(capsys):
    captured = capsys.readouterr()
    return captured.out, [line for line in captured.err.splitlines() if line.startswith("error: ")]


def _one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# 9 (predict half): devices, FIFOs and oversized files are error rows, never read.


def test_dev_zero_is_an_error_row_and_the_other_image_runs(model_file, photo, capsys):
    assert predict.main(["--model", model_file, "--json", "/dev/zero", photo]) == 1
    out, errors = _errors(capsys)
    document = json.loads(out)
    assert [row["image"] for row in document["predictions"]] == [photo]
    assert document["errors"] == [
        {"image": "/dev/zero", "error": f"cannot read image ({storage.NOT_A_REGULAR_FILE})"}
    ]
    assert errors == [f"error: /dev/zero: cannot read image ({storage.NOT_A_REGULAR_FILE})"]


@pytest.mark.timeout(60)  # Before the fix the read blocked forever on the FIFO.
def test_fifo_given_or_inside_a_folder_is_an_error_row_not_a_hang(model_file, photo, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    os.symlink(photo, folder / "a.jpg")
    os.mkfifo(folder / "b.jpg")
    given = tmp_path / "given.png"
    os.mkfifo(given)
    assert predict.main(["--model", model_file, "--json", str(given), str(folder)]) == 1
    out, errors = _errors(capsys)
    document = json.loads(out)
    assert [row["image"] for row in document["predictions"]] == [str(folder / "a.jpg")]
    assert [row["image"] for row in document["errors"]] == [str(given), str(folder / "b.jpg")]
    assert all(
        row["error"] == f"cannot read image ({storage.NOT_A_REGULAR_FILE})" for row in document["errors"]
    )
    assert len(errors) == 2


def test_file_over_the_size_cap_is_refused_unread(model_file, photo, tmp_path, capsys):
    limit = beam_images.MAX_FILE_BYTES
    assert predict_inputs.max_file_bytes() == limit  # The preprocessing job's one constant.
    big = tmp_path / "big.jpg"
    with open(big, "wb") as f:
        f.truncate(limit + 1)  # Sparse: one byte over the cap costs no disk.
    tracemalloc.start()
    try:
        values, failures = predict_inputs.read_files([str(big), photo], lambda data: len(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert failures == {str(big): f"cannot read image ({limit + 1} bytes, over the limit of {limit} bytes)"}
    assert values == {photo: os.path.getsize(photo)}
    assert peak < limit // 8  # Refused from its size: its 64 MiB never reached memory.

    assert predict.main(["--model", model_file, "--json", str(big), photo]) == 1
    out, errors = _errors(capsys)
    assert [row["image"] for row in json.loads(out)["predictions"]] == [photo]
    assert errors == [f"error: {big}: cannot read image ({limit + 1} bytes, over the limit of {limit} bytes)"]


def test_gcs_object_over_the_size_cap_is_refused_before_download(
    model_file, photo, gcs_bucket, monkeypatch, capsys
):
    with open(photo, "rb") as f:
        data = f.read()
    bucket = storage.gcs_client().bucket(gcs_bucket)
    bucket.blob("shots/small.jpg").upload_from_string(data)
    bucket.blob("shots/big.jpg").upload_from_string(data + b"\0" * 100)
    # A cap between the two sizes: the path of a 64 MiB object without uploading one.
    monkeypatch.setattr(predict_inputs, "max_file_bytes", lambda: len(data) + 50)
    downloads = []
    original = blob_module.Blob.download_as_bytes

    def spy(blob, *args, **kwargs):
        downloads.append(blob.name)
        return original(blob, *args, **kwargs)

    monkeypatch.setattr(blob_module.Blob, "download_as_bytes", spy)
    assert predict.main(["--model", model_file, "--json", f"gs://{gcs_bucket}/shots/"]) == 1
    out, errors = _errors(capsys)
    document = json.loads(out)
    big, small = f"gs://{gcs_bucket}/shots/big.jpg", f"gs://{gcs_bucket}/shots/small.jpg"
    assert [row["image"] for row in document["predictions"]] == [small]
    limit = len(data) + 50
    assert document["errors"] == [
        {
            "image": big,
            "error": f"cannot read image ({len(data) + 100} bytes, over the limit of {limit} bytes)",
        }
    ]
    assert downloads == ["shots/small.jpg"] and len(errors) == 1  # The big one's bytes never came.


@pytest.mark.timeout(60)
def test_output_fifo_is_one_error_line(model_file, photo, tmp_path, capsys):
    fifo = tmp_path / "rows.csv"
    os.mkfifo(fifo)
    assert predict.main(["--model", model_file, "--output", str(fifo), photo]) == 2
    assert _one_error_line(capsys) == f"error: --output {fifo}: {storage.NOT_A_REGULAR_FILE}"


@pytest.mark.timeout(60)
def test_classes_file_fifo_or_device_is_one_error_line(model_file, photo, tmp_path, capsys):
    fifo = tmp_path / "names.txt"
    os.mkfifo(fifo)
    for classes in (str(fifo), "/dev/zero"):
        assert predict.main(["--model", model_file, "--classes", classes, photo]) == 2
        line = _one_error_line(capsys)
        assert (
            line.startswith(f"error: {classes}: cannot read classes (") and storage.NOT_A_REGULAR_FILE in line
        )


# 10: class lists of another length than the model's output.


@pytest.mark.parametrize("count", [2, NUM_CLASSES + 1, 0])
def test_classes_file_of_another_length_than_the_model_is_refused(model_file, photo, tmp_path, capsys, count):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"kind {i}\n" for i in range(count)))
    assert predict.main(["--model", model_file, "--classes", str(names), photo]) == 2
    assert _one_error_line(capsys) == (
        f"error: {model_file}: the model has {NUM_CLASSES} classes, the classes file names {count} "
        f"({names}); give the classes the model was trained on"
    )


def test_data_dir_of_another_class_count_than_the_model_is_refused(sample_records, photo, tmp_path, capsys):
    data_dir, metadata = sample_records
    assert len(metadata["classes"]) == NUM_CLASSES
    three = str(tmp_path / "three.keras")
    tiny_cnn(64, 3, filters=(4,)).save(three)
    assert predict.main(["--model", three, "--data-dir", data_dir, photo]) == 2
    assert _one_error_line(capsys).startswith(
        f"error: {three}: the model has 3 classes, the dataset {NUM_CLASSES} ({data_dir})"
    )


def test_job_dir_classes_json_of_another_length_is_refused(model_file, photo, tmp_path, capsys):
    job = tmp_path / "job"
    job.mkdir()
    os.symlink(model_file, job / "model.keras")
    classes = [{"index": i, "wnid": f"n{i}", "name": f"kind {i}"} for i in range(NUM_CLASSES - 1)]
    (job / "classes.json").write_text(json.dumps(classes))
    assert predict.main(["--model", str(job), photo]) == 2
    assert f"the model has {NUM_CLASSES} classes, classes.json names {NUM_CLASSES - 1}" in _one_error_line(
        capsys
    )


def test_classes_of_the_model_length_name_every_prediction(model_file, photo, tmp_path, capsys):
    names = tmp_path / "names.txt"
    names.write_text("".join(f"kind {i}\n" for i in range(NUM_CLASSES)))
    assert predict.main(["--model", model_file, "--classes", str(names), "--json", photo]) == 0
    (row,) = json.loads(capsys.readouterr().out)["predictions"]
    assert sorted(entry["class"] for entry in row["top"]) == [f"kind {i}" for i in range(NUM_CLASSES)]


# 7c: a damaged model file says so, naming the file.


def _damaged_models(model_file, folder):
    """``{case: path}``: random bytes, a truncated archive, archives with a corrupted member, a job dir."""
    rng = np.random.default_rng(0)
    with open(model_file, "rb") as f:
        whole = f.read()
    paths = {}
    paths["random bytes"] = folder / "random.keras"
    paths["random bytes"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    paths["truncated"] = folder / "truncated.keras"
    paths["truncated"].write_bytes(whole[: len(whole) // 2])
    with zipfile.ZipFile(model_file) as archive:
        members = {name: archive.getinfo(name) for name in ("config.json", "model.weights.h5")}
    for name, info in members.items():
        # A member's stored bytes follow its local header: 30 bytes, then its name and extra field.
        name_length, extra_length = struct.unpack(
            "<HH", whole[info.header_offset + 26 : info.header_offset + 30]
        )
        start = info.header_offset + 30 + name_length + extra_length + info.compress_size // 2
        broken = bytearray(whole)
        broken[start : start + 16] = bytes(byte ^ 0xFF for byte in broken[start : start + 16])  # Every bit.
        paths[f"corrupted {name}"] = folder / f"corrupted-{name}.keras"
        paths[f"corrupted {name}"].write_bytes(bytes(broken))
    job = folder / "job"
    job.mkdir()
    (job / "model.keras").write_bytes(paths["random bytes"].read_bytes())
    paths["job dir with random bytes"] = job
    return paths


def test_damaged_model_file_is_one_line_saying_damaged(model_file, photo, tmp_path, capsys):
    for case, path in _damaged_models(model_file, tmp_path).items():
        assert predict.main(["--model", str(path), photo]) == 2, case
        line = _one_error_line(capsys)
        named = path / "model.keras" if case.startswith("job dir") else path
        assert line.startswith(f"error: {named}: damaged file"), (case, line)
        assert "File not found" not in line, case


@pytest.mark.timeout(60)
def test_model_file_that_is_a_fifo_is_one_line(photo, tmp_path, capsys):
    fifo = tmp_path / "pipe.keras"
    os.mkfifo(fifo)
    assert predict.main(["--model", str(fifo), photo]) == 2
    assert _one_error_line(capsys) == f"error: {fifo}: {storage.NOT_A_REGULAR_FILE}"


# 12a: CSV cells a spreadsheet would run as formulas.


def test_csv_row_escapes_formula_text_only():
    values = [*FORMULA_NAMES, SAFE_NAME, "", 3, -1, 0.25, -0.5, "a=b"]
    assert csv_cells.row(values) == [
        *(f"'{name}" for name in FORMULA_NAMES),
        SAFE_NAME,
        "",
        3,
        -1,
        0.25,
        -0.5,
        "a=b",
    ]


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        table = list(csv.reader(f))
    return [dict(zip(table[0], values, strict=True)) for values in table[1:]]


def test_predict_csv_escapes_formula_class_names(model_file, photo, tmp_path, capsys):
    names = [*FORMULA_NAMES[:4], SAFE_NAME]
    classes = tmp_path / "names.json"
    classes.write_text(json.dumps(names))
    out = tmp_path / "rows.csv"
    argv = ["--model", model_file, "--classes", str(classes), "--output", str(out), "--top-k", "5", photo]
    assert predict.main(argv) == 0
    (row,) = _read_csv(out)
    written = [row[f"class_{rank}"] for rank in range(1, 6)]
    by_index = dict(zip((int(row[f"index_{rank}"]) for rank in range(1, 6)), written, strict=True))
    assert by_index == {i: (name if name == SAFE_NAME else f"'{name}") for i, name in enumerate(names)}
    assert float(row["probability_1"]) > 0 and row["error"] == ""


def test_per_class_csv_escapes_formula_names_and_wnids(tmp_path):
    names = [FORMULA_NAMES[0], FORMULA_NAMES[4], SAFE_NAME]
    wnids = ["-n01", "n02", "@n03"]
    confusion = np.array([[2, 1, 0], [0, 3, 0], [1, 0, 1]])
    path = tmp_path / jobdir.PER_CLASS_FILE
    report.write_per_class_csv(str(path), confusion, wnids, names)
    rows = _read_csv(path)
    assert [row["wnid"] for row in rows] == ["'-n01", "n02", "'@n03"]
    assert [row["name"] for row in rows] == [f"'{FORMULA_NAMES[0]}", f"'{FORMULA_NAMES[4]}", SAFE_NAME]
    assert [row["count"] for row in rows] == ["3", "3", "2"] and rows[0]["accuracy"] == "0.666667"

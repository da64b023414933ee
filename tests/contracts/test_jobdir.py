"""contracts.jobdir: loading local and gs:// job dirs, read_json, the resume checks and class lists.

hypothesis is not installed in the project's virtualenv, so the class-list
parser is checked on parametrized examples of every accepted format.
"""

import json
import os
import random

import keras
import numpy as np
import pytest

from contracts import jobdir, storage
from tests.explain import NUM_CLASSES, tiny_cnn

CLASSES = [{"index": i, "wnid": f"n{i:08d}", "name": f"kind {i}, the {i}th"} for i in range(NUM_CLASSES)]


def _model(input_size):
    keras.utils.set_random_seed(5)
    return tiny_cnn(input_size, filters=(8,))


def _pixels(size, count=2):
    return np.random.default_rng(0).uniform(0, 255, (count, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A crop-policy model (input 56) saved as ``model.keras``; returns ``(path, model)``."""
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model = _model(56)
    model.save(path)
    return path, model


def test_folder_and_file_names():
    assert jobdir.default_folders("gs://b/jobs/run/") == {
        "logs": "gs://b/jobs/run/logs",
        "checkpoints": "gs://b/jobs/run/checkpoints",
        "backup": "gs://b/jobs/run/backup",
        "export": "gs://b/jobs/run/export",
    }
    assert jobdir.plateau_folder(7) == "plateau-epoch-0007"


def test_load_gcs_job_dir(saved, gcs_bucket, tmp_path, monkeypatch):
    path, model = saved
    bucket = storage.gcs_client().bucket(gcs_bucket)
    bucket.blob("jobs/run/model.keras").upload_from_filename(path)
    config = {"arch": "tiny", "policy": "crop", "crop_size": 56}
    bucket.blob("jobs/run/config.json").upload_from_string(json.dumps(config))
    shuffled = random.Random(0).sample(CLASSES, len(CLASSES))  # the index orders them, not the position
    bucket.blob("jobs/run/classes.json").upload_from_string(json.dumps(shuffled))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))

    predictor = jobdir.load(f"gs://{gcs_bucket}/jobs/run/")
    assert predictor.class_names == tuple(c["name"] for c in CLASSES)
    assert (predictor.policy, predictor.crop_size, predictor.input_size, predictor.image_size) == (
        "crop",
        56,
        56,
        64,
    )
    # The model was read back whole, and its temporary local copy removed.
    np.testing.assert_allclose(predictor.predict(_pixels(56)), np.asarray(model(_pixels(56))), atol=1e-6)
    assert os.listdir(scratch) == []
    # 64px images get the crop policy's centre crop before the model.
    image = _pixels(64, count=1)[0].astype(np.uint8)
    np.testing.assert_array_equal(predictor.prepare([image])[0], image[4:60, 4:60].astype(np.float32))


def test_load_gcs_keras_file_with_gcs_classes_file(saved, gcs_bucket):
    path, _ = saved
    bucket = storage.gcs_client().bucket(gcs_bucket)
    bucket.blob("models/small.keras").upload_from_filename(path)
    names = ("alpha", "beta", "gamma", "delta", "epsilon")  # One per class of the model: no fewer.
    bucket.blob("models/names.txt").upload_from_string("".join(f"{name}\n" for name in names))
    predictor = jobdir.load(
        f"gs://{gcs_bucket}/models/small.keras", classes=f"gs://{gcs_bucket}/models/names.txt"
    )
    assert predictor.class_names == names
    assert predictor.class_name(1) == "beta" and predictor.class_name(4) == "epsilon"
    # No config: images larger than the input are centre-cropped to it.
    assert (predictor.policy, predictor.input_size, predictor.image_size) == ("crop", 56, 64)


def test_load_local_job_dir_with_classes_json(tmp_path):
    _model(64).save(str(tmp_path / "model.keras"))
    (tmp_path / "classes.json").write_text(json.dumps(CLASSES[::-1]))
    predictor = jobdir.load(str(tmp_path))
    assert predictor.class_names == tuple(c["name"] for c in CLASSES)
    assert (predictor.policy, predictor.input_size, predictor.image_size) == ("none", 64, 64)


def test_load_errors_name_the_file(saved, gcs_bucket, tmp_path):
    path, _ = saved
    missing = f"gs://{gcs_bucket}/jobs/empty"
    with pytest.raises(jobdir.ModelLoadError, match=f"{missing}/model.keras: model not found"):
        jobdir.load(missing)
    bucket = storage.gcs_client().bucket(gcs_bucket)
    bucket.blob("jobs/bad/model.keras").upload_from_filename(path)
    bucket.blob("jobs/bad/config.json").upload_from_string("[1, 2]")
    with pytest.raises(
        jobdir.ModelLoadError, match=f"gs://{gcs_bucket}/jobs/bad/config.json: expected a JSON object"
    ):
        jobdir.load(f"gs://{gcs_bucket}/jobs/bad")
    # A recorded policy that cannot produce the model's input size.
    (tmp_path / "config.json").write_text(json.dumps({"policy": "none", "crop_size": 56}))
    os.symlink(path, tmp_path / "model.keras")
    with pytest.raises(
        jobdir.ModelLoadError, match="policy 'none' turns 64px images into 64px, but the model takes 56px"
    ):
        jobdir.load(str(tmp_path))
    with pytest.raises(jobdir.ModelLoadError, match="cannot read classes"):
        jobdir.load(path, classes=f"gs://{gcs_bucket}/no-classes.txt")


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_read_json(where, tmp_path, request):
    base = f"gs://{request.getfixturevalue('gcs_bucket')}/run" if where == "gcs" else str(tmp_path)
    storage.write_bytes(storage.join(base, "metrics.json"), b'{"test": {"accuracy": 0.5}}')
    storage.write_bytes(storage.join(base, "broken.json"), b'{"test": ')
    assert jobdir.read_json(storage.join(base, "metrics.json")) == {"test": {"accuracy": 0.5}}
    assert jobdir.read_json(storage.join(base, "broken.json")) is None
    assert jobdir.read_json(storage.join(base, "missing.json")) is None


def test_check_arch():
    jobdir.check_arch("gs://b/j", None, "minception")  # a fresh job dir
    jobdir.check_arch("gs://b/j", json.dumps({"arch": "minception"}), "minception")
    with pytest.raises(jobdir.JobDirError) as error:
        jobdir.check_arch("gs://b/j", json.dumps({"arch": "inception_v1"}), "minception")
    assert str(error.value) == (
        "job dir gs://b/j holds a run of architecture 'inception_v1', not 'minception'; use another --job-dir"
    )


def test_check_classes():
    jobdir.check_classes("/jobs/a", None, CLASSES)
    jobdir.check_classes("/jobs/a", json.dumps(CLASSES), CLASSES)
    renamed = [{**c, "name": "other"} for c in CLASSES]  # only the wnids count
    jobdir.check_classes("/jobs/a", json.dumps(renamed), CLASSES)
    for previous in (CLASSES[:3], CLASSES[::-1]):
        with pytest.raises(jobdir.JobDirError) as error:
            jobdir.check_classes("/jobs/a", json.dumps(previous), CLASSES)
        assert str(error.value) == (
            f"job dir /jobs/a holds a run on {len(previous)} other classes "
            f"(this dataset has {NUM_CLASSES}); use another --job-dir"
        )


NAME_LISTS = [
    ("goldfish, Carassius auratus", "tabby, tabby cat", "n01443537"),
    ("42",),
    ("null",),
    ("true", "3.5"),
    ('say "hi"', "naïve café", "{x}"),
]


def _formats(names):
    """Every accepted way of writing ``names``."""
    entries = [{"index": i, "wnid": f"n{i:08d}", "name": name} for i, name in enumerate(names)]
    return {
        "json list": json.dumps(names),
        "metadata list": json.dumps(entries[::-1]),
        "metadata object": json.dumps({"schema_version": 1, "classes": entries}),
        "plain text": "\n".join(names) + "\n",
        "plain text, blank lines and padding": "\n\n".join(f"  {name}\t" for name in names),
    }


@pytest.mark.parametrize("names", NAME_LISTS)
def test_parse_class_list_reads_every_format(names):
    for fmt, text in _formats(list(names)).items():
        assert jobdir.parse_class_list(text) == names, fmt


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("{}", ()),
        ("[]", ()),
        ("[1, 2]", ("1", "2")),
        ('{"classes": [{"index": 1, "name": "y"}, {"index": 0, "name": "x"}]}', ("x", "y")),
        ('"one"\n', ('"one"',)),
        ("one\r\ntwo\r\n", ("one", "two")),
    ],
)
def test_parse_class_list_edge_cases(text, expected):
    assert jobdir.parse_class_list(text) == expected

"""Records checked against metadata.json at the trainer's start (``contracts.record_check``).

Each audit case is a copy of the Beam job's own records with one record rewritten through
``contracts.schema.encode_example`` (one field changed), or metadata.json edited. The trainer
(``trainer.task.main``) and ``trainer.evaluate`` must refuse it with one ``error:`` line naming
the shard and the record, exit code 2, before anything trains; before the check each ended in
a 33 to 61-line TensorFlow traceback naming no shard, or trained on silently.
"""

import io
import json
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from contracts import dataset, record_check, schema
from tests.trainer import helpers


@pytest.fixture
def data_copy(sample_records, tmp_path):
    """A private copy of the sample's records (the session's own are read-only)."""
    copy = str(tmp_path / "data")
    shutil.copytree(sample_records[0], copy)
    return copy


def _metadata_path(data_dir):
    return os.path.join(data_dir, schema.METADATA_FILE)


def _shard(data_dir, split, index):
    with open(_metadata_path(data_dir)) as f:
        return os.path.join(data_dir, json.load(f)["splits"][split]["shards"][index])


def _records(path):
    return [record.numpy() for record in tf.data.TFRecordDataset(path)]


def _rewrite(path, index, change):
    """Rewrites record ``index`` of the shard at ``path`` as ``change(decoded fields)`` returns it."""
    records = _records(path)
    records[index] = change(schema.decode_example(records[index]))
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


def _encode(fields, **changed):
    """The project's encoder, with ``changed`` fields in place of the record's own."""
    f = {**fields, **changed}
    return schema.encode_example(
        f["image"],
        height=f["height"],
        width=f["width"],
        filename=f["filename"],
        source_split=f["source_split"],
        label=f["label"],
        wnid=f["wnid"],
        class_name=f["class_name"],
        box=f["box"],
        image_format=f["format"],
    )


def _edited(fields, edit):
    """The record re-encoded, then its proto edited (what the encoder cannot write: a float label)."""
    example = tf.train.Example.FromString(_encode(fields))
    edit(example.features.feature)
    return example.SerializeToString()


def _float_label(feature):
    value = feature[schema.LABEL].int64_list.value[0]
    feature[schema.LABEL].Clear()
    feature[schema.LABEL].float_list.value.append(float(value))


def _smaller_image(fields, declared):
    """The record's image at 32x32, its declared size 32x32 too when ``declared``."""
    image = Image.open(io.BytesIO(fields["image"])).resize((32, 32))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    size = 32 if declared else fields["height"]
    return _encode(fields, image=buffer.getvalue(), height=size, width=size)


def _train(data_dir, tmp_path, capsys):
    """Runs ``python -m trainer.task`` in-process; returns ``(exit code, error lines, job dir)``."""
    from trainer import task

    job = str(tmp_path / "job")
    code = task.main(helpers.quick_args(data_dir, job, 1, "--explain", "false"))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("error:")], job


def _refused_by_the_trainer(data_dir, tmp_path, capsys, message):
    code, errors, job = _train(data_dir, tmp_path, capsys)
    assert (code, errors) == (2, [f"error: {message}"])
    assert not os.path.exists(os.path.join(job, "config.json"))  # Refused before anything was written.


# ------------------------------------------------------------------------------ the audit's cases


def test_label_outside_the_classes_is_refused_naming_shard_and_record(data_copy, tmp_path, capsys):
    # A record in the middle of the second shard: every record's label is checked, not the first only.
    shard = _rewrite(_shard(data_copy, "train", 1), 37, lambda fields: _encode(fields, label=5))
    message = f"{shard}: record 37: label 5 is outside [0, 5): metadata.json lists 5 classes"
    _refused_by_the_trainer(data_copy, tmp_path, capsys, message)


def test_negative_label_is_refused(data_copy, tmp_path, capsys):
    shard = _rewrite(_shard(data_copy, "valid", 0), 3, lambda fields: _encode(fields, label=-1))
    message = f"{shard}: record 3: label -1 is outside [0, 5): metadata.json lists 5 classes"
    _refused_by_the_trainer(data_copy, tmp_path, capsys, message)


def test_float_label_is_refused_naming_shard_and_record(data_copy, tmp_path, capsys):
    shard = _rewrite(_shard(data_copy, "train", 0), 21, lambda fields: _edited(fields, _float_label))
    message = f"{shard}: record 21: feature {schema.LABEL} holds a float value, the reader expects an int64"
    _refused_by_the_trainer(data_copy, tmp_path, capsys, message)


def test_wrong_image_size_is_refused_naming_shard_and_record(data_copy, tmp_path, capsys, sample_info):
    size = sample_info.image_size
    shard = _rewrite(_shard(data_copy, "test", 1), 2, lambda fields: _smaller_image(fields, declared=True))
    message = f"{shard}: record 2: its image is 32x32, metadata.json says {size}x{size}"
    _refused_by_the_trainer(data_copy, tmp_path, capsys, message)


def test_image_decoding_to_another_size_than_declared_is_refused(data_copy, tmp_path, capsys, sample_info):
    # The first record of a shard is decoded, as the reader decodes it.
    size = sample_info.image_size
    shard = _rewrite(_shard(data_copy, "train", 1), 0, lambda fields: _smaller_image(fields, declared=False))
    message = f"{shard}: record 0: its image decodes to 32x32, metadata.json says {size}x{size}"
    _refused_by_the_trainer(data_copy, tmp_path, capsys, message)


def test_fewer_classes_in_metadata_than_the_labels_use_is_refused(data_copy, tmp_path, capsys):
    path = _metadata_path(data_copy)
    with open(path) as f:
        metadata = json.load(f)
    metadata["classes"] = metadata["classes"][:4]
    for entry in metadata["splits"].values():
        if "class_counts" in entry:
            entry["class_counts"] = entry["class_counts"][:4]
    with open(path, "w") as f:
        json.dump(metadata, f)
    # The oracle: the first record, in the order the trainer reads the shards, labelled 4.
    first = next(
        (shard, index)
        for split in ("train", "valid", "test")
        for shard in (os.path.join(data_copy, name) for name in metadata["splits"][split]["shards"])
        for index, record in enumerate(_records(shard))
        if schema.decode_example(record)["label"] == 4
    )
    message = f"{first[0]}: record {first[1]}: label 4 is outside [0, 4): metadata.json lists 4 classes"
    _refused_by_the_trainer(data_copy, tmp_path, capsys, message)


@pytest.mark.parametrize(
    ("key", "shard_index", "record"),
    [
        (schema.IMAGE, 1, 0),  # Every feature of a shard's first record is checked...
        (schema.HEIGHT, 0, 60),  # ... the label and the declared size of every record.
    ],
)
def test_missing_feature_is_refused(data_copy, tmp_path, capsys, key, shard_index, record):
    def drop(feature):
        del feature[key]

    shard = _rewrite(_shard(data_copy, "train", shard_index), record, lambda fields: _edited(fields, drop))
    message = f"{shard}: record {record}: feature {key} is missing"
    _refused_by_the_trainer(data_copy, tmp_path, capsys, message)


def test_first_image_that_does_not_decode_is_refused(data_copy, tmp_path, capsys):
    # A JPEG cut after its headers: the reader's decode fails on it mid-training, naming no file.
    def cut(fields):
        return _encode(fields, image=fields["image"][:200])

    shard = _rewrite(_shard(data_copy, "valid", 1), 0, cut)
    code, errors, _ = _train(data_copy, tmp_path, capsys)
    assert code == 2 and len(errors) == 1
    assert errors[0].startswith(f"error: {shard}: record 0: its image does not decode (")


def test_labels_other_than_the_class_counts_are_refused(data_copy, tmp_path, capsys, sample_info):
    # A label still in range, but not the class metadata.json counted: the records are of another run.
    shard = _shard(data_copy, "train", 0)
    label = schema.decode_example(_records(shard)[5])["label"]
    _rewrite(shard, 5, lambda fields: _encode(fields, label=(label + 1) % 5))
    low = min(label, (label + 1) % 5)
    counts = sample_info.class_counts("train")
    held = counts[low] + (1 if low != label else -1)
    message = (
        f"{_metadata_path(data_copy)}: split 'train': its records hold {held} images of class {low} "
        f"({sample_info.class_names[low]}), metadata.json lists {counts[low]}: it does not describe these "
        "records; rewrite the dataset with python -m preprocessing.task"
    )
    _refused_by_the_trainer(data_copy, tmp_path, capsys, message)


def test_evaluate_refuses_a_bad_record_of_its_split(data_copy, tmp_path, capsys):
    from trainer import evaluate

    shard = _rewrite(_shard(data_copy, "test", 0), 1, lambda fields: _encode(fields, label=9))
    # The records are checked before the model is loaded: no model is needed to see the refusal.
    code = evaluate.main(["--model", str(tmp_path / "job"), "--data-dir", data_copy, "--split", "test"])
    err = capsys.readouterr().err
    expected = f"error: {shard}: record 1: label 9 is outside [0, 5): metadata.json lists 5 classes"
    assert (code, err.strip().splitlines()) == (2, [expected])


# ------------------------------------------------------------------------------ the check itself


def test_the_sample_passes_and_its_labels_are_the_class_counts(sample_info):
    counted = record_check.check_records(sample_info)
    assert set(counted) == {"train", "valid", "test"}  # ``unlabeled`` is checked, its labels are not.
    for split, counts in counted.items():
        assert counts == sample_info.class_counts(split), split
        # An oracle outside the checker: each record decoded by the schema's own decoder.
        labels = [schema.decode_example(r)["label"] for p in sample_info.shards[split] for r in _records(p)]
        assert counts == tuple(np.bincount(labels, minlength=5)), split


def test_truncated_shard_is_one_error_naming_it(data_copy):
    shard = _shard(data_copy, "valid", 1)
    with open(shard, "rb") as f:
        data = f.read()
    with open(shard, "wb") as f:
        f.write(data[: len(data) // 2])
    info = dataset.load_metadata(data_copy)
    with pytest.raises(dataset.DataError, match=re.escape(f"{shard}: truncated or corrupt TFRecord shard")):
        record_check.check_records(info, splits=("valid",))


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda feature: feature[schema.HEIGHT].Clear(), f"feature {schema.HEIGHT} holds no value"),
        (
            lambda feature: feature[schema.WIDTH].int64_list.value.append(7),
            f"feature {schema.WIDTH} holds 2 values, the reader expects 1",
        ),
        (
            lambda feature: (
                feature[schema.FILENAME].Clear(),
                feature[schema.FILENAME].int64_list.value.append(1),
            ),
            f"feature {schema.FILENAME} holds an int64 value, the reader expects a bytes",
        ),
    ],
)
def test_record_problem_names_the_feature(sample_info, edit, problem):
    record = _records(sample_info.shards["train"][0])[0]
    assert record_check.record_problem(record, sample_info.image_size, 5) is None
    fields = schema.decode_example(record)
    bad = _edited(fields, edit)
    assert record_check.record_problem(bad, sample_info.image_size, 5).startswith(problem)
    assert record_check.record_problem(b"\xff not a proto", 64) == "not a tf.train.Example"

"""The records checked against ``metadata.json`` before anything reads them for training or evaluation.

A record the reader cannot use fails deep inside ``tf.data`` with a long traceback that names
no file, and a label outside ``[0, n)`` may not fail at all. :func:`check_records` finds such
records first and names the shard and the record's index in one
:class:`contracts.staging.DataError` (a ``ValueError``: every command line makes it one
``error:`` line, exit code 2). What it checks:

* the first record of every shard, in full: every key of the reader's ``schema.FEATURE_SPEC``
  present (or defaulted) with one value of its type, the reader's own parse succeeds, and its
  image decodes as the reader decodes it (``schema.decode_jpeg``) to ``S x S x 3``.
* every record of every shard: its label (an int64; in a labelled split in ``[0, n)``, ``n`` the
  classes metadata.json lists) and its declared height and width (metadata.json's
  ``image_size``). A batched parse of these three integers, no image copied or decoded.
* the labels counted per class equal metadata.json's ``class_counts`` where it has them.

The cost is one more read of the shards: on 100,000 synthetic 64x64 records (336 MB, 16
shards, 2 shared cores) 6.7 s, against 4.5 s for :func:`contracts.dataset.verify_data`'s
count; on the tests' sample (246 records, 8 shards) 0.8 s.

What passes, a documented limit: a record beyond the first of its shard whose other features
(file name, box, ...) have the wrong type, or whose image does not decode or decodes to
another size than it declares. The Beam job writes neither; such a record fails when it is read.
"""

import re

import numpy as np
import tensorflow as tf
from google.protobuf import message  # TensorFlow's own dependency: the tf.train.Example parser.

from contracts import schema, staging

# Records parsed per batch: each batch is one parse call, and a bad batch is searched record by record.
BATCH = 4096
# Records at the start of each shard checked in full (every feature, the image decoded).
FULLY_CHECKED_PER_SHARD = 1
# What every record is parsed for: the label and the declared size (integers: no image is copied).
_EVERY_RECORD = {key: schema.FEATURE_SPEC[key] for key in (schema.LABEL, schema.HEIGHT, schema.WIDTH)}
_KINDS = {tf.string: "bytes_list", tf.int64: "int64_list", tf.float32: "float_list"}
_KIND_NAMES = {"bytes_list": "a bytes", "int64_list": "an int64", "float_list": "a float", None: "no"}


def check_records(info, splits=None):
    """Checks the records of ``splits`` against metadata.json (see the module's docstring).

    Args:
        info: A :class:`contracts.dataset.DatasetInfo`.
        splits: The splits to check (default: every split metadata.json lists).

    Returns:
        ``{split: records per class}`` of the labelled splits checked, as int tuples.

    Raises:
        contracts.staging.DataError: The first record that fails, naming its shard and
            index; a truncated shard; or class counts other than metadata.json's.
    """
    counted = {}
    for split in splits or tuple(info.shards):
        labelled = split in schema.LABELED_SPLITS
        counts = np.zeros(info.num_classes, np.int64)
        for path in info.shards[split]:
            counts += _check_shard(path, info, labelled)
        if labelled:
            counted[split] = tuple(int(c) for c in counts)
            _check_class_counts(info, split, counted[split])
    return counted


def record_problem(serialized, image_size, num_classes=None):
    """Returns what is wrong with one serialized record, or ``None`` when the reader can use it.

    Args:
        serialized: The record's bytes.
        image_size: The side metadata.json gives every image.
        num_classes: The classes metadata.json lists; ``None`` skips the label (an unlabelled split).
    """
    try:
        example = tf.train.Example.FromString(serialized)
    except message.DecodeError:
        return "not a tf.train.Example"
    features = example.features.feature
    for key, spec in schema.FEATURE_SPEC.items():
        kind = features[key].WhichOneof("kind") if key in features else None
        if kind is None:  # Absent or empty: the parser gives the default, if the key has one.
            if spec.default_value is None:
                return f"feature {key} is missing" if key not in features else f"feature {key} holds no value"
            continue
        expected = _KINDS[spec.dtype]
        if kind != expected:
            return (
                f"feature {key} holds {_KIND_NAMES[kind]} value, the reader expects {_KIND_NAMES[expected]}"
            )
        values = getattr(features[key], kind).value
        if len(values) != 1:
            return f"feature {key} holds {len(values)} values, the reader expects 1"
    height, width = (features[key].int64_list.value[0] for key in (schema.HEIGHT, schema.WIDTH))
    if (height, width) != (image_size, image_size):
        return f"its image is {width}x{height}, metadata.json says {image_size}x{image_size}"
    if num_classes is not None:
        label = _value(features, schema.LABEL, schema.NO_LABEL)
        if not 0 <= label < num_classes:
            return f"label {label} is outside [0, {num_classes}): metadata.json lists {num_classes} classes"
    return None


def _value(features, key, default):
    """The one value of an int64 feature checked above, or ``default`` where it is absent or empty."""
    values = features[key].int64_list.value if key in features else ()
    return values[0] if values else default


def _tf_message(error):
    """A TensorFlow error's first line without the op's wrapping (``{{function_node ...}}``, ``[Op:...]``)."""
    line = error.message.strip().splitlines()[0]
    return re.sub(r"\s*\[Op:\w+\]$", "", re.sub(r"^\{\{.*?\}\}\s*", "", line))


def _error(path, index, problem):
    return staging.DataError(f"{path}: record {index}: {problem}")


def _records(path, batch_size):
    """Yields ``(index of the first record, serialized [B])`` batches of one shard."""
    start = 0
    try:
        for serialized in tf.data.TFRecordDataset(path, buffer_size=1 << 22).batch(batch_size).prefetch(1):
            yield start, serialized
            start += int(serialized.shape[0])
    except tf.errors.DataLossError as error:
        reason = _tf_message(error)
        raise staging.DataError(f"{path}: truncated or corrupt TFRecord shard ({reason})") from error


def _raise_first_problem(path, start, serialized, info, labelled, cause):
    """Raises the :class:`DataError` of the first record of a batch that :func:`record_problem` finds.

    ``cause`` is the message for a batch in which it finds none: then the records'
    range is named, as narrow as the parse that failed can tell.
    """
    records = serialized.numpy()
    for offset, record in enumerate(records):
        problem = record_problem(record, info.image_size, info.num_classes if labelled else None)
        if problem is not None:
            raise _error(path, start + offset, problem)
    raise staging.DataError(f"{path}: records {start} to {start + len(records) - 1}: {cause}")


def _check_shard(path, info, labelled):
    """Checks one shard: its first records in full, the label and declared size of every record.

    Returns:
        The shard's records per class (zeros for an unlabelled split).
    """
    counts = np.zeros(info.num_classes, np.int64)
    size = info.image_size
    for start, serialized in _records(path, BATCH):
        if start == 0:  # One read of the shard serves both checks.
            _check_in_full(path, serialized[:FULLY_CHECKED_PER_SHARD].numpy(), info, labelled)
        try:
            parsed = tf.io.parse_example(serialized, _EVERY_RECORD)
        except tf.errors.InvalidArgumentError as error:  # A missing size or a float label: find which record.
            _raise_first_problem(path, start, serialized, info, labelled, _tf_message(error))
        labels = parsed[schema.LABEL].numpy()
        bad = (parsed[schema.HEIGHT].numpy() != size) | (parsed[schema.WIDTH].numpy() != size)
        if labelled:
            bad |= (labels < 0) | (labels >= info.num_classes)
        if bad.any():
            _raise_first_problem(
                path, start, serialized, info, labelled, "a label or an image size is out of range"
            )
        if labelled:
            counts += np.bincount(labels, minlength=info.num_classes)
    return counts


def _check_in_full(path, records, info, labelled):
    """Checks a shard's first ``records`` in full: :func:`record_problem`, the reader's parse, the decode."""
    size = info.image_size
    for index, record in enumerate(records):
        problem = record_problem(record, size, info.num_classes if labelled else None)
        if problem is not None:
            raise _error(path, index, problem)
        try:  # What record_problem reads the reader's rules as, the reader's own parse and decode.
            image = schema.parse_batch(record)[schema.IMAGE]
        except tf.errors.InvalidArgumentError as error:
            raise _error(path, index, f"it does not parse ({_tf_message(error)})") from None
        try:
            shape = tuple(schema.decode_jpeg(image).shape)
        except tf.errors.InvalidArgumentError as error:
            raise _error(path, index, f"its image does not decode ({_tf_message(error)})") from None
        if shape != (size, size, 3):
            problem = f"its image decodes to {shape[1]}x{shape[0]}, metadata.json says {size}x{size}"
            raise _error(path, index, problem)


def _check_class_counts(info, split, counts):
    listed = info.class_counts(split)
    if listed is None or tuple(listed) == counts:
        return
    if len(listed) != len(counts):
        raise staging.DataError(
            f"{info.metadata_path}: split {split!r} lists {len(listed)} class counts, for {len(counts)} "
            "classes"
        )
    index = next(i for i, (a, b) in enumerate(zip(listed, counts, strict=True)) if a != b)
    raise staging.DataError(
        f"{info.metadata_path}: split {split!r}: its records hold {counts[index]} images of class {index} "
        f"({info.class_names[index]}), metadata.json lists {listed[index]}: it does not describe these "
        "records; rewrite the dataset with python -m preprocessing.task"
    )

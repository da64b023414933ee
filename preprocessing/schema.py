"""The one place where TFRecord feature keys and the dataset layout live.

Every record the Beam job writes is a ``tf.train.Example`` built by
:func:`encode_example`; the trainer parses batches of them with
:func:`parse_batch`. Keys, shard names and the metadata file name are shared
constants so that the writer and the readers cannot drift apart.
"""

import json

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1
METADATA_FILE = "metadata.json"
REJECTED_FILE = "rejected.jsonl"
SHARD_SUFFIX = ".tfrecord"

SPLITS = ("train", "valid", "test", "unlabeled")
LABELED_SPLITS = ("train", "valid", "test")

# Feature keys.
IMAGE = "image/encoded"
FORMAT = "image/format"
HEIGHT = "image/height"
WIDTH = "image/width"
FILENAME = "image/filename"
LABEL = "image/class/label"
WNID = "image/class/wnid"
CLASS_NAME = "image/class/name"
SOURCE_SPLIT = "image/source_split"
BOX_XMIN = "image/object/bbox/xmin"
BOX_YMIN = "image/object/bbox/ymin"
BOX_XMAX = "image/object/bbox/xmax"
BOX_YMAX = "image/object/bbox/ymax"
HAS_BOX = "image/object/has_box"

# Label of records without one (the unlabelled test/ folder).
NO_LABEL = -1

FEATURE_SPEC = {
    IMAGE: tf.io.FixedLenFeature([], tf.string),
    FORMAT: tf.io.FixedLenFeature([], tf.string, default_value="jpeg"),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
    FILENAME: tf.io.FixedLenFeature([], tf.string),
    LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=NO_LABEL),
    WNID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    CLASS_NAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
    SOURCE_SPLIT: tf.io.FixedLenFeature([], tf.string, default_value=""),
    BOX_XMIN: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    BOX_YMIN: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    BOX_XMAX: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    BOX_YMAX: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    HAS_BOX: tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


def shard_name(split, index, num_shards):
    """Returns the file name of one shard, e.g. ``train-00003-of-00016.tfrecord``.

    Args:
        split: One of :data:`SPLITS`.
        index: Zero-based shard index.
        num_shards: Total number of shards of the split.
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


def shard_prefix(split):
    """Returns the prefix shared by every shard of ``split`` (used by Beam's sink)."""
    return f"{split}"


def _bytes(value):
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_example(
    image_bytes,
    *,
    height,
    width,
    filename,
    source_split,
    label=NO_LABEL,
    wnid="",
    class_name="",
    box=None,
    image_format="jpeg",
):
    """Builds one serialized ``tf.train.Example``.

    Args:
        image_bytes: The encoded image (JPEG bytes as read from disk).
        height: Image height in pixels.
        width: Image width in pixels.
        filename: Base name of the source file, e.g. ``n01443537_0.JPEG``.
        source_split: Folder the image came from: ``train``, ``val`` or ``test``.
        label: Class index, or :data:`NO_LABEL`.
        wnid: WordNet id of the class, empty when unlabelled.
        class_name: Human-readable class name.
        box: ``(xmin, ymin, xmax, ymax)`` in pixels, inclusive, or ``None``.
        image_format: Encoding of ``image_bytes``.

    Returns:
        The serialized example as bytes.
    """
    xmin, ymin, xmax, ymax = box if box is not None else (0, 0, 0, 0)
    feature = {
        IMAGE: _bytes(image_bytes),
        FORMAT: _bytes(image_format),
        HEIGHT: _int(height),
        WIDTH: _int(width),
        FILENAME: _bytes(filename),
        LABEL: _int(label),
        WNID: _bytes(wnid),
        CLASS_NAME: _bytes(class_name),
        SOURCE_SPLIT: _bytes(source_split),
        BOX_XMIN: _int(xmin),
        BOX_YMIN: _int(ymin),
        BOX_XMAX: _int(xmax),
        BOX_YMAX: _int(ymax),
        HAS_BOX: _int(box is not None),
    }
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


def parse_batch(serialized):
    """Parses a batch (or a single) serialized example into a feature dict.

    Args:
        serialized: A string tensor of serialized examples, shape ``[B]`` or ``[]``.

    Returns:
        A dict keyed by the constants above. ``box`` is added as an int32
        ``[..., 4]`` tensor ``(xmin, ymin, xmax, ymax)``.
    """
    features = tf.io.parse_example(serialized, FEATURE_SPEC)
    features["box"] = tf.cast(
        tf.stack(
            [features[BOX_XMIN], features[BOX_YMIN], features[BOX_XMAX], features[BOX_YMAX]],
            axis=-1,
        ),
        tf.int32,
    )
    return features


def decode_example(serialized):
    """Decodes one serialized example into plain Python/numpy values (for tests and tools)."""
    example = tf.train.Example.FromString(serialized)
    feats = example.features.feature

    def _get(key):
        feature = feats[key]
        if feature.HasField("bytes_list"):
            return feature.bytes_list.value[0]
        return feature.int64_list.value[0]

    record = {
        "image": _get(IMAGE),
        "format": _get(FORMAT).decode(),
        "height": int(_get(HEIGHT)),
        "width": int(_get(WIDTH)),
        "filename": _get(FILENAME).decode(),
        "label": int(_get(LABEL)),
        "wnid": _get(WNID).decode(),
        "class_name": _get(CLASS_NAME).decode(),
        "source_split": _get(SOURCE_SPLIT).decode(),
        "has_box": bool(_get(HAS_BOX)),
    }
    box = np.array([_get(BOX_XMIN), _get(BOX_YMIN), _get(BOX_XMAX), _get(BOX_YMAX)])
    record["box"] = tuple(int(v) for v in box) if record["has_box"] else None
    return record


def read_metadata_text(text):
    """Parses and validates the text of ``metadata.json``.

    Raises:
        ValueError: When the schema version is not the one this code reads.
    """
    metadata = json.loads(text)
    version = metadata.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"metadata.json has schema_version {version!r}; this code reads "
            f"version {SCHEMA_VERSION}. Re-run python -m preprocessing.task."
        )
    return metadata

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
    # Filling the proto in place is ~3x faster than building tf.train.Feature
    # objects, and deterministic serialization makes shards byte-identical
    # whichever process (or Beam worker) wrote them.
    example = tf.train.Example()
    feature = example.features.feature
    strings = (
        (IMAGE, image_bytes),
        (FORMAT, image_format),
        (FILENAME, filename),
        (WNID, wnid),
        (CLASS_NAME, class_name),
        (SOURCE_SPLIT, source_split),
    )
    for key, value in strings:
        feature[key].bytes_list.value.append(value.encode("utf-8") if isinstance(value, str) else value)
    integers = (
        (HEIGHT, height),
        (WIDTH, width),
        (LABEL, label),
        (BOX_XMIN, xmin),
        (BOX_YMIN, ymin),
        (BOX_XMAX, xmax),
        (BOX_YMAX, ymax),
        (HAS_BOX, box is not None),
    )
    for key, value in integers:
        feature[key].int64_list.value.append(int(value))
    return example.SerializeToString(deterministic=True)


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


# PIL (the Beam job's conversion, trainer.predict) decodes JPEG with libjpeg's accurate integer
# DCT; TensorFlow's default is the fast one, up to 6 levels apart on the same file. Every
# TensorFlow decode of the project (records, the export's inputs) uses the accurate one, so a
# photo reaches the model as the same pixels whichever path decodes it.
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def decode_jpeg(data):
    """Decodes JPEG bytes to uint8 ``[H, W, 3]`` exactly as PIL's ``convert("RGB")`` does."""
    return tf.io.decode_jpeg(data, channels=3, dct_method=JPEG_DCT_METHOD)


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

"""Reading a dataset the preprocessing job wrote: TFRecord shards -> batches of raw pixels.

The one reader of the dataset contract (``metadata.json`` + shards, see
docs/design.md): the trainer, the explainer and the benchmarks all read
through :func:`load_metadata` and :func:`make_dataset`.

Batches hold float32 images with values in ``[0, 255]`` and int32 labels; the
pipeline never normalizes (each model scales its own input). Training batches
are shuffled with a seed and, when an ``augment`` function is given, augmented
here (the trainer's ``--augment-on host``); without one they stay at the
source size (``--augment-on device`` augments in the training step).
Evaluation batches get the policy's deterministic evaluation transform only.

The training stream is a pure function of (seed, epoch, step), so a resumed
job continues exactly where it stopped (:mod:`contracts.stream`): per epoch,
shard files -> shuffle files -> interleave -> shuffle records -> batch ->
(skip the batches already trained) -> parse + decode the whole batch ->
augment the whole batch -> prefetch. Parsing and decoding whole batches is
faster on a 2-core host than per-record maps (see docs/input_pipeline.md).
"""

import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping

import tensorflow as tf

from contracts import policy as policy_lib
from contracts import resize, schema, staging, stream

AUTOTUNE = tf.data.AUTOTUNE
FEATURES = ("image_label", "all")
EVAL_SPLITS = ("valid", "test", "unlabeled")

# Re-exported: the error type of the whole data layer, the gs:// stager and
# the augmentation seeds of the training stream.
DataError = staging.DataError
stage_data_dir = staging.stage_data_dir
augment_seeds = stream.augment_seeds


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What ``metadata.json`` says about a dataset, with shard paths made absolute.

    Attributes:
        data_dir: Local folder holding metadata.json and the shards.
        source_dir: The folder as given (may be ``gs://...``).
        num_classes: Number of classes.
        class_names: Class names in label order.
        wnids: WordNet ids in label order.
        image_size: Side of the (square) source images.
        split_counts: Records per split.
        shards: Absolute shard paths per split.
        metadata: The parsed metadata.json.
    """

    data_dir: str
    source_dir: str
    num_classes: int
    class_names: tuple
    wnids: tuple
    image_size: int
    split_counts: Mapping
    shards: Mapping
    metadata: Mapping

    @property
    def metadata_path(self):
        """Path of the local metadata.json."""
        return os.path.join(self.data_dir, schema.METADATA_FILE)

    def num_batches(self, split, global_batch_size, drop_remainder=False):
        """Batches in one pass over ``split`` (e.g. ``steps_per_epoch``)."""
        count = self.split_counts[split]
        return count // global_batch_size if drop_remainder else -(-count // global_batch_size)

    @property
    def resize_policy(self):
        """How the job made every image square (:mod:`contracts.resize`); ``crop`` for older datasets."""
        return resize.policy_of(self.metadata)

    def class_counts(self, split):
        """Records of each class in ``split`` (label order), or ``None`` where metadata.json predates them."""
        counts = (self.metadata.get("splits") or {}).get(split, {}).get("class_counts")
        return None if counts is None else tuple(int(c) for c in counts)

    def box_count(self, split):
        """Records of ``split`` with an object box, or ``None`` where metadata.json predates the count."""
        count = (self.metadata.get("splits") or {}).get(split, {}).get("boxes")
        return None if count is None else int(count)


def _metadata_error(path, message):
    return DataError(f"{path}: {message}")


def _read_classes(path, metadata):
    classes = sorted(metadata.get("classes") or [], key=lambda c: c.get("index", -1))
    if not classes:
        raise _metadata_error(path, "no classes listed")
    if [c.get("index") for c in classes] != list(range(len(classes))):
        raise _metadata_error(path, "class indices must be 0..n-1 without gaps")
    return tuple(c["name"] for c in classes), tuple(c["wnid"] for c in classes)


def load_metadata(data_dir, cache_dir=None):
    """Reads and checks ``metadata.json``; stages ``gs://`` folders to a local cache first.

    Args:
        data_dir: Local folder or ``gs://bucket/prefix`` written by the preprocessing job.
        cache_dir: Local staging folder for ``gs://`` input (see :func:`contracts.staging.stage_data_dir`).

    Returns:
        A :class:`DatasetInfo`.

    Raises:
        DataError: metadata.json missing or unreadable, wrong schema version,
            or a listed shard missing (every missing file is named).
    """
    source_dir = str(data_dir)
    local_dir = staging.stage_data_dir(source_dir, cache_dir)
    path = os.path.join(local_dir, schema.METADATA_FILE)
    if not os.path.isfile(path):
        raise _metadata_error(path, "metadata file not found; run python -m preprocessing.task first")
    with open(path) as f:
        text = f.read()
    try:
        metadata = schema.read_metadata_text(text)
    except json.JSONDecodeError as error:
        raise _metadata_error(path, f"not valid JSON ({error})") from error
    except ValueError as error:
        raise _metadata_error(path, str(error)) from error
    class_names, wnids = _read_classes(path, metadata)
    size = metadata.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and size[0] == size[1]):
        raise _metadata_error(path, f"image_size must be a square [S, S], got {size!r}")
    splits = metadata.get("splits") or {}
    shards, counts, missing = {}, {}, []
    for split, entry in splits.items():
        shards[split] = tuple(os.path.join(local_dir, name) for name in entry.get("shards", []))
        counts[split] = int(entry.get("count", 0))
        missing += [p for p in shards[split] if not os.path.isfile(p)]
    if missing:
        raise _metadata_error(path, f"lists shards that do not exist: {', '.join(missing)}")
    return DatasetInfo(
        data_dir=local_dir,
        source_dir=source_dir,
        num_classes=len(class_names),
        class_names=class_names,
        wnids=wnids,
        image_size=int(size[0]),
        split_counts=counts,
        shards=shards,
        metadata=metadata,
    )


def count_records(path):
    """Counts the records of one shard.

    Raises:
        DataError: The shard is truncated or corrupt (names the file).
    """
    dataset = tf.data.TFRecordDataset(path, buffer_size=1 << 22).batch(4096)
    try:
        return int(dataset.reduce(tf.constant(0, tf.int64), lambda n, b: n + tf.size(b, tf.int64)))
    except tf.errors.DataLossError as error:
        raise DataError(f"{path}: truncated or corrupt TFRecord shard ({error.message})") from error


def check_train_classes(info, named=10):
    """Refuses a class without train images (``class_counts``; older metadata is not checked).

    The model would predict it but never train on it, silently. The job refuses to write one
    (``--min-train-per-class``); this catches ``--min-train-per-class 0`` and edited metadata.
    """
    counts = info.class_counts("train") or ()
    empty = [name for name, count in zip(info.class_names, counts, strict=False) if count == 0]
    if empty:
        more = f" and {len(empty) - named} more" if len(empty) > named else ""
        raise DataError(
            f"{info.metadata_path}: {len(empty)} of {info.num_classes} classes have no train images "
            f"(class_counts of train): {', '.join(map(repr, empty[:named]))}{more}; a model cannot learn "
            "them: give them train images or leave them out, and run python -m preprocessing.task again"
        )


def verify_data(info, splits=None):
    """Reads every shard once and checks the record counts against metadata.json.

    The trainer calls this at startup, so a truncated shard, a stale metadata.json
    or a class without train images (when ``train`` is checked) fails before training starts.

    Args:
        info: A :class:`DatasetInfo`.
        splits: Splits to check (default: all).

    Returns:
        ``{split: {shard_path: count}}``.

    Raises:
        DataError: A shard is corrupt, a split's count disagrees with metadata.json, or a class
            has no train images (:func:`check_train_classes`).
    """
    if "train" in (splits or info.shards):
        check_train_classes(info)
    report = {}
    for split in splits or tuple(info.shards):
        counts = {path: count_records(path) for path in info.shards[split]}
        total = sum(counts.values())
        if total != info.split_counts[split]:
            detail = ", ".join(f"{os.path.basename(p)}={n}" for p, n in counts.items())
            raise DataError(
                f"{info.metadata_path}: split {split!r} lists {info.split_counts[split]} records but "
                f"its shards hold {total} ({detail})"
            )
        report[split] = counts
    return report


@contextlib.contextmanager
def translate_data_errors(info, splits=None):
    """Turns a ``tf.errors.DataLossError`` raised while reading into a :class:`DataError` naming the shard.

    Wrap the training or evaluation loop: ``with translate_data_errors(info): model.fit(...)``.
    """
    try:
        yield
    except tf.errors.DataLossError as error:
        verify_data(info, splits)  # Raises a DataError that names the bad shard.
        raise DataError(f"{info.data_dir}: corrupt record while reading ({error.message})") from error


def _decode_batch(serialized, image_size, all_features):
    """Parses a batch of serialized examples and decodes every JPEG to uint8 [B, S, S, 3]."""
    parsed = schema.parse_batch(serialized)
    images = tf.map_fn(
        schema.decode_jpeg,
        parsed[schema.IMAGE],
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        parallel_iterations=16,
    )
    out = {"image": images, "label": tf.cast(parsed[schema.LABEL], tf.int32)}
    if all_features:
        out.update(
            box=parsed["box"],
            has_box=parsed[schema.HAS_BOX] > 0,
            filename=parsed[schema.FILENAME],
            wnid=parsed[schema.WNID],
        )
    return out


def _check_args(info, split, training, augment, features, global_batch_size):
    if split not in info.shards:
        raise ValueError(f"Unknown split {split!r}; {info.metadata_path} has {sorted(info.shards)}.")
    if training and split in EVAL_SPLITS:
        raise ValueError(f"training=True is not allowed for evaluation split {split!r}.")
    if features not in FEATURES:
        raise ValueError(f"features must be one of {FEATURES}, got {features!r}")
    if features == "all" and training and augment is not None:
        raise ValueError("features='all' carries boxes that augmentation would not move; augment nothing.")
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")


def make_dataset(
    info,
    split,
    *,
    global_batch_size,
    training=False,
    policy="none",
    augment=None,
    crop_size=56,
    cache=False,
    seed=0,
    input_context=None,
    repeat=None,
    drop_remainder=None,
    features="image_label",
    shuffle_buffer=10_000,
    steps_per_epoch=None,
    initial_epoch=0,
    initial_step=0,
):
    """Builds the ``tf.data`` stream of one split.

    A training stream is a pure function of ``(seed, epoch, step)`` (see
    :mod:`contracts.stream`): epochs of ``steps_per_epoch`` batches, each its
    own shuffled pass (or passes), starting at ``(initial_epoch, initial_step)``.

    Args:
        info: A :class:`DatasetInfo` from :func:`load_metadata`.
        split: ``train``, ``valid``, ``test`` or ``unlabeled``.
        global_batch_size: Batch size over all replicas.
        training: Shuffle (and augment, when ``augment`` is given); only for ``train``.
        policy: Augmentation policy (:data:`contracts.policy.POLICIES`) whose
            evaluation transform evaluation batches get.
        augment: Optional ``(images, seed) -> images`` applied to training
            batches here (e.g. a :class:`trainer.augment.Augmenter`); ``None``
            yields training images at the source size.
        crop_size: Crop side of the ``crop`` policy.
        cache: Keep decoded uint8 images in memory (training: filled when the
            stream is built; evaluation: after the first pass).
        seed: Seed of the shuffle and of the host augmentation.
        input_context: A ``tf.distribute.InputContext``: batches are per replica
            and the input is sharded per input pipeline (by file when there are at
            least as many shards as pipelines, else by record).
        repeat: Repeat forever (default: ``training``); a training stream
            with ``repeat=False`` yields the single epoch ``initial_epoch``.
        drop_remainder: Drop the last partial batch (default: ``training``;
            training batches are always full).
        features: ``image_label`` yields ``(images, labels)``; ``all`` yields a dict
            with ``image``, ``label``, ``box`` (int32 [B, 4] xmin, ymin, xmax, ymax
            inclusive, in the transformed image), ``has_box``, ``filename``, ``wnid``.
        shuffle_buffer: Records in the shuffle buffer.
        steps_per_epoch: Training steps per epoch (default: one pass over the
            split, the last partial batch dropped); under a strategy every
            input pipeline yields this many batches per replica it feeds.
        initial_epoch: Epoch a training stream starts at (resuming).
        initial_step: Steps of ``initial_epoch`` already trained (resuming).

    Returns:
        A ``tf.data.Dataset`` of float32 images in ``[0, 255]`` and int32 labels.
    """
    _check_args(info, split, training, augment, features, global_batch_size)
    batch_size = global_batch_size
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
    repeat = training if repeat is None else repeat
    drop_remainder = training if drop_remainder is None else drop_remainder
    all_features = features == "all"

    @stream.as_written
    def decode(serialized):
        return _decode_batch(serialized, info.image_size, all_features)

    buffer = max(1, min(shuffle_buffer, info.split_counts.get(split, shuffle_buffer) or 1))
    if training:
        # Replicas fed by this pipeline take one batch each per step.
        per_step = 1
        if input_context is not None:
            per_step = max(1, input_context.num_replicas_in_sync // input_context.num_input_pipelines)
        steps = steps_per_epoch or max(1, info.num_batches(split, global_batch_size, drop_remainder=True))
        dataset = stream.training_batches(
            info.shards[split],
            batch_size=batch_size,
            batches_per_epoch=steps * per_step,
            seed=seed,
            decode=decode,
            shuffle_buffer=buffer,
            cache=cache,
            input_context=input_context,
            initial_epoch=initial_epoch,
            initial_batch=initial_step * per_step,
            repeat=repeat,
        )
        cast = _cast_fn()
        transform = _augment_fn(augment) if augment is not None else lambda batch, seed: cast(batch)
    else:
        dataset = stream.read_records(info.shards[split], input_context)
        if cache:
            dataset = dataset.batch(batch_size).map(decode, num_parallel_calls=AUTOTUNE).unbatch().cache()
            dataset = dataset.repeat() if repeat else dataset
            dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        else:
            dataset = dataset.repeat() if repeat else dataset
            dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
            dataset = dataset.map(decode, num_parallel_calls=AUTOTUNE)
        transform = _eval_fn(policy, info.image_size, crop_size)
    dataset = dataset.map(stream.as_written(transform), num_parallel_calls=AUTOTUNE)
    if not all_features:
        dataset = dataset.map(
            stream.as_written(lambda batch: (batch["image"], batch["label"])), num_parallel_calls=AUTOTUNE
        )
    return dataset.prefetch(AUTOTUNE)


def _augment_fn(augment):
    def transform(batch, seed):
        return {**batch, "image": augment(tf.cast(batch["image"], tf.float32), seed)}

    return transform


def _cast_fn():
    def transform(batch):
        return {**batch, "image": tf.cast(batch["image"], tf.float32)}

    return transform


def _eval_fn(policy, image_size, crop_size):
    offset = policy_lib.crop_offset(policy, image_size, crop_size)
    size = policy_lib.output_size(policy, image_size, crop_size)

    def transform(batch):
        images = tf.cast(batch["image"], tf.float32)
        out = {**batch, "image": policy_lib.eval_transform(policy, images, image_size, crop_size)}
        if "box" in batch and offset:
            out["box"] = tf.clip_by_value(batch["box"] - offset, 0, size - 1)
        return out

    return transform

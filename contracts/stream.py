"""Record streams of the dataset contract; the training stream is a pure function of (seed, epoch, step).

:func:`read_records` reads the serialized records of a split's shards for one
input pipeline (evaluation and training alike). :func:`training_batches` builds
the training stream out of it, so that a job resumed at epoch ``e`` step ``k``
continues with exactly the batches and augmentation seeds the interrupted job
would have used:

* epoch ``e`` is its own stream: passes ``p = 0, 1, ...`` over the pipeline's
  records, pass ``p`` in the order drawn from ``(seed, e, p)`` (the file order,
  then the record shuffle buffer), batched across pass boundaries and cut after
  ``batches_per_epoch`` batches. An epoch shorter than a pass sees a fresh
  random subset; a longer one continues into the next pass. No epoch depends
  on the ones before it.
* batch ``b`` of epoch ``e`` of pipeline ``i`` is augmented with the stateless
  seed :func:`batch_seed` ``(seed, e, b, i)``.
* the stream starts at ``(initial_epoch, initial_batch)``: the skipped batches
  of the first epoch are read but never decoded, so resuming late in an epoch
  costs reading records only.
* with ``cache=True`` the decoded records of the pipeline are kept in memory
  in one fixed order (filled once, when the stream is built, so the cache
  serves every epoch however short); each pass then draws its order from the
  shuffle buffer alone.

Every key is derived with ``stateless_fold_in`` (Philox), never from a
generator's state. The record shuffle buffer is ``tf.data``'s, seeded with a
derived scalar, which ``tf.data`` combines with TensorFlow's global seed (the
trainer sets it to its ``--seed``).
"""

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
_ALG = "philox"
# One independent key per purpose, so the file order, the record order and the
# augmentation of the same (epoch, pass/batch) never share random numbers.
_FILE_ORDER, _RECORD_ORDER, _AUGMENT, _MIXING = 1, 2, 3, 4
_FOREVER = np.iinfo(np.int64).max
# Graph seed of the record shuffle (any non-zero constant; see ``shuffled``).
_GRAPH_SEED = 87654321


def as_written(function):
    """``function`` for ``Dataset.map`` and ``flat_map``, traced as written (AutoGraph off).

    None of the pipeline's functions branches in Python on a tensor (a condition on one
    raises when traced). AutoGraph's conversion of each, with its check of every call
    inside, was part of the tenth of a quick run py-spy found in AutoGraph
    (docs/trainer.md, "Benchmark").
    """
    return tf.autograph.experimental.do_not_convert(function)


def derive_seed(seed, *path):
    """Returns the int64 ``[2]`` stateless seed at ``path`` (integers or int tensors) under ``seed``."""
    key = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    for value in path:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64), alg=_ALG)
    return key


def batch_seed(seed, epoch, batch, pipeline=0):
    """Returns the int64 ``[2]`` augmentation seed of batch ``batch`` of ``epoch`` of ``pipeline``."""
    return derive_seed(seed, _AUGMENT, epoch, batch, pipeline)


def mixing_seed(seed, step, replica=0):
    """Returns the int64 ``[2]`` seed of the in-step batch mixing at global ``step`` on ``replica``."""
    return derive_seed(seed, _MIXING, step, replica)


def augment_seeds(seed, batches_per_epoch, initial_epoch=0, initial_batch=0, pipeline=0):
    """The augmentation seeds of a training stream, in the stream's order.

    A device-side training step can zip them with an un-augmented stream built
    with the same arguments to reproduce host augmentation.
    """
    _check_start(batches_per_epoch, initial_epoch, initial_batch)
    stream = _by_epoch(
        lambda epoch: tf.data.Dataset.range(batches_per_epoch),
        batches_per_epoch=batches_per_epoch,
        initial_epoch=initial_epoch,
        initial_batch=initial_batch,
        repeat=True,
    )
    return stream.map(as_written(lambda epoch, batch, _: batch_seed(seed, epoch, batch, pipeline)))


def _shard_files(files, input_context):
    """Returns ``(files of this pipeline, whether records must be sharded instead)``."""
    files = list(files)
    if input_context is None or input_context.num_input_pipelines <= 1:
        return files, False
    pipelines = input_context.num_input_pipelines
    if len(files) >= pipelines:
        return files[input_context.input_pipeline_id :: pipelines], False
    return files, True


def read_records(files, input_context=None, order_seed=None):
    """Serialized records of ``files``, sharded for this input pipeline.

    Args:
        files: Shard paths of one split.
        input_context: A ``tf.distribute.InputContext``: sharded by file when
            there are at least as many files as input pipelines, else by record.
        order_seed: ``None`` reads the files in the listed order; an int
            ``[2]`` seed permutes them statelessly first.
    """
    files, shard_records = _shard_files(files, input_context)
    names = tf.constant(files, tf.string)
    if order_seed is not None:
        names = tf.random.experimental.stateless_shuffle(names, order_seed, alg=_ALG)
    dataset = tf.data.Dataset.from_tensor_slices(names).interleave(
        lambda path: tf.data.TFRecordDataset(path, buffer_size=1 << 20),
        cycle_length=max(1, min(len(files), 16)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    if shard_records:
        # Every pipeline reads the same order (same seed), so the shards are disjoint.
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return dataset


def _check_start(batches_per_epoch, initial_epoch, initial_batch):
    if batches_per_epoch < 1:
        raise ValueError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
    if initial_epoch < 0 or not 0 <= initial_batch < batches_per_epoch:
        raise ValueError(
            f"cannot start at epoch {initial_epoch} batch {initial_batch} "
            f"of epochs of {batches_per_epoch} batches"
        )


def _by_epoch(epoch_batches, *, batches_per_epoch, initial_epoch, initial_batch, repeat):
    """``(epoch, batch index, batch)`` of epochs ``initial_epoch, ...``, the first from ``initial_batch``."""
    first_epoch = tf.constant(int(initial_epoch), tf.int64)
    first_batch = tf.constant(int(initial_batch), tf.int64)

    def one_epoch(epoch):
        # range() first: zip stops at the epoch's end without pulling another batch.
        indexed = tf.data.Dataset.zip(tf.data.Dataset.range(batches_per_epoch), epoch_batches(epoch))
        indexed = indexed.skip(tf.where(tf.equal(epoch, first_epoch), first_batch, tf.constant(0, tf.int64)))
        return indexed.map(as_written(lambda index, batch: (epoch, index, batch)))

    stop = _FOREVER if repeat else initial_epoch + 1
    return tf.data.Dataset.range(initial_epoch, stop).flat_map(as_written(one_epoch))


def _scalar_seed(key):
    return tf.random.stateless_uniform([], key, minval=None, maxval=None, dtype=tf.int64, alg=_ALG)


def training_batches(
    files,
    *,
    batch_size,
    batches_per_epoch,
    seed,
    decode,
    shuffle_buffer,
    cache=False,
    input_context=None,
    initial_epoch=0,
    initial_batch=0,
    repeat=True,
):
    """The training stream of one input pipeline: ``(decoded batch, augmentation seed)`` elements.

    Args:
        files: Shard paths of the training split.
        batch_size: Records per batch (per replica under a strategy).
        batches_per_epoch: Batches this pipeline yields per epoch (steps per
            epoch times the replicas it feeds).
        seed: The run's seed.
        decode: ``serialized [B] -> dict`` of the decoded batch.
        shuffle_buffer: Records in the shuffle buffer.
        cache: Keep this pipeline's decoded records in memory (filled here).
        input_context: A ``tf.distribute.InputContext`` (see :func:`read_records`).
        initial_epoch: Epoch the stream starts at.
        initial_batch: Batches of ``initial_epoch`` to skip (already trained).
        repeat: Yield epochs forever; ``False``: only ``initial_epoch``.

    Returns:
        A ``tf.data.Dataset`` of ``(batch dict, int64 [2] seed)``.
    """
    _check_start(batches_per_epoch, initial_epoch, initial_batch)
    pipeline = input_context.input_pipeline_id if input_context is not None else 0

    def shuffled(records, epoch, index):
        order = _scalar_seed(derive_seed(seed, _RECORD_ORDER, epoch, index))
        # tf.data mixes an op seed with the graph's seed, and with a global seed
        # of 0 its (0, 0) check compares our tensor seed as a Python bool. A fixed
        # graph seed while tracing keeps the order a function of ``seed`` alone.
        graph = tf.compat.v1.get_default_graph()
        saved, graph.seed = graph.seed, _GRAPH_SEED
        try:
            return records.shuffle(shuffle_buffer, seed=order, reshuffle_each_iteration=False)
        finally:
            graph.seed = saved

    if cache:
        # The cache must live outside the per-epoch functions (a cache built
        # inside one is a new, empty cache every epoch), and it only keeps what
        # an iterator read to the end: fill it now, so that epochs shorter than
        # a pass are served from memory too.
        decoded = read_records(files, input_context).batch(batch_size)
        decoded = decoded.map(as_written(decode), num_parallel_calls=AUTOTUNE).unbatch().cache()
        if tf.executing_eagerly():
            decoded.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1)

        def one_pass(epoch, index):
            return shuffled(decoded, epoch, index)
    else:

        def one_pass(epoch, index):
            records = read_records(files, input_context, derive_seed(seed, _FILE_ORDER, epoch, index))
            return shuffled(records, epoch, index)

    def epoch_batches(epoch):
        passes = tf.data.Dataset.range(_FOREVER).flat_map(as_written(lambda index: one_pass(epoch, index)))
        return passes.batch(batch_size, drop_remainder=True)

    stream = _by_epoch(
        epoch_batches,
        batches_per_epoch=batches_per_epoch,
        initial_epoch=initial_epoch,
        initial_batch=initial_batch,
        repeat=repeat,
    )
    if not cache:  # Decoded after the skip, so skipped batches cost no decoding.
        stream = stream.map(as_written(lambda epoch, index, batch: (epoch, index, decode(batch))), AUTOTUNE)
    return stream.map(
        as_written(lambda epoch, index, batch: (batch, batch_seed(seed, epoch, index, pipeline))),
        num_parallel_calls=AUTOTUNE,
    )

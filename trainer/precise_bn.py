"""Precise batch-norm statistics: population statistics recomputed from clean training batches.

During training a batch-norm layer keeps an exponential moving average of its
batch statistics, and evaluation uses that average. With few steps per epoch
(a folder of a few hundred photos) the average lags far behind the weights and
the evaluated model is a much worse one than the trained one. pycls and
detectron2 (``PreciseBN``) fix this by recomputing the statistics from a
number of training batches before every evaluation; so does this module.

Every trainable ``BatchNormalization`` layer's input is read in one forward
pass per batch (training mode, as the layers see their inputs while training;
a frozen layer keeps its statistics and is left out). The per-channel sums of
``x - c`` and ``(x - c)^2`` (``c``: the mean over all replicas of the layer's moving mean, which
keeps the float32 sums well conditioned) are summed over the replicas of the
strategy (and the workers of a cluster), then over the batches in float64, so
the result is the exact mean and (biased, as Keras computes it) variance of
everything the pass saw, identical on every replica.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

# pycls' default (BN.NUM_SAMPLES_PRECISE): images read when --precise-bn is auto.
AUTO_IMAGES = 8192


def auto_batches(batch_size, train_batches, steps_per_epoch):
    """Returns the number of batches ``--precise-bn auto`` reads.

    :data:`AUTO_IMAGES`, but never more than one pass over the training split
    nor more batches than an epoch trains: a forward-only pass over at most an
    epoch's batches (measured: +40% epoch time when it reads them all, a few
    percent on tiny-imagenet's 781 steps of 128).
    """
    return max(1, min(train_batches, steps_per_epoch, -(-AUTO_IMAGES // batch_size)))


def trainable_batch_norms(model):
    """Returns the model's ``BatchNormalization`` layers that train (frozen ones keep their statistics)."""
    return [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]


class PreciseBatchNorm:
    """Recomputes the population statistics of a model's batch-norm layers.

    Args:
        strategy: The ``tf.distribute`` strategy the model was built under.
        model: A functional model (one flat graph: every layer is in ``model.layers``).
        num_batches: Batches read per recomputation (each a global batch).
        dataset: The distributed dataset read when a call names none.
    """

    def __init__(self, strategy, model, num_batches, dataset=None):
        if num_batches < 1:
            raise ValueError(f"precise batch norm needs at least one batch, got {num_batches}")
        self.strategy = strategy
        self.model = model
        self.num_batches = num_batches
        self.dataset = dataset
        self._function = None
        self._shift_function = None
        self._layers = None

    def reset(self):
        """Forgets the compiled pass (after layers were frozen or unfrozen)."""
        self._function = None
        self._shift_function = None
        self._layers = None

    def _make_functions(self):
        """Returns ``(step, common_shifts)`` of the trainable layers; ``(None, None)`` without any."""
        layers = self._layers = trainable_batch_norms(self.model)
        if not layers:
            return None, None
        probe = keras.Model(self.model.inputs, [layer.input for layer in layers])

        def sums(images, shifts):
            inputs = probe(images, training=True)
            inputs = inputs if isinstance(inputs, list | tuple) else [inputs]
            out = []
            for layer, x, shift in zip(layers, inputs, shifts, strict=True):
                x = tf.cast(x, tf.float32)
                axis = layer.axis % len(x.shape)
                axes = [i for i in range(len(x.shape)) if i != axis]
                centred = x - shift
                count = tf.cast(tf.size(x) // tf.shape(x)[axis], tf.float32)
                out.append((tf.reduce_sum(centred, axes), tf.reduce_sum(tf.square(centred), axes), count))
            return out, tf.cast(tf.shape(images)[0], tf.float32)

        def zeros(shifts):
            empty = [(tf.zeros_like(shift), tf.zeros_like(shift), tf.constant(0.0)) for shift in shifts]
            return empty, tf.constant(0.0)

        def replica_step(images, shifts):
            # An uneven end of the data gives a replica an empty batch (see DistributedLoop.evaluate).
            return tf.cond(tf.shape(images)[0] > 0, lambda: sums(images, shifts), lambda: zeros(shifts))

        # The last batch of the split may be smaller: one more trace, not one per size.
        @tf.function(reduce_retracing=True, autograph=False)
        def step(images, shifts):
            per_replica = self.strategy.run(replica_step, args=(images, shifts))
            # One reduction per tensor: a cluster's collectives cannot pack tensors of mixed ranks.
            flat = [self.strategy.reduce("SUM", value, axis=None) for value in tf.nest.flatten(per_replica)]
            return tf.nest.pack_sequence_as(per_replica, flat)

        # The workers of a cluster each keep their own moving means; the sums of all of them
        # must be taken about one common shift: their mean over every replica.
        @tf.function(autograph=False)
        def common_shifts():
            per_replica = self.strategy.run(
                lambda: [tf.identity(layer.moving_mean.value) for layer in layers]
            )
            return [self.strategy.reduce("MEAN", value, axis=None) for value in per_replica]

        return step, common_shifts

    def __call__(self, dataset=None):
        """Reads up to ``num_batches`` batches of ``dataset`` and sets the statistics.

        Args:
            dataset: A distributed dataset of ``(images, labels)`` with the
                evaluation transform (clean training images); default: the
                one given at construction.

        Returns:
            The number of images the statistics were computed from (0: the
            model has no trainable batch-norm layer, nothing changed).

        Raises:
            ValueError: The dataset gave no image.
        """
        with _unsynchronized(self.model):
            return self._recompute(dataset)

    def _recompute(self, dataset):
        if self._function is None:
            self._function, self._shift_function = self._make_functions()
        if self._function is None:
            return 0
        # The pass itself moves the moving means (training mode): the shift is read once, before it.
        shifts = self._shift_function()
        totals, images_seen = None, 0.0
        for index, (images, _) in enumerate(self.dataset if dataset is None else dataset):
            if index >= self.num_batches:
                break
            per_layer, count = self._function(images, shifts)
            batch = tf.nest.map_structure(lambda t: np.asarray(t.numpy(), np.float64), per_layer)
            totals = batch if totals is None else tf.nest.map_structure(np.add, totals, batch)
            images_seen += float(count.numpy())
        if not images_seen:
            raise ValueError("precise batch norm: the training split gave no images")
        for layer, shift, (first, second, count) in zip(self._layers, shifts, totals, strict=True):
            mean = first / count
            variance = np.maximum(second / count - mean * mean, 0.0)
            layer.moving_mean.assign((np.asarray(shift.numpy(), np.float64) + mean).astype(np.float32))
            layer.moving_variance.assign(variance.astype(np.float32))
        return int(images_seen)


@contextlib.contextmanager
def _unsynchronized(model):
    """Batch norms compute per-replica batch statistics while the pass is traced and run.

    The pass sums every layer's input itself and all-reduces the sums once;
    ``--sync-bn``'s all-reduce inside each layer would sit in the empty-batch
    ``tf.cond`` of a replica, where a cross-replica call cannot be made.
    """
    layers = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [layer.synchronized for layer in layers]
    for layer in layers:
        layer.synchronized = False
    try:
        yield
    finally:
        for layer, value in zip(layers, saved, strict=True):
            layer.synchronized = value

"""One small distributed training loop over ``strategy.run``.

Keras 3's ``model.fit`` fails under ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), while a step run through ``strategy.run`` works. So
every strategy (default, mirrored, multi-worker) trains through this loop; it
drives ordinary Keras callbacks through a ``keras.callbacks.CallbackList``
(they read and write ``model.optimizer.learning_rate`` and
``model.stop_training`` as under ``fit``).

Per-replica steps return sums (loss, correct top-1/top-5, example count,
optionally a confusion matrix) that are reduced with ``SUM`` across replicas;
dividing on the host gives exact means even with uneven final batches and
empty batches on workers that ran out of data.

A diverged run stops with :class:`NonFiniteError`. Reading a loss on the host
waits for the device, so the per-step losses are kept on the device and read
together every ``check_every_steps`` steps, at every epoch end and before
every save of the training state (:meth:`DistributedLoop.check_finite`).
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from contracts import stream
from trainer import class_weights as class_weights_lib
from trainer import finite, mixing, optimizers, step_metrics

# Steps between two reads of the kept per-step losses (one device sync each).
FINITE_CHECK_STEPS = 20


class NonFiniteError(FloatingPointError):
    """The run diverged: a training or validation loss, or a weight, is NaN or infinite.

    Epochs and steps in the message are 0-based indices, as in ``history.csv``.
    """


@dataclasses.dataclass
class LoopResult:
    """What :meth:`DistributedLoop.fit` ended with.

    Attributes:
        epochs_completed: Epochs fully trained (including earlier, resumed runs).
        interrupted: Whether a stop was requested (preemption) before the end.
        step_in_epoch: Steps of the interrupted epoch already trained.
        history: ``epoch -> logs`` of the epochs trained in this run.
    """

    epochs_completed: int
    interrupted: bool = False
    step_in_epoch: int = 0
    history: dict = dataclasses.field(default_factory=dict)


class DistributedLoop:
    """Trains and evaluates a Keras model with ``strategy.run``.

    Args:
        strategy: The ``tf.distribute`` strategy the model was built under.
        model: The training model (possibly with auxiliary outputs), compiled
            with its optimizer so callbacks find ``model.optimizer``.
        eval_model: The single-output model used for evaluation.
        num_classes: Number of classes.
        global_batch_size: Global batch size the loss is averaged over.
        aux_loss_weight: Weight of every auxiliary head's loss.
        augmenter: Optional ``(images, seed) -> images`` applied in the train
            step (``--augment-on device``).
        seed: Base seed of the in-step augmentation.
        jit_compile: Compile the per-replica step with XLA.
        check_every_steps: Steps between two checks that the losses are finite.
        mixer: Optional :class:`trainer.mixing.Mixer`: mixup/CutMix and label
            smoothing in the train step; every head's loss takes its soft targets
            while top-1/top-5 are counted against the true labels.
        clip_norm: Clip the gradients' global norm, summed over all replicas, to this; 0: off.
        class_weights: Optional loss weight per class (``--class-weight``): every head's per-example
            loss times :func:`trainer.class_weights.example_weights` before the batch mean.
    """

    def __init__(
        self,
        strategy,
        model,
        eval_model,
        *,
        num_classes,
        global_batch_size,
        aux_loss_weight=0.0,
        augmenter=None,
        seed=0,
        jit_compile=False,
        check_every_steps=FINITE_CHECK_STEPS,
        mixer=None,
        clip_norm=0.0,
        class_weights=None,
    ):
        self.strategy = strategy
        self.model = model
        self.eval_model = eval_model
        self.num_classes = num_classes
        self.global_batch_size = global_batch_size
        self.aux_loss_weight = aux_loss_weight
        self.augmenter = augmenter
        self.seed = seed
        self.jit_compile = jit_compile
        self.check_every_steps = check_every_steps
        self.mixer = mixer if mixer is not None and mixer.active else None
        self.clip_norm = clip_norm
        weights = None if class_weights is None else tf.constant(class_weights, tf.float32, [num_classes])
        self.class_weights = weights
        # (epoch, step, objective tensor) of the steps not checked yet; the last step trained.
        self._unchecked = []
        self._position = None
        with strategy.scope():
            self.step_counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="loop_step")
        self.reset()

    def reset(self):
        """Rebuilds the compiled steps (after unfreezing layers or replacing the optimizer)."""
        self._train_function = None
        self._eval_functions = {}
        self._variable_check = None

    # ----------------------------------------------------------------- train
    def _replica_augment(self, images):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = tf.stack([tf.cast(self.seed + replica, tf.int64), self.step_counter.read_value()])
        return self.augmenter(images, tf.cast(seed, tf.int32))

    def _replica_mix(self, images, labels):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        seed = stream.mixing_seed(self.seed, self.step_counter.read_value(), replica)
        return self.mixer(images, labels, seed)

    def _replica_update(self, images, labels, targets=None):
        model = self.model
        optimizer = model.optimizer
        weights = self._example_weights(labels, targets)
        with tf.GradientTape() as tape:
            main, aux = step_metrics.split_outputs(model(images, training=True))
            per_example = mixing.head_loss(labels, targets, main)
            loss = tf.nn.compute_average_loss(
                per_example, sample_weight=weights, global_batch_size=self.global_batch_size
            )
            for value in aux.values():
                aux_loss = mixing.head_loss(labels, targets, value)
                loss += self.aux_loss_weight * tf.nn.compute_average_loss(
                    aux_loss, sample_weight=weights, global_batch_size=self.global_batch_size
                )
            if model.losses:
                regularization = tf.add_n([tf.cast(x, tf.float32) for x in model.losses])
                loss += tf.nn.scale_regularization_loss(regularization)
            scaled = optimizer.scale_loss(loss)
        variables = model.trainable_variables
        gradients = tape.gradient(scaled, variables)
        if self.clip_norm:
            replicas = self.strategy.num_replicas_in_sync
            gradients = optimizers.clip_global_norm(gradients, optimizer, self.clip_norm, replicas)
        optimizer.apply(gradients, variables)
        stats = step_metrics.batch_statistics(labels, main, per_example, self.num_classes)
        stats["objective"] = loss
        return stats

    def _example_weights(self, labels, targets):
        """Each example's loss weight under ``class_weights``, or ``None`` (all 1)."""
        if self.class_weights is None:
            return None
        smoothing = self.mixer.label_smoothing if self.mixer is not None else 0.0
        return class_weights_lib.example_weights(self.class_weights, labels, targets, smoothing)

    def _make_train_function(self):
        optimizer = self.model.optimizer
        if not optimizer.built:
            # Its variables are created now, not by its first apply inside the traced step: a
            # tf.function whose first trace creates variables traces itself a second time
            # without them, which cost a quick run about a fifth of its time.
            with self.strategy.scope():
                optimizer.build(self.model.trainable_variables)
        update = self._replica_update
        if self.jit_compile:
            update = tf.function(update, jit_compile=True, reduce_retracing=True, autograph=False)

        def replica_step(images, labels):
            # Augmentation and mixing stay outside the XLA cluster: the book policy's
            # ImageProjectiveTransformV3 has no XLA kernel, and the mixing's gamma draws
            # must not depend on whether the step is compiled.
            if self.augmenter is not None:
                images = self._replica_augment(images)
            if self.mixer is None:
                return update(images, labels)
            images, targets = self._replica_mix(images, labels)
            return update(images, labels, targets)

        @tf.function(autograph=False)
        def train_function(iterator):
            images, labels = next(iterator)
            stats = self.strategy.run(replica_step, args=(images, labels))
            self.step_counter.assign_add(1)
            return {k: self.strategy.reduce("SUM", v, axis=None) for k, v in stats.items()}

        return train_function

    def train_step(self, iterator):
        """Runs one distributed training step; returns the reduced batch sums."""
        if self._train_function is None:
            self._train_function = self._make_train_function()
        return self._train_function(iterator)

    # ---------------------------------------------------------------- checks
    def check_finite(self):
        """Raises :class:`NonFiniteError` when training diverged since the last check.

        Reads the objective of every step not checked yet (one device sync) and
        names the first non-finite one, then checks every float variable of the
        model and the optimizer (an update can leave non-finite weights, batch-norm
        statistics or slots behind a finite loss), so a backup saved after this
        check restores a finite state. The losses are reduced over all replicas
        and workers and a cluster agrees on the variables' verdict, so every
        worker decides alike.
        """
        unchecked, self._unchecked = self._unchecked, []
        if unchecked:
            values = tf.stack([objective for _, _, objective in unchecked]).numpy()
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                epoch, step, _ = unchecked[bad[0]]
                raise NonFiniteError(f"training loss is {float(values[bad[0]])} at epoch {epoch} step {step}")
        if self._position is not None and not self._variables_finite():
            epoch, step = self._position
            bad = self._variable_check.non_finite_paths()
            what = bad[0] if bad else "a variable of another worker"
            raise NonFiniteError(f"training diverged: {what} is not finite after epoch {epoch} step {step}")

    def _variables_finite(self):
        if self._variable_check is None:
            variables = [*self.model.variables, *self.model.optimizer.variables]
            self._variable_check = finite.VariableCheck(variables)
        bad = self._variable_check.any_non_finite()
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Each worker keeps its own batch-norm statistics: the workers must agree
            # (as on a stop request), or one would stop while the others wait for it.
            bad = self.strategy.reduce("SUM", self.strategy.run(lambda: tf.identity(bad)), axis=None)
        return float(bad.numpy()) == 0.0

    # ------------------------------------------------------------------ eval
    def _make_eval_function(self, element_spec):
        # The confusion matrix is always summed (a few ops): the epochs' validation and the
        # final evaluation then share one trace.
        def compute(images, labels):
            probabilities = self.eval_model(images, training=False)
            per_example = keras.losses.sparse_categorical_crossentropy(
                labels, tf.cast(probabilities, tf.float32)
            )
            return step_metrics.batch_statistics(
                labels, probabilities, per_example, self.num_classes, confusion=True
            )

        def replica_step(images, labels):
            # A replica gets an empty batch when the data runs out unevenly; some
            # kernels (oneDNN batch norm) reject empty inputs, so skip the model.
            return tf.cond(
                tf.shape(images)[0] > 0,
                lambda: compute(images, labels),
                self._zero_statistics,
            )

        # The dataset's own signature (batch dimension open): a split's smaller last
        # batch and the next split reuse the one trace instead of tracing again.
        @tf.function(input_signature=list(element_spec), autograph=False)
        def eval_function(images, labels):
            stats = self.strategy.run(replica_step, args=(images, labels))
            return {k: self.strategy.reduce("SUM", v, axis=None) for k, v in stats.items()}

        return eval_function

    def _zero_statistics(self):
        stats = {name: tf.constant(0.0) for name in ("loss_sum", "top1", "top5", "count")}
        stats["confusion"] = tf.zeros([self.num_classes, self.num_classes], tf.float32)
        return stats

    def evaluate(self, dataset, steps=None, confusion=False):
        """Evaluates ``eval_model`` over a distributed dataset.

        Args:
            dataset: A distributed dataset (finite).
            steps: Stop after this many batches; ``None``: the whole dataset.
            confusion: Also return the summed confusion matrix.

        Returns:
            ``(logs, confusion_matrix or None)`` with ``loss``, ``accuracy``,
            ``top5_accuracy`` and ``count``.
        """
        spec = dataset.element_spec
        if spec not in self._eval_functions:
            self._eval_functions[spec] = self._make_eval_function(spec)
        function = self._eval_functions[spec]
        totals = None
        for index, (images, labels) in enumerate(dataset):
            if steps is not None and index >= steps:
                break
            stats = function(images, labels)
            totals = stats if totals is None else {k: totals[k] + stats[k] for k in totals}
        if totals is None:
            raise ValueError("evaluation dataset is empty")
        logs = step_metrics.summarize(totals)
        logs["count"] = int(totals["count"])
        matrix = totals["confusion"].numpy().astype(np.int64) if confusion else None
        return logs, matrix

    # ------------------------------------------------------------------- fit
    def fit(
        self,
        train_dataset,
        *,
        epochs,
        steps_per_epoch,
        callbacks,
        valid_dataset=None,
        validation_steps=None,
        initial_epoch=0,
        initial_step=0,
        stop_requested=None,
        batch_logs_wanted=False,
        refresh_statistics=None,
    ):
        """Trains until ``epochs``, early stopping, or a stop request.

        Args:
            train_dataset: A distributed, repeated training dataset.
            epochs: Index of the last epoch + 1.
            steps_per_epoch: Steps of each epoch.
            callbacks: A ``keras.callbacks.CallbackList`` with ``model`` set.
            valid_dataset: A distributed validation dataset (re-iterated each epoch).
            validation_steps: Batches of validation per epoch (``None``: all).
            initial_epoch: First epoch to run (resuming).
            initial_step: Steps of ``initial_epoch`` already done before a preemption.
            stop_requested: Callable ``(at_epoch_end) -> bool`` polled after every step.
            batch_logs_wanted: Pass running means to ``on_train_batch_end`` (costs a sync per step).
            refresh_statistics: Called after each epoch's steps, before validation and the
                epoch-end callbacks (precise batch-norm statistics).

        Returns:
            A :class:`LoopResult`.
        """
        model = self.model
        model.stop_training = False
        result = LoopResult(epochs_completed=initial_epoch)
        iterator = iter(train_dataset)
        callbacks.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callbacks.on_epoch_begin(epoch)
            totals = None
            first = initial_step if epoch == initial_epoch else 0
            steps_done = first
            for step in range(first, steps_per_epoch):
                callbacks.on_train_batch_begin(step)
                stats = self.train_step(iterator)
                self._unchecked.append((epoch, step, stats["objective"]))
                self._position = (epoch, step)
                if (step + 1) % self.check_every_steps == 0:
                    self.check_finite()
                stats["steps"] = tf.constant(1.0)
                totals = stats if totals is None else {k: totals[k] + stats[k] for k in totals}
                steps_done = step + 1
                # Batch logs force a device sync: only a progress bar on a terminal reads them.
                batch_logs = None
                if batch_logs_wanted:
                    batch_logs = step_metrics.summarize({k: v.numpy() for k, v in totals.items()})
                callbacks.on_train_batch_end(step, batch_logs)
                if stop_requested is not None and stop_requested(False):
                    break
            if steps_done < steps_per_epoch:
                result.interrupted, result.step_in_epoch = True, steps_done
                break
            self.check_finite()  # Before any callback sees the epoch's logs or saves its state.
            if refresh_statistics is not None:
                refresh_statistics()
            logs = step_metrics.summarize(totals) if totals is not None else {}
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
            if valid_dataset is not None:
                valid_logs, _ = self.evaluate(valid_dataset, validation_steps)
                logs.update({f"val_{k}": v for k, v in valid_logs.items() if k != "count"})
                if not np.isfinite(logs["val_loss"]):
                    raise NonFiniteError(f"validation loss is {logs['val_loss']} after epoch {epoch}")
            callbacks.on_epoch_end(epoch, logs)
            result.history[epoch] = dict(logs)
            result.epochs_completed = epoch + 1
            if model.stop_training:
                break
            if stop_requested is not None and stop_requested(True) and epoch < epochs - 1:
                result.interrupted, result.step_in_epoch = True, 0
                break
        # An interrupted fit is paused, not ended (as when Keras' fit is interrupted):
        # on_train_end would restore the early-stopping best weights into the
        # model that is about to be backed up, and the resumed run would continue
        # from those instead of from where it stopped.
        if not result.interrupted:
            callbacks.on_train_end(dict(result.history.get(result.epochs_completed - 1, {})))
        return result

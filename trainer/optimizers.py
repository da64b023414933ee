"""The run's optimizer: its learning-rate schedule, weight decay, EMA and loss scaling.

Everything comes from Keras 3: ``CosineDecay`` with its linear warm-up, every
optimizer's decoupled ``weight_decay`` with ``exclude_from_weight_decay``, and
the optimizer's ``use_ema`` (the moving average lives in the optimizer's
variables, so the backup's checkpoint carries it through a preemption). Two
things are ours: biases and normalization parameters (every variable of rank
0 or 1, timm's rule) never decay, and the learning rate of a schedule is a
function of the optimizer's step counter, which a backup restores; a second
training phase (after a frozen backbone) starts a fresh optimizer, whose
schedule is shifted by the steps of the first (:class:`ShiftedSchedule`), so
Adam's bias correction starts afresh with its fresh moments.
"""

import keras
import tensorflow as tf

# Keras' AdamW needs a float weight decay; the other optimizers take None for none.
_NEEDS_WEIGHT_DECAY = ("adamw",)


@keras.saving.register_keras_serializable(package="trainer")
class ShiftedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule`` read ``start_step`` steps later: the learning rate of a phase that starts mid-run.

    Args:
        schedule: A ``LearningRateSchedule`` of the whole run.
        start_step: The run's step at which this optimizer's step 0 falls.
    """

    def __init__(self, schedule, start_step):
        self.schedule = schedule
        self.start_step = int(start_step)

    def __call__(self, step):
        return self.schedule(step + self.start_step)

    def get_config(self):
        return {
            "schedule": keras.optimizers.schedules.serialize(self.schedule),
            "start_step": self.start_step,
        }

    @classmethod
    def from_config(cls, config):
        return cls(keras.optimizers.schedules.deserialize(config["schedule"]), config["start_step"])


def cosine_schedule(learning_rate, *, epochs, steps_per_epoch, warmup_epochs, start_epoch=0):
    """Linear warm-up from 0 over ``warmup_epochs``, then cosine decay to 0 at the run's last step.

    Args:
        learning_rate: The peak learning rate.
        epochs: Epochs of the whole run.
        steps_per_epoch: Steps of each epoch.
        warmup_epochs: Epochs of the linear warm-up.
        start_epoch: Epoch at which the optimizer's step 0 falls (a second phase).

    Returns:
        A ``keras.optimizers.schedules.LearningRateSchedule``.
    """
    warmup_steps = warmup_epochs * steps_per_epoch
    decay_steps = max(1, epochs * steps_per_epoch - warmup_steps)
    if warmup_steps:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0, decay_steps, alpha=0.0, warmup_target=learning_rate, warmup_steps=warmup_steps
        )
    else:
        schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps, alpha=0.0)
    return ShiftedSchedule(schedule, start_epoch * steps_per_epoch) if start_epoch else schedule


def no_decay_variables(model):
    """The trainable variables weight decay must skip: biases, batch-norm gamma and beta (rank <= 1)."""
    return [variable for variable in model.trainable_variables if len(variable.shape) <= 1]


def make_optimizer(config, model, *, learning_rate, steps_per_epoch, start_epoch=0):
    """Returns the configured optimizer for ``model``'s trainable variables.

    Args:
        config: The run's :class:`trainer.config.TrainConfig`.
        model: The training model (its rank <= 1 variables skip weight decay).
        learning_rate: Initial (plateau) or peak (cosine) learning rate.
        steps_per_epoch: Steps of each epoch (the cosine schedule's length).
        start_epoch: Epoch of the run at which this optimizer starts (the
            second phase of a run with a frozen backbone).

    Returns:
        A Keras optimizer, loss-scaled under ``mixed_float16``.
    """
    if config.lr_schedule == "cosine":
        learning_rate = cosine_schedule(
            learning_rate,
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            warmup_epochs=config.lr_warmup_epochs,
            start_epoch=start_epoch,
        )
    decay = config.weight_decay or (0.0 if config.optimizer in _NEEDS_WEIGHT_DECAY else None)
    options = {"learning_rate": learning_rate, "weight_decay": decay}
    if config.ema:
        options.update(use_ema=True, ema_momentum=config.ema)
    optimizer = type(keras.optimizers.get(config.optimizer))(**options)
    if decay:
        optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def inner(optimizer):
    """The optimizer under a ``LossScaleOptimizer`` wrapper (or the optimizer itself)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def has_schedule(optimizer):
    """Whether the learning rate is a schedule (not settable; plateau reduction does not apply)."""
    rate = getattr(inner(optimizer), "_learning_rate", None)
    return isinstance(rate, keras.optimizers.schedules.LearningRateSchedule)


def current_learning_rate(optimizer):
    """The learning rate of the next step, as a float."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def use_average_weights(model):
    """Puts the optimizer's moving average into ``model``'s trainable variables (no-op without EMA).

    Returns:
        Whether the weights were replaced.
    """
    optimizer = inner(model.optimizer)
    if not getattr(optimizer, "use_ema", False):
        return False
    optimizer.finalize_variable_values(model.trainable_variables)
    return True


def clip_global_norm(gradients, optimizer, clip_norm, replicas):
    """Clips the norm of the gradient summed over every replica, as one device would.

    Called in a replica context. Keras' ``global_clipnorm`` clips each
    replica's partial gradient before the optimizer sums them, a rule that
    depends on the replica count. The sum is all-reduced here and divided back
    by the replica count, so the optimizer's own sum yields the clipped total.
    The limit is scaled like the loss under ``mixed_float16``
    (``optimizer.scale_loss(1)`` is the loss scale, 1 otherwise).
    """
    if replicas > 1:
        gradients = tf.distribute.get_replica_context().all_reduce("SUM", gradients)
    limit = clip_norm * tf.cast(optimizer.scale_loss(tf.constant(1.0)), tf.float32)
    gradients, _ = tf.clip_by_global_norm(gradients, limit)
    return [gradient / replicas for gradient in gradients] if replicas > 1 else gradients

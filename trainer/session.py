"""The pieces of one training run, built inside the strategy's scope.

:class:`TrainingSession` owns the model, the datasets, the callbacks and the
backup state of a run; :func:`trainer.train.run` drives it.
"""

import sys

import keras
import tensorflow as tf

from trainer import augment, augment_summary, callbacks, data, distribute, loop, models, report, state
from trainer import config as config_lib


def make_optimizer(config, learning_rate):
    """Returns the configured optimizer, loss-scaled under ``mixed_float16``."""
    identifier = {"class_name": config.optimizer, "config": {"learning_rate": learning_rate}}
    optimizer = keras.optimizers.get(identifier)
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class TrainingSession:
    """Model, data, callbacks and state of one run.

    Args:
        config: The :class:`trainer.config.TrainConfig`.
        strategy: The ``tf.distribute`` strategy.
        info: The dataset's :class:`trainer.data.DatasetInfo`.
        outputs: The run's :class:`trainer.storage.JobOutputs`.
        chief: Whether this worker writes outputs.
        stop_flag: Object with a ``requested`` attribute (SIGTERM).
    """

    def __init__(self, config, strategy, info, outputs, chief, stop_flag):
        self.config = config
        self.strategy = strategy
        self.info = info
        self.outputs = outputs
        self.chief = chief
        self.stop_flag = stop_flag
        self.multi_worker = distribute.cluster_size() > 1
        self.defaults = models.get_defaults(config.arch)
        self.input_size = augment.output_size(config.policy, info.image_size, config.crop_size)
        outputs.download("backup")
        self.resume = state.read_state(outputs.local("backup"))
        self.initial_epoch = self.resume["epoch"] if self.resume else 0
        self.initial_step = self.resume["step_in_epoch"] if self.resume else 0
        self.frozen = config.warmup_epochs > 0 and self.initial_epoch < config.warmup_epochs
        keras.mixed_precision.set_dtype_policy(config.mixed_precision)
        with strategy.scope():
            options = self._build_options()
            self.model = models.build_model(config.arch, info.num_classes, seed=config.seed, **options)
            self.main_model = models.main_output_model(self.model)
            if self.frozen:
                models.set_backbone_trainable(self.model, False)
            self.model.compile(optimizer=make_optimizer(config, config.learning_rate), jit_compile=False)
        self.steps_per_epoch = config.steps_per_epoch or max(
            1, info.num_batches("train", config.batch_size, drop_remainder=True)
        )
        augmenter = None
        if config.augment_on == "device" and config.policy != "none":
            augmenter = augment.Augmenter(config.policy, info.image_size, config.crop_size)
        self.loop = loop.DistributedLoop(
            strategy,
            self.model,
            self.main_model,
            num_classes=info.num_classes,
            global_batch_size=config.batch_size,
            aux_loss_weight=config.aux_loss_weight,
            augmenter=augmenter,
            seed=config.seed,
            jit_compile=config.jit_compile,
        )
        self._build_callbacks()
        if self.resume:
            self.training_state.restore(outputs.local("backup"), self.resume)
            self.loop.step_counter.assign(self.initial_epoch * self.steps_per_epoch + self.initial_step)
            _log(f"resumed at epoch {self.initial_epoch} step {self.initial_step}")

    def _build_options(self, weights=True):
        """Build options; ``weights=False`` builds a randomly initialized copy (for export)."""
        options = {"input_size": self.input_size, "dropout": self.config.dropout}
        if self.defaults.aux_outputs:
            options["aux_dropout"] = self.config.aux_dropout
        options["weights"] = self.config.weights if weights else None
        return options

    # ------------------------------------------------------------------ data
    def dataset(self, split, training):
        """Returns the distributed dataset of ``split``."""
        config = self.config

        def make(input_context):
            return data.make_dataset(
                self.info,
                split,
                global_batch_size=config.batch_size,
                training=training,
                policy=config.policy,
                augment_on=config.augment_on if training else "host",
                crop_size=config.crop_size,
                cache=config.cache,
                seed=config.seed,
                input_context=input_context,
            )

        return self.strategy.distribute_datasets_from_function(make)

    # ------------------------------------------------------------- callbacks
    def _build_callbacks(self):
        config, outputs, chief = self.config, self.outputs, self.chief
        self.best_checkpoint = callbacks.BestModelCheckpoint(
            outputs.local("job", config_lib.MODEL_FILE), self.main_model, enabled=chief
        )
        self.early_stopping = callbacks.EarlyStopping(
            monitor="val_loss",
            mode="min",
            patience=config.early_stopping_patience,
            min_delta=config.min_delta,
            restore_best_weights=True,
        )
        self.plateau = callbacks.ReduceLROnPlateau(
            on_plateau=self._save_plateau,
            monitor="val_loss",
            mode="min",
            factor=config.lr_plateau_factor,
            patience=config.lr_plateau_patience,
        )
        stateful = {"best_model": self.best_checkpoint, "early_stopping": self.early_stopping}
        stateful["lr_plateau"] = self.plateau
        self.training_state = state.TrainingState(self.model, stateful, chief=chief)
        listed = [callbacks.ProgressLogger(config.epochs, self.steps_per_epoch)]
        if chief:
            listed.append(callbacks.HistoryCSV(outputs.local("job", "history.csv"), self.initial_epoch))
            listed.append(
                callbacks.TensorBoardScalars(outputs.local("logs"), config.hparams(), trial_id=config.job_dir)
            )
        listed += [self.best_checkpoint, self.early_stopping, self.plateau]
        listed += callbacks.extra_callbacks(
            config, info=self.info, main_model=self.main_model, log_dir=outputs.local("logs"), chief=chief
        )
        # Last: the backup must capture every other callback's end-of-epoch state.
        listed.append(callbacks.EpochEndHook(self._backup))
        self.callbacks = keras.callbacks.CallbackList(listed, model=self.model)

    def _save_state(self, directory, epoch, step_in_epoch=0):
        extra = {"frozen": self.frozen}
        self.training_state.save(directory, epoch=epoch, step_in_epoch=step_in_epoch, extra=extra)

    def _backup(self, epoch, logs):
        self._save_state(self.outputs.local("backup"), epoch + 1)
        self.outputs.sync()

    def _save_plateau(self, epoch):
        directory = self.outputs.local("checkpoints", f"plateau-epoch-{epoch + 1:04d}")
        self._save_state(directory, epoch + 1)
        _log(f"plateau at epoch {epoch + 1}: learning rate reduced, state saved to {directory}")

    def _stop_requested(self, at_epoch_end):
        if not self.multi_worker:
            return self.stop_flag.requested
        if not at_epoch_end:
            return False
        # Every worker must stop at the same epoch: agree on the flag collectively.
        flag = tf.constant(1.0 if self.stop_flag.requested else 0.0)
        value = self.strategy.reduce("SUM", self.strategy.run(lambda: tf.identity(flag)), axis=None)
        return bool(value.numpy() > 0)

    # -------------------------------------------------------------- training
    def train(self):
        """Trains (both phases of a fine-tuning run); returns a :class:`trainer.loop.LoopResult`."""
        config = self.config
        if self.chief and self.initial_epoch == 0 and self.initial_step == 0:
            self._write_augmentation_summary()
        train_ds = self.dataset("train", training=True)
        valid_ds = self.dataset("valid", training=False)
        common = {
            "steps_per_epoch": self.steps_per_epoch,
            "callbacks": self.callbacks,
            "valid_dataset": valid_ds,
            "validation_steps": config.validation_steps,
            "stop_requested": self._stop_requested,
            "batch_logs_wanted": sys.stdout.isatty(),
        }
        epoch, step = self.initial_epoch, self.initial_step
        if self.frozen:
            warm = min(config.warmup_epochs, config.epochs)
            result = self.loop.fit(train_ds, epochs=warm, initial_epoch=epoch, initial_step=step, **common)
            if result.interrupted or self.model.stop_training or warm >= config.epochs:
                return result
            self._unfreeze()
            epoch, step = result.epochs_completed, 0
        return self.loop.fit(train_ds, epochs=config.epochs, initial_epoch=epoch, initial_step=step, **common)

    def _unfreeze(self):
        """Phase two: train everything with a fresh optimizer at the current learning rate."""
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        # on_train_begin of phase two resets the callbacks: hand them their own state back.
        for callback in self.training_state.callbacks.values():
            arrays = callback.get_arrays() if hasattr(callback, "get_arrays") else None
            callback.set_state(callback.get_state(), arrays[1] if arrays else None)
        with self.strategy.scope():
            models.set_backbone_trainable(self.model, True)
            self.model.compile(optimizer=make_optimizer(self.config, learning_rate), jit_compile=False)
            self.model.optimizer.build(self.model.trainable_variables)
        self.frozen = False
        self.loop.reset()
        _log("backbone unfrozen: training every layer")

    def _write_augmentation_summary(self):
        config = self.config
        raw = data.make_dataset(self.info, "train", global_batch_size=8, training=False, policy="none")
        images, _ = next(iter(raw))
        augmenter = augment.Augmenter(config.policy, self.info.image_size, config.crop_size)
        augment_summary.write_augmentation_summary(
            self.outputs.local("logs", "train"),
            images,
            augmenter,
            seed=[config.seed, 0],
            step=0,
            max_images=8,
            name="augmented",
        )

    def save_interrupted(self, result):
        """Backs up the state of an interrupted run (SIGTERM) and uploads it."""
        self._save_state(self.outputs.local("backup"), result.epochs_completed, result.step_in_epoch)
        self.outputs.sync()
        _log(f"backup saved at epoch {result.epochs_completed} step {result.step_in_epoch}")

    # ---------------------------------------------------------------- finish
    def finish(self, result):
        """Evaluates the best weights, writes reports and the export, deletes the backup."""
        return report.finalize(self, result)


def _log(message):
    print(f"trainer: {message}", file=sys.stderr, flush=True)

"""Keras callbacks driven by :class:`trainer.loop.DistributedLoop`.

Stateful callbacks expose ``get_state()`` and ``set_state(state, arrays)``
so :class:`trainer.state.TrainingState` can back them up; state restored
before training is applied after the callback's own ``on_train_begin``
reset, exactly where ``fit`` would have left it.
"""

import csv
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

SCALARS = ("loss", "accuracy", "top5_accuracy")


class _Resumable:
    """Mixin: holds restored state until ``on_train_begin`` has reset the callback."""

    _pending = None

    def set_state(self, state, arrays=None):
        self._pending = (state, arrays)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._pending is not None:
            state, arrays = self._pending
            self._pending = None
            self._load_state(state, arrays)


class ReduceLROnPlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    """Keras' plateau reduction that also reports each plateau.

    Args:
        on_plateau: Called as ``on_plateau(epoch)`` after the learning rate was
            reduced at the end of ``epoch`` (the trainer saves a full-state
            checkpoint there so a user can branch from it).
        **kwargs: Passed to ``keras.callbacks.ReduceLROnPlateau``.
    """

    def __init__(self, on_plateau=None, **kwargs):
        super().__init__(**kwargs)
        self.on_plateau = on_plateau

    def on_epoch_end(self, epoch, logs=None):
        before = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        super().on_epoch_end(epoch, logs)
        after = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if after < before and self.on_plateau is not None:
            self.on_plateau(epoch)

    def get_state(self):
        best = None if self.best is None else float(self.best)
        return {"wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter), "best": best}

    def _load_state(self, state, arrays):
        self.wait = state["wait"]
        self.cooldown_counter = state["cooldown_counter"]
        self.best = state["best"]


class EarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    """Keras' early stopping whose counters and best weights survive a restart."""

    def get_state(self):
        best = None if self.best is None else float(self.best)
        return {
            "wait": int(self.wait),
            "best": best,
            "best_epoch": int(self.best_epoch),
            "stopped_epoch": int(self.stopped_epoch),
        }

    def get_arrays(self):
        """Returns ``(key, best_weights)``; the key changes only when the best epoch does."""
        if self.best_weights is None:
            return None
        return f"best-epoch-{self.best_epoch:04d}", self.best_weights

    def _load_state(self, state, arrays):
        self.wait = state["wait"]
        self.best = state["best"]
        self.best_epoch = state["best_epoch"]
        self.stopped_epoch = state["stopped_epoch"]
        if arrays is not None:
            self.best_weights = list(arrays)


class BestModelCheckpoint(_Resumable, keras.callbacks.Callback):
    """Saves the single-output main model to ``path`` when ``val_loss`` improves.

    Args:
        path: Local ``.keras`` file.
        main_model: The model to save (shares weights with the training model).
        monitor: Metric to minimize.
        enabled: False on non-chief workers: they track the best value but write nothing.
    """

    def __init__(self, path, main_model, monitor="val_loss", enabled=True):
        super().__init__()
        self.path = path
        self.main_model = main_model
        self.monitor = monitor
        self.enabled = enabled
        self.best = None
        self.best_epoch = -1

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None or (self.best is not None and not current < self.best):
            return
        self.best, self.best_epoch = float(current), epoch
        if self.enabled:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            self.main_model.save(self.path)

    def get_state(self):
        return {"best": self.best, "best_epoch": self.best_epoch}

    def _load_state(self, state, arrays):
        self.best, self.best_epoch = state["best"], state["best_epoch"]


class HistoryCSV(keras.callbacks.Callback):
    """Appends one row per epoch to ``history.csv``.

    On a resumed run, rows of epochs at or after the resume point (written
    before a kill, but not covered by the backup) are dropped first.
    """

    def __init__(self, path, initial_epoch=0):
        super().__init__()
        self.path = path
        self.initial_epoch = initial_epoch

    def _read(self):
        if not os.path.exists(self.path):
            return []
        with open(self.path, newline="") as f:
            return [row for row in csv.DictReader(f) if int(row["epoch"]) < self.initial_epoch]

    def on_train_begin(self, logs=None):
        # A second phase (fine-tuning) continues the rows of the first.
        if getattr(self, "rows", None) is None:
            self.rows = self._read()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{k: f"{v:.6g}" for k, v in sorted((logs or {}).items())}}
        self.rows.append(row)
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        temporary = self.path + ".tmp"
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(temporary, self.path)


class TensorBoardScalars(keras.callbacks.Callback):
    """Writes epoch scalars to ``log_dir/train`` and ``log_dir/validation`` plus HParams.

    Tags follow Keras' TensorBoard callback: ``epoch_loss``, ``epoch_accuracy``,
    ``epoch_top5_accuracy`` in both runs and ``epoch_learning_rate`` in ``train``.
    The HParams summary lets runs of different architectures be compared side
    by side when TensorBoard is pointed at their common parent folder.

    Args:
        log_dir: Local TensorBoard folder.
        hparams: ``name -> value`` of the run's hyperparameters.
        trial_id: Name of the run in the HParams dashboard.
    """

    def __init__(self, log_dir, hparams=None, trial_id=None):
        super().__init__()
        self.log_dir = log_dir
        self.hparams = hparams or {}
        self.trial_id = trial_id
        self._writers = {}

    def writer(self, run):
        """Returns (and caches) the summary writer of ``log_dir/run``."""
        if run not in self._writers:
            self._writers[run] = tf.summary.create_file_writer(os.path.join(self.log_dir, run))
        return self._writers[run]

    def on_train_begin(self, logs=None):
        if self.hparams:
            write_hparams(self.writer("."), self.hparams, self.trial_id)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        with self.writer("train").as_default(step=epoch):
            for name in (*SCALARS, "learning_rate"):
                if name in logs:
                    tf.summary.scalar(f"epoch_{name}", logs[name])
        with self.writer("validation").as_default(step=epoch):
            for name in SCALARS:
                if f"val_{name}" in logs:
                    tf.summary.scalar(f"epoch_{name}", logs[f"val_{name}"])
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.flush()


def write_hparams(writer, hparams, trial_id=None):
    """Writes the HParams experiment config and this session's values."""
    from tensorboard.plugins.hparams import api as hp

    metrics = [
        hp.Metric(f"epoch_{name}", group=group, display_name=f"{name} ({group})")
        for group in ("train", "validation")
        for name in SCALARS
    ]
    domain = [hp.HParam(name) for name in sorted(hparams)]
    with writer.as_default():
        hp.hparams_config(hparams=domain, metrics=metrics)
        hp.hparams(hparams, trial_id=trial_id)
    writer.flush()


class ProgressLogger(keras.callbacks.Callback):
    """A progress bar on a terminal, else one line per epoch.

    Args:
        epochs: Total epochs.
        steps_per_epoch: Steps of each epoch.
        stream: Output stream (default ``sys.stdout``).
        interactive: Force the terminal (``True``) or line (``False``) mode.
    """

    def __init__(self, epochs, steps_per_epoch, stream=None, interactive=None):
        super().__init__()
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._bar = None
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()
        if self.interactive:
            print(f"Epoch {epoch + 1}/{self.epochs}", file=self.stream, flush=True)
            self._bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=SCALARS)

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is not None:
            self._bar.update(batch + 1, values=list((logs or {}).items()))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        numbers = {k: v for k, v in logs.items() if isinstance(v, int | float | np.floating)}
        text = " - ".join(f"{k}: {v:.4g}" for k, v in numbers.items())
        seconds = time.time() - (self._start or time.time())
        line = f"epoch {epoch + 1}/{self.epochs} - {seconds:.1f}s - {text}"
        print(line, file=self.stream, flush=True)


class EpochEndHook(keras.callbacks.Callback):
    """Calls ``function(epoch, logs)`` at the end of every epoch (backup, sync)."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def on_epoch_end(self, epoch, logs=None):
        self.function(epoch, logs or {})


def extra_callbacks(config, *, info, main_model, log_dir, chief):
    """Returns the optional callbacks of other packages (e.g. Grad-CAM from ``explain``).

    This is the one place such callbacks are added. Each is skipped when its
    package is absent, so the trainer works on a minimal install.

    Args:
        config: The :class:`trainer.config.TrainConfig`.
        info: The dataset's :class:`trainer.data.DatasetInfo`.
        main_model: The single-output model.
        log_dir: Local TensorBoard folder.
        chief: Whether this worker writes outputs.
    """
    callbacks = []
    if config.explain and chief:
        try:
            from explain import callback as explain_callback
        except ImportError:
            explain_callback = None
        factory = getattr(explain_callback, "make_callback", None)
        if factory is not None:
            callbacks.append(factory(config=config, info=info, model=main_model, log_dir=log_dir))
    return callbacks

"""Keras callbacks driven by :class:`trainer.loop.DistributedLoop`, and the run's list of them.

Stateful callbacks follow the protocol of :mod:`trainer.state`
(``state.Resumable``), so a preempted run resumes them where they were.
:func:`make_callbacks` is the one place the run's callbacks are chosen and ordered.
"""

import csv
import io
import os

import keras
import numpy as np
import tensorflow as tf

from contracts import jobdir, storage
from explain import callback as explain_callback
from trainer import augment, augment_summary, report, state

SCALARS = ("loss", "accuracy", "top5_accuracy")


class ReduceLROnPlateau(state.Resumable, keras.callbacks.ReduceLROnPlateau):
    """Keras' plateau reduction whose counters survive a restart.

    :class:`trainer.state.PlateauCheckpoint` saves a full-state checkpoint at each plateau.
    """

    def get_state(self):
        best = None if self.best is None else float(self.best)
        return {"wait": int(self.wait), "cooldown_counter": int(self.cooldown_counter), "best": best}

    def _load_state(self, state, arrays):
        self.wait = state["wait"]
        self.cooldown_counter = state["cooldown_counter"]
        self.best = state["best"]


class EarlyStopping(state.Resumable, keras.callbacks.EarlyStopping):
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


def save_model(model, path):
    """Saves the functional ``model`` to the local ``.keras`` file ``path`` whole or not at all,
    without its optimizer.

    The file is the model a job hands on (evaluate, predict, explain and the export load it
    uncompiled); a run resumes from its checkpoints instead. Keras saves a compiled model's
    optimizer with it whatever it is asked (``include_optimizer`` only reaches ``.h5``): Adam's
    two slots per weight tripled the file and its writing time (Minception 84 MB, 1.7 s; now
    28 MB, 0.7 s). A functional view over the same layers carries no optimizer.

    Keras writes the archive in place: a full disk or a kill mid-save would leave a truncated
    ``model.keras`` in the place of the last good one. Written aside and renamed
    (:func:`contracts.storage.write_atomically`), the last good file stays.

    Raises:
        contracts.storage.WriteError: The file could not be written (one line naming it).
    """
    view = keras.Model(model.input, model.output, name=model.name)
    storage.write_atomically(path, view.save)


class BestModelCheckpoint(state.Resumable, keras.callbacks.Callback):
    """Saves the single-output main model to ``path`` when ``val_loss`` improves.

    Args:
        path: Local ``.keras`` file.
        main_model: The model to save (shares weights with the training model).
        monitor: Metric to minimize.
        enabled: False on non-chief workers: they track the best value but write nothing.
        start_from_epoch: Epochs before this one are not considered (as Keras'
            ``EarlyStopping(start_from_epoch=...)``).
    """

    def __init__(self, path, main_model, monitor="val_loss", enabled=True, start_from_epoch=0):
        super().__init__()
        self.path = path
        self.main_model = main_model
        self.monitor = monitor
        self.enabled = enabled
        self.start_from_epoch = start_from_epoch
        self.best = None
        self.best_epoch = -1

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if epoch < self.start_from_epoch or current is None:
            return
        if self.best is not None and not current < self.best:
            return
        self.best, self.best_epoch = float(current), epoch
        if self.enabled:
            save_model(self.main_model, self.path)

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
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        storage.write_bytes(self.path, text.getvalue().encode("utf-8"))  # Whole, or the last one stays.


class TensorBoardScalars(keras.callbacks.Callback):
    """Writes epoch scalars to ``log_dir/train`` and ``log_dir/validation`` plus HParams.

    Tags follow Keras' TensorBoard callback: ``epoch_loss``, ``epoch_accuracy``,
    ``epoch_top5_accuracy`` in both runs and ``epoch_learning_rate`` in ``train``.
    The Grad-CAM probe's scores of the validation images, when the epoch's logs
    hold them (:data:`explain.callback.SCORES`), go beside the validation accuracy.
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
            for key, tag in explain_callback.SCORES.items():
                if key in logs:
                    tf.summary.scalar(tag, logs[key])
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
    # The final evaluation's metrics, so book and modern runs compare on test accuracy too.
    metrics += [hp.Metric(tag, display_name=tag.removeprefix("final/")) for tag in report.FINAL_METRICS]
    domain = [hp.HParam(name) for name in sorted(hparams)]
    with writer.as_default():
        hp.hparams_config(hparams=domain, metrics=metrics)
        hp.hparams(hparams, trial_id=trial_id)
    writer.flush()


class HypertuneReport(keras.callbacks.Callback):
    """Reports each epoch's validation accuracy to Vertex AI hyperparameter tuning.

    Epoch ``e`` (0-based, as Keras counts) is reported at ``global_step``
    ``e + 1``, so a run of N epochs reports steps 1..N (a resumed run goes on
    from the epoch it resumes at). The trainer then reports the final
    evaluation through the same reporter at step N + 1: Vertex AI takes a
    trial's last measurement as its final one, and the final evaluation is of
    the weights the run keeps (the best epoch's, or their moving average),
    not of the last epoch's.

    Args:
        reporter: The run's :class:`trainer.report.HypertuneReporter`.
        monitor: The epoch log reported.
    """

    def __init__(self, reporter, monitor="val_accuracy"):
        super().__init__()
        self.reporter = reporter
        self.monitor = monitor

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None:
            self.reporter.report(value, step=epoch + 1)


class ProgressLogger(keras.callbacks.Callback):
    """A bar over each epoch's steps on a terminal, and one line per epoch (``contracts.voice``).

    Args:
        epochs: Total epochs.
        steps_per_epoch: Steps of each epoch.
        speaker: The trainer's :class:`contracts.voice.Voice`.
        interactive: Force the bar (``True``) or only the epoch lines (``False``);
            by default the bar exactly when the voice's stream is a terminal.
    """

    def __init__(self, epochs, steps_per_epoch, speaker, interactive=None):
        super().__init__()
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.speaker = speaker
        self.interactive = interactive
        self._steps = None

    def on_epoch_begin(self, epoch, logs=None):
        unit = f"steps of epoch {epoch + 1}/{self.epochs}"
        self._steps = self.speaker.progress(self.steps_per_epoch, unit, interactive=self.interactive)

    def on_train_batch_end(self, batch, logs=None):
        if self._steps is not None and self._steps.interactive:
            self._steps.advance(batch + 1 - self._steps.done, detail=_numbers(logs, SCALARS))

    def on_epoch_end(self, epoch, logs=None):
        seconds = self._steps.seconds if self._steps is not None else 0.0
        if self._steps is not None:
            self._steps.close()
        self.speaker.say(f"epoch {epoch + 1}/{self.epochs}, {seconds:.1f} s; {_numbers(logs)}")


def _numbers(logs, names=None):
    """``loss 1.23, accuracy 0.456, ...``: the numeric entries of ``logs`` (only ``names``, if given)."""
    numbers = {
        k: v
        for k, v in (logs or {}).items()
        if isinstance(v, int | float | np.floating) and (names is None or k in names)
    }
    return ", ".join(f"{k} {v:.4g}" for k, v in numbers.items())


def make_callbacks(
    config,
    *,
    tuning,
    info,
    main_model,
    outputs,
    chief,
    training_state,
    initial_epoch,
    fresh_start,
    steps_per_epoch,
    speaker,
):
    """Returns the run's callbacks in order, its early-stopping callback and its shortcut watch.

    The stateful ones are tracked by ``training_state`` so a backup holds their
    state; the plateau checkpoint follows the plateau callback, and the backup
    comes last so it captures every other callback's end-of-epoch state. The
    Grad-CAM probe comes first: it adds its scores to the epoch's logs, which
    the progress line, ``history.csv`` and TensorBoard then record.

    Args:
        config: The :class:`trainer.config.TrainConfig`.
        tuning: The run's :class:`trainer.report.HypertuneReporter` (a tuning
            trial's chief), which then gets every epoch's validation accuracy; else ``None``.
        info: The dataset's :class:`contracts.dataset.DatasetInfo`.
        main_model: The single-output model (saved, explained).
        outputs: The run's :class:`contracts.mirror.JobOutputs`.
        chief: Whether this worker writes outputs.
        training_state: The run's :class:`trainer.state.TrainingState`.
        initial_epoch: First epoch of this run (resuming: the backup's).
        fresh_start: Whether no earlier run trained in this job dir (the
            augmentation summary is written once per job).
        steps_per_epoch: Steps of each epoch.
        speaker: The trainer's :class:`contracts.voice.Voice` (progress lines, warnings).

    Returns:
        ``(callbacks, early_stopping, shortcut_watch)``: the watch
        (:class:`explain.callback.ShortcutWatch`) holds the probes' outcome for
        ``metrics.json``; it saw no probe when the Grad-CAM callback is off.
    """
    # The last epoch is always watched, so a run shorter than the warm-up still has a best model.
    start = min(config.monitor_start_epoch, config.epochs - 1)
    best_model = BestModelCheckpoint(
        outputs.local("job", jobdir.MODEL_FILE), main_model, enabled=chief, start_from_epoch=start
    )
    early_stopping = EarlyStopping(
        monitor="val_loss",
        mode="min",
        patience=config.early_stopping_patience,
        min_delta=config.min_delta,
        # With --ema the run ends on the weights' moving average, not on the best epoch's raw weights.
        restore_best_weights=not config.ema,
        start_from_epoch=start,
    )
    watch = explain_callback.ShortcutWatch(config.shortcut_probes, chance=1.0 / info.num_classes)
    listed = []
    if config.explain and chief:
        probe = explain_callback.from_dataset(
            main_model,
            info,
            policy=config.policy,
            crop_size=config.crop_size,
            log_dir=outputs.local("logs"),
            every_n_epochs=config.explain_every,
            watch=watch,
            log=speaker.warn,
        )
        if isinstance(probe, explain_callback.GradCamCallback):
            listed.append(training_state.track("gradcam", probe))
    listed.append(ProgressLogger(config.epochs, steps_per_epoch, speaker))
    if chief:
        if fresh_start:
            options = config.augment_options()
            augmenter = augment.Augmenter(config.policy, info.image_size, config.crop_size, **options)
            logdir = outputs.local("logs", "train")
            listed.append(augment_summary.AugmentationSummary(info, augmenter, logdir, config.seed))
        listed.append(HistoryCSV(outputs.local("job", jobdir.HISTORY_FILE), initial_epoch))
        listed.append(TensorBoardScalars(outputs.local("logs"), config.hparams(), trial_id=config.job_dir))
        if tuning is not None:
            listed.append(HypertuneReport(tuning))
    listed += [
        training_state.track("best_model", best_model),
        training_state.track("early_stopping", early_stopping),
    ]
    if config.lr_schedule == "plateau":  # A cosine schedule sets the learning rate every step.
        plateau = ReduceLROnPlateau(
            monitor="val_loss",
            mode="min",
            factor=config.lr_plateau_factor,
            patience=config.lr_plateau_patience,
        )
        listed.append(training_state.track("lr_plateau", plateau))
        listed.append(state.PlateauCheckpoint(training_state, outputs.local("checkpoints"), speaker.say))
    listed.append(
        state.BackupCallback(
            training_state,
            outputs.local("backup"),
            outputs.sync,
            every_steps=config.backup_every_steps,
            steps_per_epoch=steps_per_epoch,
        )
    )
    return listed, early_stopping, watch

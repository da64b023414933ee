"""Full training-state backup and restore, for preemption and plateau branches.

Keras 3's ``BackupAndRestore`` keeps only the weights and the epoch. A
preempted job must also resume with the learning rate, the optimizer's slots
and the callbacks' counters (plateau wait, early-stopping wait, best value and
best weights). Each save is a new generation of the backup folder
(:mod:`trainer.backup`: the layout, checksums and fallback): a
``tf.train.Checkpoint`` of the model and optimizer, the arrays a callback
keeps (best weights) and ``state.json`` (the epoch/step reached, the learning
rate, every callback's state, the files' checksums), written last. A job
killed in the middle of a save, or a damaged generation, resumes from the
previous generation; with none usable the run starts over.

The callback-state protocol lives here, once: a stateful callback mixes in
:class:`Resumable` and implements ``get_state()``, ``_load_state(state,
arrays)`` and optionally ``get_arrays()``; :class:`TrainingState` saves and
restores every tracked callback through it; :class:`BackupCallback` and
:class:`PlateauCheckpoint` are the two callbacks that write a full state.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from contracts import jobdir
from trainer import backup, distribute, optimizers

STATE_FILE = backup.STATE_FILE


class Resumable:
    """Mixin of a stateful callback: restored state waits until ``on_train_begin`` has reset it.

    Keras callbacks reset their counters in ``on_train_begin``; state restored
    before training is applied right after that reset, exactly where ``fit``
    would have left it.
    """

    _pending = None

    def set_state(self, state, arrays=None):
        """Holds ``state`` (and ``arrays``) for the next ``on_train_begin``."""
        self._pending = (state, arrays)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._pending is not None:
            state, arrays = self._pending
            self._pending = None
            self._load_state(state, arrays)


def read_state(directory):
    """Returns the state of the newest generation of a backup folder (files not verified), or ``None``."""
    return backup.newest_state(directory)


class TrainingState:
    """Saves and restores model, optimizer and callback state.

    Args:
        model: The training model; ``model.optimizer`` is saved with it.
        callbacks: ``name -> callback`` of callbacks with ``get_state()`` /
            ``set_state(state, arrays)`` and optionally ``get_arrays()``.
        chief: Whether this worker keeps what it writes (see
            :func:`trainer.distribute.worker_dir`).
        guard: Called before every save; raises when the state must not be
            saved (:meth:`trainer.loop.DistributedLoop.check_finite`: a diverged
            run never overwrites its last good backup).
    """

    def __init__(self, model, callbacks=None, chief=True, guard=None):
        self.model = model
        self.callbacks = dict(callbacks or {})
        self.chief = chief
        self.guard = guard
        # Backup folder -> the generation last written or restored there: kept
        # as the fallback when the next generation is committed.
        self._previous = {}
        self._restored = None

    def track(self, name, callback):
        """Adds a :class:`Resumable` callback whose state is saved under ``name``; returns it.

        A callback tracked after :meth:`restore` gets its restored state here.
        """
        self.callbacks[name] = callback
        if self._restored is not None:
            self._hand_over(name, *self._restored)
        return callback

    def carry_over(self):
        """Hands every tracked callback its own state back for the next ``on_train_begin``.

        A second training phase (fine-tuning after a frozen warm-up) calls the
        callbacks' ``on_train_begin`` again, which would reset their counters.
        """
        for callback in self.callbacks.values():
            arrays = callback.get_arrays() if hasattr(callback, "get_arrays") else None
            callback.set_state(callback.get_state(), arrays[1] if arrays else None)

    def _checkpoint(self):
        # Keras seed generators (dropout's random state) are model variables but not
        # weights, so the model's checkpoint leaves them out; without them a resumed
        # run would redraw the dropout masks of the steps it already trained.
        weights = {id(variable) for variable in self.model.weights}
        random = [variable for variable in self.model.variables if id(variable) not in weights]
        return tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer, random_state=random)

    def save(self, directory, *, epoch, step_in_epoch=0, extra=None):
        """Writes a full backup as a new generation of ``directory``.

        Every worker must call this (saving distributed variables is
        collective); non-chief workers write their checkpoint to a temporary
        folder and nothing else. The chief commits the generation (checksums,
        then ``state.json``), then deletes every older generation but the
        previous one.

        Args:
            directory: Local backup folder.
            epoch: Epochs completed (the epoch to resume at).
            step_in_epoch: Steps of epoch ``epoch`` already trained.
            extra: JSON-serializable values stored as ``state["extra"]``.

        Returns:
            The state dict (as written by the chief).
        """
        if self.guard is not None:
            self.guard()
        state = {
            "epoch": int(epoch),
            "step_in_epoch": int(step_in_epoch),
            "learning_rate": _learning_rate(self.model),
            "checkpoint": backup.CHECKPOINT,
            "callbacks": {name: callback.get_state() for name, callback in self.callbacks.items()},
            "arrays": {},
            "extra": extra or {},
        }
        if not self.chief:
            target = distribute.worker_dir(directory, self.chief)
            self._checkpoint().write(os.path.join(target, backup.CHECKPOINT))
            distribute.cleanup_worker_dir(target, self.chief)
            return state
        generation = backup.Generation(directory, backup.next_name(directory))
        os.makedirs(generation.path)
        self._checkpoint().write(generation.file(backup.CHECKPOINT))
        for name, callback in self.callbacks.items():
            arrays = callback.get_arrays() if hasattr(callback, "get_arrays") else None
            if arrays is not None:
                key, values = arrays
                state["arrays"][name] = f"{name}-{key}.npz"
                np.savez(generation.file(state["arrays"][name]), *values)
        state = backup.commit(generation, state)
        backup.prune(directory, keep={generation.name, self._previous.get(directory)})
        self._previous[directory] = generation.name
        return state

    def restore(self, directory, log=None):
        """Restores the newest usable generation of a backup folder written by :meth:`save`.

        Generations that are damaged (see :func:`trainer.backup.scan`) or whose
        checkpoint does not restore are skipped; the model and optimizer are
        put back to their values before the attempt, so with no usable
        generation the run starts over from them. The optimizer is built first
        so that its slot variables exist and are filled from the checkpoint.
        Callback state is handed to the callbacks (also to those tracked
        later), which apply it after their own ``on_train_begin`` reset.

        Args:
            directory: The backup folder, or a :class:`trainer.backup.Scan` of it.
            log: Called with one warning line when a damaged generation is skipped.

        Returns:
            The restored state dict, or ``None`` when none was restored.
        """
        found = directory if isinstance(directory, backup.Scan) else backup.scan(directory)
        optimizer = self.model.optimizer
        if found.usable and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        variables = [*self.model.variables, *optimizer.variables] if found.usable else []
        initial = [variable.numpy() for variable in variables]
        restored, skipped = None, []
        for generation in found.generations:
            if generation.problem is None:
                try:
                    arrays = self._read(generation)
                    self._checkpoint().read(generation.file(generation.state["checkpoint"])).expect_partial()
                    restored = generation
                    break
                # Whatever the reason (a checkpoint of another model, bytes the
                # checksums missed), an unusable generation must not crash every
                # restart of the job: it is skipped and named in the warning.
                except Exception as error:
                    generation.problem = f"{generation.name}: does not restore ({_first_line(error)})"
                    for variable, value in zip(variables, initial, strict=True):
                        variable.assign(value)
            skipped.append(generation)
        damaged = backup.describe(skipped)
        if restored is None:
            if damaged and log:
                log(f"backup in {found.directory} is damaged ({damaged}): starting over")
            return None
        if damaged and log:
            log(f"backup in {found.directory} is damaged ({damaged}): resuming from {restored.name}")
        state = restored.state
        if not optimizers.has_schedule(optimizer):  # A schedule follows the restored step counter.
            optimizer.learning_rate = state["learning_rate"]
        self._restored = (state, arrays)
        for name in self.callbacks:
            self._hand_over(name, state, arrays)
        self._previous[found.directory] = restored.name
        return state

    def _read(self, generation):
        """Returns ``callback name -> arrays`` of a generation's ``.npz`` files."""
        arrays = {}
        for name, filename in generation.state.get("arrays", {}).items():
            with np.load(generation.file(filename)) as data:
                arrays[name] = [data[f"arr_{i}"] for i in range(len(data.files))]
        return arrays

    def _hand_over(self, name, state, arrays):
        if name in state.get("callbacks", {}):
            self.callbacks[name].set_state(state["callbacks"][name], arrays.get(name))


class BackupCallback(keras.callbacks.Callback):
    """Saves the full state into the backup folder after every epoch (and every N steps), then syncs it.

    Placed last, so the backup captures every other callback's end-of-epoch state.
    With ``every_steps`` N, the state is also saved after every N-th step of an
    epoch (``step_in_epoch`` N, 2N, ...; not after the last step, which the
    epoch-end backup covers), so a kill loses at most N steps. Every worker of
    a cluster runs the same steps, so every worker takes part in each
    (collective) save.

    Args:
        training_state: The run's :class:`TrainingState`.
        directory: Local backup folder.
        sync: Called after each save (uploads the job dir to ``gs://``).
        every_steps: Steps between two backups within an epoch; 0: epoch ends only.
        steps_per_epoch: Steps of each epoch (required with ``every_steps``).
    """

    def __init__(self, training_state, directory, sync, every_steps=0, steps_per_epoch=None):
        super().__init__()
        if every_steps and not steps_per_epoch:
            raise ValueError("BackupCallback needs steps_per_epoch to back up every N steps")
        self.training_state = training_state
        self.directory = directory
        self.sync = sync
        self.every_steps = every_steps
        self.steps_per_epoch = steps_per_epoch
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        # ``batch`` is the step's index within the epoch (it continues after a resume).
        done = batch + 1
        if self.every_steps and done % self.every_steps == 0 and done < self.steps_per_epoch:
            self.training_state.save(self.directory, epoch=self._epoch, step_in_epoch=done)
            self.sync()

    def on_epoch_end(self, epoch, logs=None):
        self.training_state.save(self.directory, epoch=epoch + 1)
        self.sync()


class PlateauCheckpoint(keras.callbacks.Callback):
    """Saves a full-state checkpoint whenever the learning rate was cut at the end of an epoch.

    Each plateau gets its own folder ``<directory>/plateau-epoch-EEEE`` (a
    backup folder, see above), so a user can branch a new run from it
    (docs/trainer.md, "Branching from a plateau"). Place it after the
    plateau callback.

    Args:
        training_state: The run's :class:`TrainingState`.
        directory: Local ``checkpoints`` folder.
        log: Called with one line per saved checkpoint.
    """

    def __init__(self, training_state, directory, log=print):
        super().__init__()
        self.training_state = training_state
        self.directory = directory
        self.log = log
        self._before = None

    def on_epoch_begin(self, epoch, logs=None):
        self._before = _learning_rate(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if self._before is None or _learning_rate(self.model) >= self._before:
            return
        target = os.path.join(self.directory, jobdir.plateau_folder(epoch + 1))
        self.training_state.save(target, epoch=epoch + 1)
        self.log(f"plateau at epoch {epoch + 1}: learning rate reduced, state saved to {target}")


def _first_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


def _learning_rate(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))

"""Full training-state backup and restore, for preemption and plateau branches.

Keras 3's ``BackupAndRestore`` keeps only the weights and the epoch. A
preempted job must also resume with the learning rate, the optimizer's slots
and the callbacks' counters (plateau wait, early-stopping wait, best value and
best weights). A backup folder holds:

* ``ckpt-EEEE-SSSSSS.*``: a ``tf.train.Checkpoint`` of the model and optimizer;
* ``<callback>-best-epoch-EEEE.npz``: arrays a callback keeps (best weights);
* ``state.json``: the epoch/step reached, the learning rate, every callback's
  state and the names of the files above. It is written last (atomically), so
  a job killed in the middle of a save resumes from the previous one.

The callback-state protocol lives here, once: a stateful callback mixes in
:class:`Resumable` and implements ``get_state()``, ``_load_state(state,
arrays)`` and optionally ``get_arrays()``; :class:`TrainingState` saves and
restores every tracked callback through it; :class:`BackupCallback` and
:class:`PlateauCheckpoint` are the two callbacks that write a full state.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from contracts import jobdir
from trainer import distribute

STATE_FILE = "state.json"


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
    """Returns the parsed ``state.json`` of a backup folder, or ``None``."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


class TrainingState:
    """Saves and restores model, optimizer and callback state.

    Args:
        model: The training model; ``model.optimizer`` is saved with it.
        callbacks: ``name -> callback`` of callbacks with ``get_state()`` /
            ``set_state(state, arrays)`` and optionally ``get_arrays()``.
        chief: Whether this worker keeps what it writes (see
            :func:`trainer.distribute.worker_dir`).
    """

    def __init__(self, model, callbacks=None, chief=True):
        self.model = model
        self.callbacks = dict(callbacks or {})
        self.chief = chief

    def track(self, name, callback):
        """Adds a :class:`Resumable` callback whose state is saved under ``name``; returns it."""
        self.callbacks[name] = callback
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
        return tf.train.Checkpoint(model=self.model, optimizer=self.model.optimizer)

    def save(self, directory, *, epoch, step_in_epoch=0, extra=None):
        """Writes a full backup into ``directory``.

        Every worker must call this (saving distributed variables is
        collective); non-chief workers write to a temporary folder.

        Args:
            directory: Local folder of the backup.
            epoch: Epochs completed (the epoch to resume at).
            step_in_epoch: Steps of epoch ``epoch`` already trained.
            extra: JSON-serializable values stored as ``state["extra"]``.

        Returns:
            The state dict written.
        """
        target = distribute.worker_dir(directory, self.chief)
        os.makedirs(target, exist_ok=True)
        prefix = f"ckpt-{epoch:04d}-{step_in_epoch:06d}"
        self._checkpoint().write(os.path.join(target, prefix))
        state = {
            "epoch": int(epoch),
            "step_in_epoch": int(step_in_epoch),
            "learning_rate": _learning_rate(self.model),
            "checkpoint": prefix,
            "callbacks": {},
            "arrays": {},
            "extra": extra or {},
        }
        for name, callback in self.callbacks.items():
            state["callbacks"][name] = callback.get_state()
            arrays = callback.get_arrays() if hasattr(callback, "get_arrays") else None
            if arrays is not None:
                key, values = arrays
                filename = f"{name}-{key}.npz"
                path = os.path.join(target, filename)
                if not os.path.exists(path):
                    np.savez(path + ".tmp.npz", *values)
                    os.replace(path + ".tmp.npz", path)
                state["arrays"][name] = filename
        temporary = os.path.join(target, STATE_FILE + ".tmp")
        with open(temporary, "w") as f:
            json.dump(state, f, indent=2)
        os.replace(temporary, os.path.join(target, STATE_FILE))
        _remove_stale(target, keep={prefix, *state["arrays"].values()})
        distribute.cleanup_worker_dir(target, self.chief)
        return state

    def restore(self, directory, state=None):
        """Restores a backup written by :meth:`save`.

        The optimizer is built first so that its slot variables exist and are
        filled from the checkpoint. Callback state is handed to the callbacks,
        which apply it after their own ``on_train_begin`` reset.

        Returns:
            The state dict, or ``None`` when ``directory`` holds no backup.
        """
        state = state or read_state(directory)
        if state is None:
            return None
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self._checkpoint().read(os.path.join(directory, state["checkpoint"])).expect_partial()
        optimizer.learning_rate = state["learning_rate"]
        for name, callback in self.callbacks.items():
            if name not in state["callbacks"]:
                continue
            arrays = None
            if name in state["arrays"]:
                with np.load(os.path.join(directory, state["arrays"][name])) as data:
                    arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
            callback.set_state(state["callbacks"][name], arrays)
        return state


def _remove_stale(directory, keep):
    for filename in os.listdir(directory):
        if filename == STATE_FILE:
            continue
        if any(filename == k or filename.startswith(k + ".") for k in keep):
            continue
        if filename.startswith("ckpt-") or filename.endswith(".npz") or filename == "checkpoint":
            os.remove(os.path.join(directory, filename))


class BackupCallback(keras.callbacks.Callback):
    """Saves the full state into the backup folder after every epoch, then syncs it.

    Placed last, so the backup captures every other callback's end-of-epoch state.

    Args:
        training_state: The run's :class:`TrainingState`.
        directory: Local backup folder.
        sync: Called after each save (uploads the job dir to ``gs://``).
    """

    def __init__(self, training_state, directory, sync):
        super().__init__()
        self.training_state = training_state
        self.directory = directory
        self.sync = sync

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


def _learning_rate(model):
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))

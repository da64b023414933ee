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
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from trainer import distribute

STATE_FILE = "state.json"


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

    def __init__(self, model, callbacks, chief=True):
        self.model = model
        self.callbacks = dict(callbacks)
        self.chief = chief

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
            "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
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

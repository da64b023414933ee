"""A Keras callback that writes Grad-CAM panels of a fixed probe batch to TensorBoard.

Every ``every_n_epochs`` epochs the panels (original | heatmap | overlay,
titled with the true and predicted class) of the same images are written as
one grid image under the tag ``gradcam/probe`` at step ``epoch + 1``, so
TensorBoard's step slider shows the attention sharpening during training.

The callback is handed the single-output model it explains (for Inception v1,
the main-output view of the multi-output training model, which shares its
weights), so it needs nothing from the trainer. A failure is logged as a
warning and never stops training.
"""

import logging
import os

import keras
import numpy as np
import tensorflow as tf

from contracts import dataset as data
from explain import gradcam, render

LOGGER = logging.getLogger(__name__)
TAG = "gradcam/probe"
PROBE_SPLITS = ("valid", "test", "train")


class GradCamCallback(keras.callbacks.Callback):
    """Writes Grad-CAM panels of a probe batch every ``every_n_epochs`` epochs.

    Args:
        model: The single-output model to explain; it shares its weights with
            the model being trained.
        images: float32 ``[N, S, S, 3]`` probe images as the model takes them.
        labels: ``[N]`` true class indices (the explained class).
        class_names: Names in label order.
        logdir: Folder of the summary writer (e.g. ``<tensorboard dir>/gradcam``).
        every_n_epochs: Write after every this many epochs (and after the last one).
        method: One of :data:`explain.gradcam.METHODS`.
        layer: Target layer; ``None`` picks the last spatial feature map.
        max_images: Explain at most this many of ``images``.
        boxes: Optional ``[N, 4]`` object boxes in the images' coordinates, drawn on
            the panels; a row with a negative ``xmin`` means "no box".
    """

    def __init__(
        self,
        model,
        images,
        labels,
        class_names,
        logdir,
        every_n_epochs=5,
        method=gradcam.DEFAULT_METHOD,
        layer=None,
        max_images=8,
        boxes=None,
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.explained = model
        self.method = gradcam.check_method(method)
        self.images = np.asarray(images, dtype=np.float32)[:max_images]
        self.labels = np.asarray(labels, dtype=np.int64)[: len(self.images)]
        self.boxes = None if boxes is None else np.asarray(boxes)[: len(self.images)]
        self.class_names = list(class_names)
        self.logdir = logdir
        self.every_n_epochs = every_n_epochs
        self.layer = layer
        self._writer = None
        self._last_epoch = None
        self._written = set()

    def write(self, step):
        """Explains the probe batch with the current weights and writes the grid at ``step``."""
        model = self.explained
        probabilities = np.asarray(model(self.images, training=False), dtype=np.float32)
        predicted = probabilities.argmax(axis=1)
        maps = gradcam.Explainer(model, self.method, self.layer)(self.images, self.labels)
        panels = []
        for i, heatmap in enumerate(maps):
            label, guess = int(self.labels[i]), int(predicted[i])
            box = None if self.boxes is None or self.boxes[i][0] < 0 else self.boxes[i]
            panels.append(
                render.panel(
                    self.images[i],
                    heatmap,
                    self._name(label),
                    self._name(guess),
                    probabilities[i, guess],
                    box,
                )
            )
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.logdir)
        with self._writer.as_default():
            tf.summary.image(TAG, render.grid(panels, columns=2)[None], step=step)
        self._writer.flush()
        self._written.add(step)

    def _name(self, index):
        return self.class_names[index] if index < len(self.class_names) else f"class_{index}"

    def _safe_write(self, step):
        try:
            self.write(step)
        except Exception as error:  # Never let a visualisation stop training.
            LOGGER.warning("Grad-CAM callback failed at step %d: %s: %s", step, type(error).__name__, error)

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if (epoch + 1) % self.every_n_epochs == 0:
            self._safe_write(epoch + 1)

    def on_train_end(self, logs=None):
        if self._last_epoch is not None and self._last_epoch + 1 not in self._written:
            self._safe_write(self._last_epoch + 1)
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def probe_batch(info, *, policy, crop_size, max_images=8):
    """Reads the first ``max_images`` images of the first evaluation split that has any.

    Returns:
        ``(images, labels, boxes)`` as numpy arrays, after the policy's evaluation transform.
    """
    for split in PROBE_SPLITS:
        if info.split_counts.get(split):
            dataset = data.make_dataset(
                info, split, global_batch_size=max_images, policy=policy, crop_size=crop_size, features="all"
            )
            batch = next(dataset.take(1).as_numpy_iterator())
            boxes = np.where(batch["has_box"][:, None], batch["box"], -1)
            return batch["image"], batch["label"], boxes
    raise ValueError(f"{info.data_dir}: no split with images for the Grad-CAM probe batch")


def from_dataset(model, info, *, policy, crop_size, log_dir, max_images=8):
    """A :class:`GradCamCallback` on a probe batch of the dataset's first evaluation split.

    Args:
        model: The single-output model to explain (shares weights with the trained model).
        info: The dataset's :class:`contracts.dataset.DatasetInfo`.
        policy: Augmentation policy whose evaluation transform the probe images get.
        crop_size: Crop side of the ``crop`` policy.
        log_dir: The run's local TensorBoard folder; panels go to ``log_dir/gradcam``.
        max_images: Size of the probe batch.

    Returns:
        The callback; a callback that does nothing when no probe batch can be
        read (a warning is logged), so an optional visualisation never stops training.
    """
    try:
        images, labels, boxes = probe_batch(info, policy=policy, crop_size=crop_size, max_images=max_images)
    except Exception as error:  # An optional visualisation must not stop the trainer.
        LOGGER.warning("Grad-CAM callback disabled: %s", error)
        return keras.callbacks.Callback()
    return GradCamCallback(
        model, images, labels, info.class_names, os.path.join(log_dir, "gradcam"), boxes=boxes
    )

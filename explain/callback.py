"""A Keras callback that explains a fixed probe set during training, and a shortcut alarm.

Every ``every_n_epochs`` epochs the callback explains the same probe images
(the first ones of ``valid``) with the current weights:

* the panels (original | heatmap | overlay, titled with the true and
  predicted class) of the first few go into one grid image, tag
  ``gradcam/probe``, step ``epoch + 1``: TensorBoard's step slider shows the
  attention sharpening during training;
* all of them are scored against their boxes (:mod:`explain.pointing`): the
  pointing game, the energy in the box and their centre baselines join the
  epoch's logs (:data:`SCORES`), so whatever records the logs (the trainer's
  history and TensorBoard scalars) records them beside the validation accuracy;
* a :class:`ShortcutWatch` (:mod:`explain.shortcut`) reads the scores with
  the epoch's validation accuracy; when it raises the alarm the callback logs
  one warning line and writes it as a text summary (``gradcam/shortcut_alarm``).

After training, once the weights the run keeps are in place (the best epoch's,
or their moving average), :meth:`GradCamCallback.final_check` scores the probe
set once more with them: the watch's final check, which needs no streak of
probes, so a short run is judged too. The trainer reaches it through the watch
(:meth:`ShortcutWatch.final_summary`), which the callback hands the check.

Without boxes (the dataset's ``metadata.json`` counts none in the probe split,
or, for a dataset written before that count, no probe image has one) the
pointing game is skipped: one line says so and why, no score joins the logs
and the panels are still written. Boxes covering (nearly) the whole image are
scored, and one line says that the score cannot tell the model from its
baselines (:func:`explain.pointing.uninformative_line`).

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
from explain import gradcam, pointing, render
from explain.shortcut import ShortcutWatch

LOGGER = logging.getLogger(__name__)
TAG = "gradcam/probe"
ALARM_TAG = "gradcam/shortcut_alarm"
PROBE_SPLITS = ("valid", "test", "train")
# Images scored at each probe: the pointing game of 64 images has a standard
# error of at most 0.06, and one probe costs a forward and backward pass of them.
PROBE_IMAGES = 64
# Images shown in the panel grid.
PANEL_IMAGES = 8
# Epoch-log key -> TensorBoard tag of each score of a probe.
SCORES = {
    "gradcam_pointing_game": "gradcam/pointing_game",
    "gradcam_pointing_game_center_baseline": "gradcam/pointing_game_center_baseline",
    "gradcam_energy_in_box": "gradcam/energy_in_box",
    "gradcam_energy_in_box_center_baseline": "gradcam/energy_in_box_center_baseline",
}


def score(heatmaps, boxes, labels):
    """Scores maps against their boxes (rows with a negative ``xmin`` have none).

    Returns:
        ``(scores, uninformative)``: ``{key of SCORES: value}`` (``{}`` when no
        image has a box) and :func:`explain.pointing.uninformative_line` of the
        game (``None`` when it can tell the model from its baselines).
    """
    boxes = np.asarray(boxes)
    game = pointing.PointingGame()
    game.add(heatmaps, boxes, labels, has_box=boxes[:, 0] >= 0)
    if not game.count:
        return {}, None
    summary = game.summary()
    values = (
        summary["pointing_game"]["hit_rate"],
        summary["pointing_game"]["center_baseline"],
        summary["energy_in_box"],
        summary["energy_baselines"]["center_baseline"],
    )
    return dict(zip(SCORES, values, strict=True)), summary["pointing_game"]["uninformative"]


class GradCamCallback(keras.callbacks.Callback):
    """Explains a probe set every ``every_n_epochs`` epochs: panels, scores and the shortcut alarm.

    Stateful in the way :mod:`trainer.state` backs up callbacks: ``get_state``
    and ``set_state`` carry the :class:`ShortcutWatch`'s probes, so a resumed
    run continues the streak.

    Args:
        model: The single-output model to explain; it shares its weights with
            the model being trained.
        images: float32 ``[N, S, S, 3]`` probe images as the model takes them.
        labels: ``[N]`` true class indices (the explained class).
        class_names: Names in label order.
        logdir: Folder of the summary writer (e.g. ``<tensorboard dir>/gradcam``).
        every_n_epochs: Explain after every this many epochs (panels also after the last one).
        method: One of :data:`explain.gradcam.METHODS`.
        layer: Target layer; ``None`` picks the last spatial feature map.
        max_images: Show at most this many of ``images`` in the panels.
        boxes: Optional ``[N, 4]`` object boxes in the images' coordinates, drawn on
            the panels and scored against; a row with a negative ``xmin`` means "no box".
            ``None``: panels only, silently.
        watch: The :class:`ShortcutWatch` fed with each probe's scores and the final
            check's (it is handed :meth:`final_check` as its ``final_probe``); a new
            one (the default streak) when ``None``.
        log: Called with each warning line (the alarm, a failed probe, a skipped or
            uninformative pointing game); default: this module's logger.
        skipped: Why the pointing game is not played (:func:`explain.pointing.skip_reason`);
            with boxes but none of them valid, the callback finds the reason itself.
            Said once, here, and kept by the watch for ``metrics.json``.
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
        max_images=PANEL_IMAGES,
        boxes=None,
        watch=None,
        log=None,
        skipped=None,
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.explained = model
        self.method = gradcam.check_method(method)
        self.images = np.asarray(images, dtype=np.float32)
        self.labels = np.asarray(labels, dtype=np.int64)[: len(self.images)]
        self.boxes = None if boxes is None else np.asarray(boxes)[: len(self.images)]
        self.max_images = max_images
        self.class_names = list(class_names)
        self.logdir = logdir
        self.every_n_epochs = every_n_epochs
        self.layer = layer
        self.watch = ShortcutWatch() if watch is None else watch
        self.watch.final_probe = self.final_check
        self.log = log or LOGGER.warning
        self._writer = None
        self._last_epoch = None
        self._written = set()
        self.uninformative = None
        self._said_uninformative = False
        if skipped is None and self.boxes is not None:
            skipped = pointing.skip_reason(None, "probe", self.boxes[:, 0] >= 0)
        self.skipped = skipped
        if skipped is not None:
            # No box to draw or score: the panels go on, the game is not played.
            self.boxes = None
            self.watch.skipped = skipped
            self.log(pointing.skipped_line(skipped))

    def write(self, step):
        """Explains the probe set with the current weights and writes the panel grid at ``step``.

        Returns:
            The probe's scores (:func:`score`; ``{}`` without boxes). Whether they
            can tell the model from its baselines is left in ``self.uninformative``.
        """
        model = self.explained
        shown = slice(0, self.max_images)
        probabilities = np.asarray(model(self.images[shown], training=False), dtype=np.float32)
        predicted = probabilities.argmax(axis=1)
        # Every probe image is explained for the scores; only the first few are drawn.
        maps = self._maps()
        panels = []
        for i, heatmap in enumerate(maps[shown]):
            label, guess = int(self.labels[i]), int(predicted[i])
            box = None if self.boxes is None or self.boxes[i][0] < 0 else self.boxes[i]
            names = self._name(label), self._name(guess)
            panels.append(render.panel(self.images[i], heatmap, *names, probabilities[i, guess], box))
        with self._summary_writer().as_default():
            tf.summary.image(TAG, render.grid(panels, columns=2)[None], step=step)
        self._writer.flush()
        self._written.add(step)
        if self.boxes is None:
            return {}
        scores, self.uninformative = score(maps, self.boxes, self.labels)
        return scores

    def _maps(self):
        return gradcam.Explainer(self.explained, self.method, self.layer)(self.images, self.labels)

    def _summary_writer(self):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.logdir)
        return self._writer

    def _name(self, index):
        return self.class_names[index] if index < len(self.class_names) else f"class_{index}"

    def _safe_write(self, step):
        try:
            return self.write(step)
        except Exception as error:  # Never let a visualisation stop training.
            self.log(f"Grad-CAM callback failed at step {step}: {type(error).__name__}: {error}")
            return {}

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if (epoch + 1) % self.every_n_epochs:
            return
        scores = self._safe_write(epoch + 1)
        if not scores:
            return
        if logs is not None:
            logs.update(scores)
        self._say_uninformative()
        if self.watch.add(epoch, (logs or {}).get("val_accuracy"), *_judged(scores), self.uninformative):
            self._raise_alarm(epoch)

    def final_check(self, val_accuracy):
        """The final check: scores the probe set with the current weights (:meth:`ShortcutWatch.finish`).

        Call it once after training, when the model holds the weights the run
        keeps; the trainer does, through :meth:`ShortcutWatch.final_summary`.
        No panel is drawn (the last epoch's are). Without a pointing game
        (no boxes) there is nothing to check; a failure is logged, not raised.

        Args:
            val_accuracy: Those weights' validation accuracy.

        Returns:
            Whether the final check raised the alarm.
        """
        if self.boxes is None:
            return False
        try:
            scores, self.uninformative = score(self._maps(), self.boxes, self.labels)
        except Exception as error:  # An optional check must not fail the run's reports.
            self.log(f"Grad-CAM final check failed: {type(error).__name__}: {error}")
            return False
        if not scores:
            return False
        self._say_uninformative()
        history = self.watch.history
        # The last epoch trained (a run resumed after its last epoch trained none: its last probe's).
        epoch = (
            self._last_epoch if self._last_epoch is not None else (history[-1]["epoch"] if history else None)
        )
        raised = self.watch.finish(epoch, val_accuracy, *_judged(scores), self.uninformative)
        if raised:
            self._raise_alarm(epoch)
            self._writer.close()
            self._writer = None
        return raised

    def _say_uninformative(self):
        if self.uninformative is not None and not self._said_uninformative:
            # The probe set is fixed, so its boxes are: one line for the run, the numbers stay in the logs.
            self._said_uninformative = True
            self.log(self.uninformative)

    def _raise_alarm(self, epoch):
        message = self.watch.message()
        self.log(message)
        with self._summary_writer().as_default():
            tf.summary.text(ALARM_TAG, message, step=0 if epoch is None else epoch + 1)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._last_epoch is not None and self._last_epoch + 1 not in self._written:
            self._safe_write(self._last_epoch + 1)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get_state(self):
        """The watch's state (see :meth:`ShortcutWatch.get_state`)."""
        return self.watch.get_state()

    def set_state(self, state, arrays=None):
        """Restores the watch's state; this callback resets nothing when training begins."""
        self.watch.load_state(state)


def _judged(scores):
    """The scores a :class:`ShortcutWatch` entry takes, in its order: pointing game, its centre baseline,
    energy in the box."""
    return (
        scores["gradcam_pointing_game"],
        scores["gradcam_pointing_game_center_baseline"],
        scores["gradcam_energy_in_box"],
    )


def probe_split(info):
    """The first evaluation split (:data:`PROBE_SPLITS`) that has images."""
    for split in PROBE_SPLITS:
        if info.split_counts.get(split):
            return split
    raise ValueError(f"{info.data_dir}: no split with images for the Grad-CAM probe batch")


def probe_batch(info, *, policy, crop_size, max_images=PANEL_IMAGES):
    """Reads the first ``max_images`` images of :func:`probe_split`.

    Returns:
        ``(images, labels, boxes)`` as numpy arrays, after the policy's evaluation transform.
    """
    split = probe_split(info)
    dataset = data.make_dataset(
        info, split, global_batch_size=max_images, policy=policy, crop_size=crop_size, features="all"
    )
    batch = next(dataset.take(1).as_numpy_iterator())
    boxes = np.where(batch["has_box"][:, None], batch["box"], -1)
    return batch["image"], batch["label"], boxes


def from_dataset(
    model,
    info,
    *,
    policy,
    crop_size,
    log_dir,
    max_images=PANEL_IMAGES,
    probe_images=PROBE_IMAGES,
    every_n_epochs=5,
    watch=None,
    log=None,
):
    """A :class:`GradCamCallback` on a probe set of the dataset's first evaluation split.

    Args:
        model: The single-output model to explain (shares weights with the trained model).
        info: The dataset's :class:`contracts.dataset.DatasetInfo`.
        policy: Augmentation policy whose evaluation transform the probe images get.
        crop_size: Crop side of the ``crop`` policy.
        log_dir: The run's local TensorBoard folder; panels go to ``log_dir/gradcam``.
        max_images: Images shown in the panels (the first of the probe set).
        probe_images: Size of the probe set that is scored.
        every_n_epochs: Explain after every this many epochs.
        watch: The :class:`ShortcutWatch` to feed (see :class:`GradCamCallback`).
        log: Called with each warning line (the alarm, a failed or disabled probe, a skipped
            or uninformative pointing game).

    Returns:
        The callback; a callback that does nothing when no probe set can be
        read (a warning is logged), so an optional visualisation never stops training.
    """
    try:
        split = probe_split(info)
        images, labels, boxes = probe_batch(
            info, policy=policy, crop_size=crop_size, max_images=max(max_images, probe_images)
        )
    except Exception as error:  # An optional visualisation must not stop the trainer.
        (log or LOGGER.warning)(f"Grad-CAM callback disabled: {error}")
        return keras.callbacks.Callback()
    return GradCamCallback(
        model,
        images,
        labels,
        info.class_names,
        os.path.join(log_dir, "gradcam"),
        every_n_epochs=every_n_epochs,
        max_images=max_images,
        boxes=boxes,
        watch=watch,
        log=log,
        skipped=pointing.skip_reason(info.box_count(split), split, boxes[:, 0] >= 0),
    )

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
* a :class:`ShortcutWatch` reads the scores with the epoch's validation
  accuracy; when it raises the alarm the callback logs one warning line and
  writes it as a text summary (``gradcam/shortcut_alarm``).

The callback is handed the single-output model it explains (for Inception v1,
the main-output view of the multi-output training model, which shares its
weights), so it needs nothing from the trainer. A failure is logged as a
warning and never stops training.
"""

import dataclasses
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from contracts import dataset as data
from explain import gradcam, pointing, render

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
        ``{key of SCORES: value}``, or ``{}`` when no image has a box.
    """
    boxes = np.asarray(boxes)
    game = pointing.PointingGame()
    game.add(heatmaps, boxes, labels, has_box=boxes[:, 0] >= 0)
    if not game.count:
        return {}
    summary = game.summary()
    values = (
        summary["pointing_game"]["hit_rate"],
        summary["pointing_game"]["center_baseline"],
        summary["energy_in_box"],
        summary["energy_baselines"]["center_baseline"],
    )
    return dict(zip(SCORES, values, strict=True))


@dataclasses.dataclass
class ShortcutWatch:
    """Raises the shortcut alarm from the probes' validation accuracy and pointing game.

    The alarm is raised at the first probe that ends ``probes`` (``K``)
    consecutive probes where (a) the pointing game is at or below its centre
    baseline and (b) the validation accuracy keeps rising: it is higher at
    every one of the ``K`` probes than at the probe just before them (than
    chance, ``chance``, when there is none). A model that keeps learning while
    its attention stays off the objects is learning something else: a
    watermark, the background. Comparing with the probe before the streak,
    not probe to probe, lets a streak survive the jitter of a small
    validation split. A probe without a validation accuracy or a pointing
    game breaks the streak (and, as the probe before one, prevents it). The
    alarm is raised once.

    Args:
        probes: Length ``K`` of the streak.
        chance: The accuracy the first probe is compared with (``1 / classes``).
    """

    probes: int = 3
    chance: float = 0.0
    history: list = dataclasses.field(default_factory=list)
    alarm: dict | None = None

    def __post_init__(self):
        if self.probes < 1:
            raise ValueError(f"probes must be >= 1, got {self.probes}")

    def add(self, epoch, val_accuracy, pointing_game, center_baseline, energy_in_box=None):
        """Records one probe (``epoch`` 0-based); returns whether this probe raised the alarm."""
        entry = {
            "epoch": int(epoch),
            "val_accuracy": _number(val_accuracy),
            "pointing_game": _number(pointing_game),
            "center_baseline": _number(center_baseline),
            "energy_in_box": _number(energy_in_box),
        }
        self.history.append(entry)
        if self.alarm is not None or not self._streak():
            return False
        self.alarm = entry
        return True

    def _streak(self):
        if len(self.history) < self.probes:
            return False
        earlier = self.history[: -self.probes]
        before = earlier[-1]["val_accuracy"] if earlier else self.chance
        window = self.history[-self.probes :]
        return before is not None and all(
            entry["val_accuracy"] is not None
            and entry["val_accuracy"] > before
            and _points_at_object(entry) is False
            for entry in window
        )

    def message(self):
        """The one-line warning of a raised alarm (``None`` without one)."""
        if self.alarm is None:
            return None
        entry = self.alarm
        return (
            f"shortcut alarm at epoch {entry['epoch']}: over {self.probes} Grad-CAM probes the validation "
            f"accuracy rose (to {entry['val_accuracy']:.3f}) while the pointing game stayed at or below its "
            f"centre baseline (now {entry['pointing_game']:.3f} against {entry['center_baseline']:.3f}): "
            "the model may have learned something other than the objects (a watermark, the background); "
            "look at the gradcam/probe panels"
        )

    def summary(self):
        """The ``explanations`` entry of ``metrics.json``: plain values only.

        Keys: ``shortcut_alarm`` (bool), ``epoch`` (0-based epoch of the
        alarm, else ``None``), ``probes`` (how many probes were scored; 0: the
        run was not watched), ``streak`` (``K``), and ``val_accuracy``,
        ``pointing_game``, ``center_baseline``, ``energy_in_box`` of the
        alarm's probe (else of the last probe; ``None`` without one).
        """
        entry = self.alarm or (self.history[-1] if self.history else {})
        scores = ("val_accuracy", "pointing_game", "center_baseline", "energy_in_box")
        return {
            "shortcut_alarm": self.alarm is not None,
            "epoch": self.alarm["epoch"] if self.alarm else None,
            "probes": len(self.history),
            "streak": self.probes,
            **{key: entry.get(key) for key in scores},
        }

    def get_state(self):
        """Returns the probes seen and the alarm as JSON-ready values (a backup keeps them)."""
        return {"history": [dict(entry) for entry in self.history], "alarm": self.alarm}

    def load_state(self, state):
        """Puts back what :meth:`get_state` returned."""
        self.history = [dict(entry) for entry in state["history"]]
        self.alarm = None if state["alarm"] is None else dict(state["alarm"])


def _points_at_object(entry):
    """Whether a probe's pointing game beats its centre baseline (``None``: not scored)."""
    if entry["pointing_game"] is None or entry["center_baseline"] is None:
        return None
    return entry["pointing_game"] > entry["center_baseline"]


def _number(value):
    return None if value is None else float(value)


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
        watch: The :class:`ShortcutWatch` fed with each probe's scores; a new
            one (streak of 3) when ``None``.
        log: Called with each warning line (the alarm, a failed probe); default: this module's logger.
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
        self.log = log or LOGGER.warning
        self._writer = None
        self._last_epoch = None
        self._written = set()

    def write(self, step):
        """Explains the probe set with the current weights and writes the panel grid at ``step``.

        Returns:
            The probe's scores (:func:`score`; ``{}`` without boxes).
        """
        model = self.explained
        shown = slice(0, self.max_images)
        probabilities = np.asarray(model(self.images[shown], training=False), dtype=np.float32)
        predicted = probabilities.argmax(axis=1)
        # Every probe image is explained for the scores; only the first few are drawn.
        maps = gradcam.Explainer(model, self.method, self.layer)(self.images, self.labels)
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
        return {} if self.boxes is None else score(maps, self.boxes, self.labels)

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
        raised = self.watch.add(
            epoch,
            (logs or {}).get("val_accuracy"),
            scores["gradcam_pointing_game"],
            scores["gradcam_pointing_game_center_baseline"],
            scores["gradcam_energy_in_box"],
        )
        if raised:
            self._raise_alarm(epoch)

    def _raise_alarm(self, epoch):
        message = self.watch.message()
        self.log(message)
        with self._summary_writer().as_default():
            tf.summary.text(ALARM_TAG, message, step=epoch + 1)
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


def probe_batch(info, *, policy, crop_size, max_images=PANEL_IMAGES):
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
        log: Called with each warning line (the alarm, a failed or disabled probe).

    Returns:
        The callback; a callback that does nothing when no probe set can be
        read (a warning is logged), so an optional visualisation never stops training.
    """
    try:
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
    )

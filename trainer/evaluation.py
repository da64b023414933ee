"""Evaluation of a model on one split: the trainer's final evaluation and ``python -m trainer.evaluate``.

Both run :func:`evaluate_split` over a
:class:`trainer.loop.DistributedLoop`, so a saved model evaluated later gives
the numbers of the job's ``metrics.json`` and ``per_class_accuracy.csv``
(:func:`per_class` holds the same numbers as the CSV; precision, recall, F1,
their macro averages and the most confused pairs come from
:mod:`trainer.class_metrics`). :func:`flip_averaged`
is the left-right flip test-time augmentation of ``trainer.evaluate --tta flip``.
:func:`final_splits` names the splits a run's final evaluation covers: a dataset
without test images (a folder of photos split into train and valid only) is
evaluated on ``valid`` alone. :func:`calibrate` fits the softmax temperature
(:mod:`trainer.calibration`) on valid and measures it on the last of those splits.
"""

import numpy as np
import tensorflow as tf

from trainer import calibration, class_metrics, report

# The numbers of one split's evaluation, as metrics.json keeps them.
METRIC_KEYS = ("loss", "accuracy", "top5_accuracy", "count")
TTA_MODES = ("none", "flip")
VALID, TEST = "valid", "test"
NO_TEST_WARNING = (
    "the dataset's test split holds no images: the final evaluation, metrics.json and the "
    "per-class report cover valid only"
)


def final_splits(info):
    """Returns the splits a run's final evaluation covers: ``valid`` and ``test``, or ``valid`` alone.

    A dataset without test images (a test split of 0 records) is evaluated on ``valid`` only.

    Args:
        info: A :class:`contracts.dataset.DatasetInfo`.
    """
    return (VALID, TEST) if info.split_counts.get(TEST, 0) > 0 else (VALID,)


def evaluate_split(evaluator, dataset, class_names):
    """Evaluates a model over one whole split.

    Args:
        evaluator: A :class:`trainer.loop.DistributedLoop` (its ``eval_model`` is evaluated).
        dataset: The split's finite distributed dataset of ``(images, labels)``.
        class_names: The dataset's class names (the most confused pairs name them).

    Returns:
        ``(metrics, confusion)``: the ``metrics.json`` entry of the split (``loss``,
        ``accuracy`` (top-1), ``top5_accuracy``, ``count``, and from the confusion matrix
        :func:`trainer.class_metrics.split_summary`'s ``macro_precision``, ``macro_recall``,
        ``macro_f1``, ``most_confused`` and ``never_predicted``), and the int64 ``[C, C]``
        confusion matrix, rows the true labels.
    """
    logs, confusion = evaluator.evaluate(dataset, confusion=True)
    metrics = {key: logs[key] for key in METRIC_KEYS}
    return {**metrics, **class_metrics.split_summary(confusion, class_names)}, confusion


def split_probabilities(model, dataset, predict=None):
    """Returns ``(probabilities, labels)`` of a whole split: float32 ``[N, C]`` and int64 ``[N]``.

    The per-image softmax temperature scaling is fitted on and measured with
    (:mod:`trainer.calibration`); ``dataset`` is a finite, non-distributed stream
    of ``(images, labels)`` batches, ``model`` the single-output model. ``predict``
    (:func:`probabilities_function` of ``model``) lets several splits share one trace.
    """
    predict = predict or probabilities_function(model)
    probabilities, labels = [], []
    for images, batch_labels in dataset:
        probabilities.append(predict(images).numpy())
        labels.append(np.asarray(batch_labels, dtype=np.int64).reshape(-1))
    return np.concatenate(probabilities), np.concatenate(labels)


def probabilities_function(model):
    """The traced ``images -> float32 probabilities`` of the single-output ``model``."""

    def probabilities(images):
        return tf.cast(model(images, training=False), tf.float32)

    return tf.function(probabilities, reduce_retracing=True, autograph=False)


def calibrate(model, datasets):
    """Fits the softmax temperature on valid and measures it on the last split of ``datasets``.

    Args:
        model: The single-output model.
        datasets: ``{split: dataset}`` of :func:`final_splits` (``valid`` first), each a finite,
            non-distributed stream of ``(images, labels)``.

    Returns:
        ``(summary, (probabilities, labels))``: metrics.json's ``calibration`` entry
        (:func:`trainer.calibration.summary`, measured on test, or valid without test) and the
        uncalibrated outputs of the measured split (the reliability diagram's input).
    """
    # The splits share one traced function: its traces (a second one for a smaller last batch) are
    # paid once, not once per split.
    predict = probabilities_function(model)
    outputs = {split: split_probabilities(model, dataset, predict) for split, dataset in datasets.items()}
    measured = list(datasets)[-1]
    return calibration.summary(outputs[VALID], outputs[measured], measured), outputs[measured]


def per_class(confusion, wnids, class_names):
    """Returns one dict per class: the columns of ``per_class_accuracy.csv`` (``report.PER_CLASS_COLUMNS``).

    ``index``, ``wnid``, ``name``, ``count``, ``correct``, ``accuracy`` (NaN for a class
    without images), ``precision``, ``recall``, ``f1`` (:func:`trainer.class_metrics.per_class`:
    a 0/0 is 0) and ``support``.
    """
    confusion = np.asarray(confusion)
    accuracy = report.per_class_accuracy(confusion)
    numbers = class_metrics.per_class(confusion)
    return [
        {
            "index": index,
            "wnid": wnid,
            "name": name,
            "count": int(numbers["support"][index]),
            "correct": int(numbers["correct"][index]),
            "accuracy": float(accuracy[index]),
            **{key: float(numbers[key][index]) for key in ("precision", "recall", "f1")},
            "support": int(numbers["support"][index]),
        }
        for index, (wnid, name) in enumerate(zip(wnids, class_names, strict=True))
    ]


def flip_averaged(model):
    """Returns a model-like callable averaging ``model``'s softmax over each image and its mirror.

    One forward pass on the batch concatenated with its left-right mirror;
    the probabilities of the two halves are averaged (in float32, whatever
    the model's precision). Call it as the model: ``fn(images, training=False)``.
    """

    def predict(images, training=False):
        count = tf.shape(images)[0]
        both = tf.concat([images, tf.reverse(images, axis=[2])], axis=0)
        probabilities = tf.cast(model(both, training=training), tf.float32)
        return (probabilities[:count] + probabilities[count:]) / 2.0

    return predict

"""Evaluation of a model on one split: the trainer's final evaluation and ``python -m trainer.evaluate``.

Both run :func:`evaluate_split` over a
:class:`trainer.loop.DistributedLoop`, so a saved model evaluated later gives
the numbers of the job's ``metrics.json`` and ``per_class_accuracy.csv``
(:func:`per_class` holds the same numbers as the CSV). :func:`flip_averaged`
is the left-right flip test-time augmentation of ``trainer.evaluate --tta flip``.
:func:`final_splits` names the splits a run's final evaluation covers: a dataset
without test images (a folder of photos split into train and valid only) is
evaluated on ``valid`` alone.
"""

import numpy as np
import tensorflow as tf

from trainer import report

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


def evaluate_split(evaluator, dataset):
    """Evaluates a model over one whole split.

    Args:
        evaluator: A :class:`trainer.loop.DistributedLoop` (its ``eval_model`` is evaluated).
        dataset: The split's finite distributed dataset of ``(images, labels)``.

    Returns:
        ``(metrics, confusion)``: ``loss``, ``accuracy`` (top-1), ``top5_accuracy`` and
        ``count`` (the ``metrics.json`` entry of the split), and the int64 ``[C, C]``
        confusion matrix, rows the true labels.
    """
    logs, confusion = evaluator.evaluate(dataset, confusion=True)
    return {key: logs[key] for key in METRIC_KEYS}, confusion


def per_class(confusion, wnids, class_names):
    """Returns one dict per class: ``index``, ``wnid``, ``name``, ``count``, ``correct``, ``accuracy``.

    The numbers of ``per_class_accuracy.csv`` (:func:`trainer.report.per_class_accuracy`);
    the accuracy of a class without images is NaN.
    """
    confusion = np.asarray(confusion)
    accuracy = report.per_class_accuracy(confusion)
    return [
        {
            "index": index,
            "wnid": wnid,
            "name": name,
            "count": int(confusion[index].sum()),
            "correct": int(confusion[index, index]),
            "accuracy": float(accuracy[index]),
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

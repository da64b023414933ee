"""Per-replica sums of a training or evaluation step, and the logs made of them.

A step returns sums (loss, correct top-1/top-5, example count, optionally a
confusion matrix) that are reduced with ``SUM`` across replicas; dividing on
the host gives exact means even with uneven final batches and empty batches
on workers that ran out of data.
"""

import tensorflow as tf

from contracts.model import MAIN_OUTPUT


def _top5_k(num_classes):
    return min(5, num_classes)


def batch_statistics(labels, probabilities, per_example_loss, num_classes, confusion=False):
    """Returns per-replica sums of one batch: loss, correct top-1/top-5, count.

    Args:
        labels: int32 ``[B]``.
        probabilities: ``[B, num_classes]`` softmax outputs.
        per_example_loss: float32 ``[B]``.
        num_classes: Number of classes.
        confusion: Also return the ``[C, C]`` confusion matrix (rows: true labels).
    """
    labels = tf.cast(labels, tf.int32)
    probabilities = tf.cast(probabilities, tf.float32)
    _, top = tf.math.top_k(probabilities, k=_top5_k(num_classes))
    hits = tf.cast(tf.equal(top, labels[:, None]), tf.float32)
    stats = {
        "loss_sum": tf.reduce_sum(per_example_loss),
        "top1": tf.reduce_sum(hits[:, 0]),
        "top5": tf.reduce_sum(hits),
        "count": tf.cast(tf.size(labels), tf.float32),
    }
    if confusion:
        stats["confusion"] = tf.math.confusion_matrix(
            labels, top[:, 0], num_classes=num_classes, dtype=tf.float32
        )
    return stats


def summarize(totals, prefix=""):
    """Turns reduced sums into ``loss``, ``accuracy`` and ``top5_accuracy`` logs."""
    count = max(float(totals["count"]), 1.0)
    logs = {
        f"{prefix}loss": float(totals["loss_sum"]) / count,
        f"{prefix}accuracy": float(totals["top1"]) / count,
        f"{prefix}top5_accuracy": float(totals["top5"]) / count,
    }
    if "objective" in totals:
        logs[f"{prefix}loss"] = float(totals["objective"]) / max(float(totals["steps"]), 1.0)
    return logs


def split_outputs(outputs):
    """Returns ``(main, {aux_name: aux})`` of a model's outputs (tensor or dict)."""
    if isinstance(outputs, dict):
        aux = {name: value for name, value in outputs.items() if name != MAIN_OUTPUT}
        return outputs[MAIN_OUTPUT], aux
    if isinstance(outputs, list | tuple):
        return outputs[0], {f"aux{i}": value for i, value in enumerate(outputs[1:], start=1)}
    return outputs, {}

"""Final reports: pure writers of metrics.json, the per-class report, confusion matrix, reliability
diagram, tuning metric."""

import csv
import io
import math
import os

import numpy as np
import tensorflow as tf

from contracts import csv_cells, jobdir, storage
from trainer import calibration, class_metrics, distribute

# The per-class CSV's columns: the first six are the older file's, so its readers keep working.
PER_CLASS_COLUMNS = ("index", "wnid", "name", "count", "correct", "accuracy")
PER_CLASS_COLUMNS += ("precision", "recall", "f1", "support")


def write_metrics(path, metrics):
    """Writes ``metrics`` as indented strict JSON (a non-finite number is written as ``null``).

    Every final report is written whole or not at all (:func:`contracts.storage.write_atomically`).
    """
    storage.write_bytes(path, jobdir.to_json(metrics, indent=2, sort_keys=True).encode("utf-8"))


def per_class_accuracy(confusion):
    """Returns the accuracy of each true class (rows of ``confusion``); NaN for absent classes."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


def write_per_class_csv(path, confusion, wnids, class_names):
    """Writes :data:`PER_CLASS_COLUMNS` per class (``per_class_accuracy.csv``).

    ``accuracy`` is empty for a class without images; ``precision``, ``recall`` and
    ``f1`` follow :mod:`trainer.class_metrics` (a 0/0 is 0), so ``recall`` is
    ``accuracy`` wherever the class has images; ``support`` repeats ``count``
    under the name scikit-learn's reports use. A wnid or name a spreadsheet would
    run as a formula starts with ``'`` (:func:`contracts.csv_cells.row`).
    """
    confusion = np.asarray(confusion)
    accuracy = per_class_accuracy(confusion)
    numbers = class_metrics.per_class(confusion)
    with io.StringIO(newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PER_CLASS_COLUMNS)
        for i, (wnid, name) in enumerate(zip(wnids, class_names, strict=True)):
            value = "" if np.isnan(accuracy[i]) else f"{accuracy[i]:.6f}"
            scores = [f"{numbers[key][i]:.6f}" for key in ("precision", "recall", "f1")]
            count = int(numbers["support"][i])
            row = [i, wnid, name, count, int(numbers["correct"][i]), value, *scores, count]
            writer.writerow(csv_cells.row(row))  # A name like "=cmd" must not run as a formula.
        storage.write_bytes(path, f.getvalue().encode("utf-8"))


def confusion_image(confusion, cell=8):
    """Renders a row-normalized confusion matrix as a white-to-blue uint8 image ``[1, H, W, 3]``."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion.sum(axis=1, keepdims=True)
    normalized = confusion / np.maximum(rows, 1)
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    colours = white + normalized[..., None] * (blue - white)
    cell = max(1, min(cell, 1024 // max(1, confusion.shape[0])))
    image = np.kron(colours, np.ones((cell, cell, 1)))
    return np.clip(image, 0, 255).astype(np.uint8)[None]


# Scalars of the final evaluation, written where the HParams dashboard reads its metrics.
FINAL_METRICS = tuple(
    f"final/{split}_{name}"
    for split in ("valid", "test")
    for name in ("accuracy", "top5_accuracy", "loss", "macro_f1")
)


def write_final_scalars(log_dir, metrics, step):
    """Writes the final valid/test metrics as scalars beside the HParams summary (``log_dir`` itself).

    A split ``metrics`` lacks (a dataset without test images) has no scalars.
    """
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default(step=step):
        for tag in FINAL_METRICS:
            split, name = tag.removeprefix("final/").split("_", 1)
            if split in metrics:
                tf.summary.scalar(tag, float(metrics[split][name]))
    writer.flush()
    writer.close()


def write_confusion_summary(log_dir, confusion, step, split="test", most_confused=None):
    """Writes a split's confusion matrix to TensorBoard under ``log_dir/evaluation``.

    The image is ``confusion_matrix/<split>``; with ``most_confused`` (the pairs of
    :func:`trainer.class_metrics.most_confused`) a text summary ``most_confused/<split>``
    beside it tables them.
    """
    writer = tf.summary.create_file_writer(os.path.join(log_dir, "evaluation"))
    with writer.as_default(step=step):
        tf.summary.image(f"confusion_matrix/{split}", confusion_image(confusion), max_outputs=1)
        if most_confused is not None:
            tf.summary.text(f"most_confused/{split}", class_metrics.markdown_table(most_confused))
    writer.flush()
    writer.close()


def reliability_image(before, after, height=120, cell=8):
    """Renders a reliability diagram as a uint8 image ``[1, height, W, 3]``.

    Each equal-width confidence bin is a pair of bars, its accuracy before (blue) and after
    (orange) temperature scaling; the black steps mark accuracy = the bin's confidence
    midpoint (a calibrated model's bars end there). An empty bin has no bar.

    Args:
        before, after: ``(confidence, accuracy, counts)`` of :func:`trainer.calibration.reliability_bins`.
    """
    bins = len(before[1])
    image = np.full((height, bins * 2 * cell, 3), 255, np.uint8)
    for index in range(bins):
        for half, (colour, (_, accuracy, counts)) in enumerate(
            zip(((31, 119, 180), (255, 127, 14)), (before, after), strict=True)
        ):
            if counts[index]:
                top = height - round(float(accuracy[index]) * height)
                left = (2 * index + half) * cell
                image[top:, left : left + cell] = colour
        ideal = min(height - 1, height - round((index + 0.5) / bins * height))
        image[ideal, 2 * index * cell : 2 * (index + 1) * cell] = 0
    return image[None]


def write_reliability_summary(log_dir, probabilities, labels, summary, step):
    """Writes the reliability diagram of the calibration's split to TensorBoard under ``log_dir/evaluation``.

    The image is ``reliability/<split>`` (:func:`reliability_image`), before and after
    ``summary["temperature"]`` (metrics.json's ``calibration`` entry).
    """
    calibrated = calibration.apply_temperature(probabilities, summary["temperature"])
    before = calibration.reliability_bins(probabilities, labels)
    after = calibration.reliability_bins(calibrated, labels)
    writer = tf.summary.create_file_writer(os.path.join(log_dir, "evaluation"))
    with writer.as_default(step=step):
        tf.summary.image(f"reliability/{summary['split']}", reliability_image(before, after), max_outputs=1)
    writer.flush()
    writer.close()


class HypertuneReporter:
    """Reports the tuning metric to Vertex AI hyperparameter tuning (needs the ``hypertune`` extra).

    One reporter serves the whole run: a ``hypertune.HyperTune`` rewrites its
    metrics file (``CLOUD_ML_HP_METRIC_FILE``) with the entries it reported
    itself, so a second instance would erase the lines of the first.

    Args:
        metric_tag: The study's metric id (``CLOUD_ML_HP_METRIC_TAG``).
    """

    def __init__(self, metric_tag):
        import hypertune

        self.metric_tag = metric_tag
        self._client = hypertune.HyperTune()

    def report(self, value, step):
        """Appends ``value`` at ``global_step`` ``step`` to the metrics file."""
        self._client.report_hyperparameter_tuning_metric(
            hyperparameter_metric_tag=self.metric_tag, metric_value=float(value), global_step=int(step)
        )


# A best model whose validation accuracy is this likely under chance is not better than chance.
CHANCE_SIGNIFICANCE = 0.05


def binomial_tail(successes, trials, probability):
    """Returns ``P(X >= successes)`` for ``X ~ Binomial(trials, probability)`` (exact, in log space)."""
    if successes <= 0:
        return 1.0
    if probability <= 0.0:
        return 0.0
    if probability >= 1.0:
        return 1.0
    log_p, log_q = math.log(probability), math.log1p(-probability)
    terms = [
        math.lgamma(trials + 1)
        - math.lgamma(k + 1)
        - math.lgamma(trials - k + 1)
        + k * log_p
        + (trials - k) * log_q
        for k in range(successes, trials + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def chance_level(confusion):
    """Compares a validation confusion matrix with chance.

    Chance is the accuracy of always answering the most frequent class, and
    the model beats it when that accuracy (or better) is unlikely under chance:
    a one-sided exact binomial test at :data:`CHANCE_SIGNIFICANCE`.

    Args:
        confusion: ``[C, C]`` counts, rows the true classes.

    Returns:
        The ``chance`` entry of ``metrics.json``: ``accuracy`` (chance),
        ``valid_accuracy``, ``valid_count``, ``p_value`` and ``better_than_chance``.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    count = int(confusion.sum())
    correct = int(np.trace(confusion))
    chance = float(confusion.sum(axis=1).max()) / max(count, 1)
    p_value = binomial_tail(correct, count, chance)
    return {
        "accuracy": chance,
        "valid_accuracy": correct / max(count, 1),
        "valid_count": count,
        "p_value": p_value,
        "better_than_chance": bool(p_value < CHANCE_SIGNIFICANCE),
    }


def chance_warning(chance):
    """Returns the one-line warning of a run whose best model is not better than chance."""
    return (
        f"the best model's validation accuracy {chance['valid_accuracy']:.3f} over {chance['valid_count']} "
        f"images is not better than chance ({chance['accuracy']:.3f}, always the most frequent class; "
        f"binomial p={chance['p_value']:.2g}): train longer (--epochs, --monitor-start-epoch), keep "
        "--precise-bn on, lower --bn-momentum, or add images (docs/trainer.md, small datasets)"
    )


def final_metrics(
    *,
    config,
    info,
    strategy,
    result,
    best_epoch,
    stopped_early,
    steps_per_epoch,
    evaluations,
    chance,
    explanations,
):
    """Returns the ``metrics.json`` dict of a finished run (plain values in, plain dict out).

    ``evaluations`` maps each evaluated split to its numbers
    (:func:`trainer.evaluation.evaluate_split`'s, the macro averages and most
    confused pairs included); a dataset without test images has no ``test``
    entry, and ``per_class_split`` names the split of ``per_class_accuracy.csv``
    (``test``, else ``valid``). ``explanations``
    is the Grad-CAM probes' outcome, the shortcut alarm included
    (:meth:`explain.callback.ShortcutWatch.summary`).
    """
    return {
        "arch": config.arch,
        "num_classes": info.num_classes,
        "replicas": strategy.num_replicas_in_sync,
        "strategy": distribute.strategy_name(strategy),
        "epochs_completed": result.epochs_completed,
        "best_epoch": best_epoch,
        "stopped_early": bool(stopped_early),
        "steps_per_epoch": steps_per_epoch,
        "global_batch_size": config.batch_size,
        **{split: evaluations[split] for split in ("valid", "test") if split in evaluations},
        "per_class_split": "test" if "test" in evaluations else "valid",
        "chance": chance,
        "explanations": explanations,
    }


def summary_lines(metrics, splits, class_names):
    """Returns the run's last result lines: the most confused pairs of the per-class split, then ``done``.

    Args:
        metrics: The run's ``metrics.json`` dict (:func:`final_metrics`).
        splits: The evaluated splits, the per-class report's last (``valid, test`` or ``valid``).
        class_names: The class names.
    """
    done = ", ".join(
        f"{split} accuracy {metrics[split]['accuracy']:.4f} macro f1 {metrics[split]['macro_f1']:.4f}"
        for split in splits
    )
    lines = [class_metrics.describe_confused(splits[-1], metrics[splits[-1]], class_names)]
    if "calibration" in metrics:
        lines.append(calibration_line(metrics["calibration"]))
    return [*lines, f"done: {done}"]


def calibration_line(summary):
    """Returns the log line of metrics.json's ``calibration`` entry."""
    return (
        f"calibration: temperature {summary['temperature']:.3f}; on {summary['split']} ECE "
        f"{summary['ece_before']:.4f} -> {summary['ece_after']:.4f}, NLL {summary['nll_before']:.4f} -> "
        f"{summary['nll_after']:.4f}"
    )


def dump_weights(model, directory):
    """Test support: writes this worker's trainable weights and BN moving statistics.

    One ``worker-<type>-<index>.npz`` per worker, holding ``trainable/<path>``
    and ``moving/<path>`` arrays. Used to check that replicas agree on the
    trainable weights while batch-norm statistics stay per worker.
    """
    task_type, task_index = distribute.task_identity()
    os.makedirs(directory, exist_ok=True)
    arrays = {}
    for variable in model.trainable_variables:
        arrays[f"trainable/{variable.path}"] = np.asarray(variable.numpy())
    for variable in model.non_trainable_variables:
        if "moving_" in variable.path:
            arrays[f"moving/{variable.path}"] = np.asarray(variable.numpy())
    path = os.path.join(directory, f"worker-{task_type or 'local'}-{task_index or 0}.npz")
    storage.write_atomically(path, lambda temporary: np.savez(temporary, **arrays))

"""Final reports: pure writers of metrics.json, per-class accuracy, confusion matrix, tuning metric."""

import csv
import os

import numpy as np
import tensorflow as tf

from contracts import jobdir
from trainer import distribute


def write_metrics(path, metrics):
    """Writes ``metrics`` as indented strict JSON (a non-finite number is written as ``null``)."""
    with open(path, "w") as f:
        f.write(jobdir.to_json(metrics, indent=2, sort_keys=True))


def per_class_accuracy(confusion):
    """Returns the accuracy of each true class (rows of ``confusion``); NaN for absent classes."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(confusion) / np.maximum(totals, 1), np.nan)


def write_per_class_csv(path, confusion, wnids, class_names):
    """Writes ``index, wnid, name, count, correct, accuracy`` per class."""
    confusion = np.asarray(confusion)
    accuracy = per_class_accuracy(confusion)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "wnid", "name", "count", "correct", "accuracy"])
        for i, (wnid, name) in enumerate(zip(wnids, class_names, strict=True)):
            value = "" if np.isnan(accuracy[i]) else f"{accuracy[i]:.6f}"
            writer.writerow([i, wnid, name, int(confusion[i].sum()), int(confusion[i, i]), value])


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


def write_confusion_summary(log_dir, confusion, step, name="confusion_matrix/test"):
    """Writes the confusion matrix image to TensorBoard under ``log_dir/evaluation``."""
    writer = tf.summary.create_file_writer(os.path.join(log_dir, "evaluation"))
    with writer.as_default(step=step):
        tf.summary.image(name, confusion_image(confusion), max_outputs=1)
    writer.flush()
    writer.close()


def report_hypertune(metric_tag, value, step):
    """Reports ``value`` to Vertex AI hyperparameter tuning (needs the ``hypertune`` extra)."""
    import hypertune

    hypertune.HyperTune().report_hyperparameter_tuning_metric(
        hyperparameter_metric_tag=metric_tag, metric_value=float(value), global_step=int(step)
    )


def final_metrics(*, config, info, strategy, result, best_epoch, stopped_early, steps_per_epoch, evaluations):
    """Returns the ``metrics.json`` dict of a finished run (plain values in, plain dict out)."""
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
        "valid": evaluations["valid"],
        "test": evaluations["test"],
    }


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
    np.savez(os.path.join(directory, f"worker-{task_type or 'local'}-{task_index or 0}.npz"), **arrays)

"""Calibration by temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").

One temperature ``T > 0`` is fitted on the valid split by minimising the negative
log-likelihood of ``softmax(log(p) / T)``. The models end in a softmax, so they give
probabilities, not logits: ``log(p)`` differs from the logits by a per-image constant,
which the softmax cancels, so dividing the log-probabilities by ``T`` is scaling the
logits by ``1 / T``. ``T > 1`` softens over-confident predictions; the top-1 class
never changes, so accuracy is untouched.

The quality measures are the negative log-likelihood and the standard top-1
expected calibration error (ECE): images binned by their top probability into
equal-width confidence bins, ECE the count-weighted mean gap between each bin's
accuracy and mean confidence.

Everything here is numpy on plain arrays, except :func:`apply_temperature_tf`,
the TensorFlow twin the export's signatures run.
"""

import numpy as np

DEFAULT_BINS = 15
# --calibration: "temperature" applies the job's fitted temperature, "none" the raw softmax.
MODES = ("temperature", "none")
# Search range of log T: T from 1/20 to 20 covers any sensible softmax (and then some).
_LOG_T_RANGE = (np.log(0.05), np.log(20.0))
_TOLERANCE = 1e-6
# Floor of a probability before its log: a float32 softmax can round a class to exactly 0.
_FLOOR = 1e-12


def _log_probabilities(probabilities):
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _FLOOR, None))


def _softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exponentials = np.exp(shifted)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def apply_temperature(probabilities, temperature):
    """Returns ``softmax(log(probabilities) / temperature)`` (float64), the calibrated probabilities.

    Args:
        probabilities: ``[N, C]`` class probabilities (each row sums to 1).
        temperature: ``T > 0``; ``1`` returns the probabilities themselves.
    """
    _check_temperature(temperature)
    return _softmax(_log_probabilities(probabilities) / float(temperature))


def apply_temperature_tf(probabilities, temperature):
    """The TensorFlow twin of :func:`apply_temperature` (float32, for the export's signatures)."""
    # Imported here: the numpy functions serve callers that never load TensorFlow.
    import tensorflow as tf

    _check_temperature(temperature)
    log_probabilities = tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), _FLOOR))
    return tf.nn.softmax(log_probabilities / float(temperature), axis=-1)


def negative_log_likelihood(probabilities, labels):
    """Returns the mean ``-log p[label]`` over the images (probabilities floored at 1e-12)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    picked = probabilities[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.clip(picked, _FLOOR, None))))


def reliability_bins(probabilities, labels, bins=DEFAULT_BINS):
    """Returns the reliability diagram's ``(confidence, accuracy, counts)`` per equal-width bin.

    An image falls in bin ``b`` when its top probability lies in ``(b / bins, (b + 1) / bins]``
    (a confidence of exactly 0 in the first bin). An empty bin's confidence and accuracy are 0.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probabilities.max(axis=-1)
    correct = (probabilities.argmax(axis=-1) == labels).astype(np.float64)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    safe = np.maximum(counts, 1)
    mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / safe
    accuracy = np.bincount(index, weights=correct, minlength=bins) / safe
    return mean_confidence, accuracy, counts


def expected_calibration_error(probabilities, labels, bins=DEFAULT_BINS):
    """Returns the top-1 ECE: ``sum_b |accuracy_b - confidence_b| * n_b / N`` over equal-width bins."""
    confidence, accuracy, counts = reliability_bins(probabilities, labels, bins)
    return float(np.sum(np.abs(accuracy - confidence) * counts) / max(counts.sum(), 1))


def fit_temperature(probabilities, labels):
    """Returns the temperature ``T > 0`` minimising the NLL of ``softmax(log(p) / T)``.

    A golden-section search on ``log T`` over ``[log 0.05, log 20]`` to ``1e-6``: the NLL
    of ``softmax(z / T)`` is convex in ``1 / T``, hence unimodal in ``log T``, so the
    bracket holds the one minimum (or the search ends at the bracket's edge). No
    gradients: one dimension, and a few dozen NLL evaluations of ``[N, C]`` arrays.

    Args:
        probabilities: ``[N, C]`` probabilities of the valid split.
        labels: ``[N]`` int labels.
    """
    log_probabilities = _log_probabilities(probabilities)
    labels = np.asarray(labels, dtype=np.int64)

    def loss(log_t):
        return negative_log_likelihood(_softmax(log_probabilities / np.exp(log_t)), labels)

    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    low, high = _LOG_T_RANGE
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    while high - low > _TOLERANCE:
        if loss_left <= loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    return float(np.exp((low + high) / 2.0))


def summary(valid, measured, split):
    """Fits T on valid and measures it on another split: the ``calibration`` entry of metrics.json.

    Args:
        valid: ``(probabilities, labels)`` of the valid split (T is fitted on them).
        measured: ``(probabilities, labels)`` of the split the numbers are measured on.
        split: That split's name (``test``, or ``valid`` when the dataset has no test images).

    Returns:
        ``{"temperature", "split", "ece_before", "ece_after", "nll_before", "nll_after"}``.
    """
    return {"split": split, **measure(*measured, fit_temperature(*valid))}


def measure(probabilities, labels, temperature):
    """Returns ``{"temperature", "ece_before", "nll_before"}``, and with a temperature ``ece_after``
    and ``nll_after`` of the probabilities it calibrates (ECE over :data:`DEFAULT_BINS` bins)."""
    result = {
        "temperature": temperature,
        "ece_before": expected_calibration_error(probabilities, labels),
        "nll_before": negative_log_likelihood(probabilities, labels),
    }
    if temperature is not None:
        calibrated = apply_temperature(probabilities, temperature)
        result["ece_after"] = expected_calibration_error(calibrated, labels)
        result["nll_after"] = negative_log_likelihood(calibrated, labels)
    return result


def _check_temperature(temperature):
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")

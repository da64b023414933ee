"""Per-class precision, recall, F1 and support, their macro averages and the most confused pairs.

The one place these numbers come from: pure numpy over a ``[C, C]`` confusion
matrix whose rows are the true classes and columns the predicted ones. The
trainer's ``metrics.json`` and ``per_class_accuracy.csv``, its TensorBoard text
and summary line, and ``python -m trainer.evaluate`` all read them from here.

Conventions are scikit-learn's (``precision_recall_fscore_support`` with
``zero_division=0``), so the numbers match what a user computes from the
predictions:

- a ratio whose denominator is 0 is 0: the precision of a class never
  predicted, the recall of a class without images, the F1 of a class whose
  precision and recall are both 0;
- the macro averages are the unweighted means over the classes that occur in
  the split's labels or predictions (scikit-learn's default ``labels``): a class
  absent from both says nothing about the model and is left out; macro F1 is
  the mean of the per-class F1, not the F1 of the mean precision and recall;
- a split without any image has macro averages of 0.

The most confused pairs are fastai's ``most_confused``: the off-diagonal
counts, largest first, ties in (true, predicted) index order, pairs never
confused left out.
"""

import numpy as np

# Pairs kept in metrics.json and TensorBoard, and how many the run's summary line names.
TOP_CONFUSED = 10
SHOWN_CONFUSED = 3
MACRO_KEYS = ("macro_precision", "macro_recall", "macro_f1")


def _ratio(numerator, denominator):
    """Elementwise ``numerator / denominator``, 0 where the denominator is 0 (``zero_division=0``)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _check(confusion):
    """Returns ``confusion`` as an int64 square matrix; raises ValueError on anything else."""
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise ValueError(f"a confusion matrix must be square [C, C], got shape {confusion.shape}")
    if np.any(confusion < 0):
        raise ValueError("a confusion matrix holds counts; got a negative entry")
    return confusion.astype(np.int64)


def per_class(confusion):
    """Returns the per-class numbers of ``confusion`` as ``[C]`` arrays.

    Args:
        confusion: ``[C, C]`` counts, rows the true classes, columns the predictions.

    Returns:
        A dict of ``support`` (true images of the class, the row sum), ``predicted``
        (the column sum), ``correct`` (the diagonal), and the float64 ``precision``
        (correct / predicted), ``recall`` (correct / support) and ``f1`` (their
        harmonic mean), each 0 where it would be 0/0.
    """
    confusion = _check(confusion)
    correct = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _ratio(correct, predicted)
    recall = _ratio(correct, support)
    f1 = _ratio(2.0 * precision * recall, precision + recall)
    return {
        "support": support,
        "predicted": predicted,
        "correct": correct,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def macro_averages(confusion):
    """Returns ``{"macro_precision", "macro_recall", "macro_f1"}`` of ``confusion`` as floats.

    The means over the classes with images or predictions (scikit-learn's macro average).
    """
    numbers = per_class(confusion)
    present = (numbers["support"] > 0) | (numbers["predicted"] > 0)
    if not present.any():
        return dict.fromkeys(MACRO_KEYS, 0.0)
    return {f"macro_{name}": float(numbers[name][present].mean()) for name in ("precision", "recall", "f1")}


def most_confused(confusion, class_names, top=TOP_CONFUSED):
    """Returns the ``top`` largest off-diagonal counts of ``confusion``, largest first.

    Ties are broken by the true class index, then the predicted one, so the list is deterministic.

    Args:
        confusion: ``[C, C]`` counts, rows the true classes.
        class_names: The ``C`` class names.
        top: How many pairs at most.

    Returns:
        A list of ``{"true", "predicted", "true_name", "predicted_name", "count"}``; pairs
        never confused are left out (an empty list for a perfect model).
    """
    confusion = _check(confusion)
    if len(class_names) != confusion.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {confusion.shape[0]}-class confusion matrix")
    off_diagonal = confusion.copy()
    np.fill_diagonal(off_diagonal, 0)
    true, predicted = np.nonzero(off_diagonal)  # Row-major: (true, predicted) index order.
    # A stable sort on the negated count keeps that order among equal counts.
    order = np.argsort(-off_diagonal[true, predicted], kind="stable")[:top]
    return [
        {
            "true": int(true[k]),
            "predicted": int(predicted[k]),
            "true_name": class_names[true[k]],
            "predicted_name": class_names[predicted[k]],
            "count": int(off_diagonal[true[k], predicted[k]]),
        }
        for k in order
    ]


def never_predicted(confusion):
    """Returns the indices of the classes with images that the model never predicted (precision 0/0)."""
    numbers = per_class(confusion)
    return [int(i) for i in np.flatnonzero((numbers["support"] > 0) & (numbers["predicted"] == 0))]


def split_summary(confusion, class_names):
    """Returns what a split's ``metrics.json`` entry gains from its confusion matrix.

    ``macro_precision``, ``macro_recall``, ``macro_f1``, ``most_confused``
    (:func:`most_confused`) and ``never_predicted`` (:func:`never_predicted`).
    """
    return {
        **macro_averages(confusion),
        "most_confused": most_confused(confusion, class_names),
        "never_predicted": never_predicted(confusion),
    }


def describe_confused(split, summary, class_names, shown=SHOWN_CONFUSED):
    """Returns the run's one summary line of a split's most confused pairs.

    Args:
        split: The split's name (``test``, ``valid``).
        summary: The split's entry of ``metrics.json`` (:func:`split_summary`'s keys).
        class_names: The class names.
        shown: How many pairs the line names.
    """
    pairs = summary["most_confused"][:shown]
    if pairs:
        named = ", ".join(f"{p['true_name']!r} as {p['predicted_name']!r} {p['count']}" for p in pairs)
        text = f"most confused on {split} (true as predicted, images): {named}"
    else:
        text = f"no class confused with another on {split}"
    if summary["never_predicted"]:
        names = ", ".join(repr(class_names[i]) for i in summary["never_predicted"])
        text += f"; never predicted (precision 0): {names}"
    return text


def _cell(text):
    """Escapes the one character that would end a Markdown table cell."""
    return str(text).replace("|", "\\|")


def markdown_table(pairs):
    """Returns ``pairs`` (:func:`most_confused`) as a Markdown table, TensorBoard's text format."""
    lines = ["| true | predicted | images |", "|---|---|---:|"]
    lines += [f"| {_cell(p['true_name'])} | {_cell(p['predicted_name'])} | {p['count']} |" for p in pairs]
    if not pairs:
        lines.append("| (none) | (none) | 0 |")
    return "\n".join(lines)

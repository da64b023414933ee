"""Per-class precision, recall, F1, their macro averages and the most confused pairs, against numbers
computed by hand on a small unequal confusion matrix (and scikit-learn's, when it is installed)."""

import numpy as np
import pytest

from trainer import class_metrics

NAMES = ["cat", "dog", "fox", "owl", "yak"]
# Rows: true classes, columns: predictions. Unequal supports (8, 4, 3, 0, 0); "fox" has images but is
# never predicted; "owl" has neither images nor predictions; "yak" has no image but is predicted once.
CONFUSION = np.array(
    [
        [5, 2, 0, 0, 1],
        [1, 3, 0, 0, 0],
        [2, 1, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
    ]
)
# By hand: precision = diagonal / column sums (8, 6, 0, 0, 1); recall = diagonal / row sums (8, 4, 3, 0, 0);
# 0/0 is 0. F1 of dog: 2 * 0.5 * 0.75 / 1.25 = 0.6.
PRECISION = [5 / 8, 3 / 6, 0.0, 0.0, 0.0]
RECALL = [5 / 8, 3 / 4, 0.0, 0.0, 0.0]
F1 = [0.625, 0.6, 0.0, 0.0, 0.0]
# The macro means over the four classes with images or predictions (owl left out).
MACRO = {
    "macro_precision": (0.625 + 0.5) / 4,
    "macro_recall": (0.625 + 0.75) / 4,
    "macro_f1": (0.625 + 0.6) / 4,
}


def test_per_class_by_hand():
    numbers = class_metrics.per_class(CONFUSION)
    assert numbers["support"].tolist() == [8, 4, 3, 0, 0]
    assert numbers["predicted"].tolist() == [8, 6, 0, 0, 1]
    assert numbers["correct"].tolist() == [5, 3, 0, 0, 0]
    np.testing.assert_allclose(numbers["precision"], PRECISION)
    np.testing.assert_allclose(numbers["recall"], RECALL)
    np.testing.assert_allclose(numbers["f1"], F1)


def test_macro_averages_by_hand():
    macro = class_metrics.macro_averages(CONFUSION)
    assert list(macro) == list(class_metrics.MACRO_KEYS)
    for key, value in MACRO.items():
        assert macro[key] == pytest.approx(value), key
    # Every value a plain float, so metrics.json writes numbers.
    assert all(type(value) is float for value in macro.values())


def test_a_class_absent_from_labels_and_predictions_leaves_the_macro_unchanged():
    """Adding an empty class (no row, no column) changes no macro average."""
    grown = np.zeros((6, 6), np.int64)
    grown[:5, :5] = CONFUSION
    assert class_metrics.macro_averages(grown) == class_metrics.macro_averages(CONFUSION)


def test_perfect_and_empty_matrices():
    perfect = np.diag([3, 1, 2])
    assert class_metrics.macro_averages(perfect) == dict.fromkeys(class_metrics.MACRO_KEYS, 1.0)
    assert class_metrics.most_confused(perfect, ["a", "b", "c"]) == []
    assert class_metrics.never_predicted(perfect) == []
    empty = np.zeros((3, 3), np.int64)
    assert class_metrics.macro_averages(empty) == dict.fromkeys(class_metrics.MACRO_KEYS, 0.0)


def test_most_confused_largest_first_ties_in_index_order():
    pairs = class_metrics.most_confused(CONFUSION, NAMES)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        (0, 1, 2),  # cat as dog, 2
        (2, 0, 2),  # fox as cat, 2: a tie, after (0, 1)
        (0, 4, 1),
        (1, 0, 1),
        (2, 1, 1),
    ]
    assert (pairs[1]["true_name"], pairs[1]["predicted_name"]) == ("fox", "cat")
    assert [p["count"] for p in class_metrics.most_confused(CONFUSION, NAMES, top=2)] == [2, 2]


def test_most_confused_keeps_the_ten_largest():
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 50, size=(12, 12))
    pairs = class_metrics.most_confused(confusion, [f"c{i}" for i in range(12)])
    assert len(pairs) == class_metrics.TOP_CONFUSED == 10
    off_diagonal = sorted(
        ((-int(confusion[t, p]), t, p) for t in range(12) for p in range(12) if t != p and confusion[t, p]),
    )[:10]
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        (t, p, -c) for c, t, p in off_diagonal
    ]


def test_never_predicted_and_the_summary_line():
    assert class_metrics.never_predicted(CONFUSION) == [2]  # fox; owl has no image, so no precision to miss
    summary = class_metrics.split_summary(CONFUSION, NAMES)
    assert set(summary) == {*class_metrics.MACRO_KEYS, "most_confused", "never_predicted"}
    assert class_metrics.describe_confused("test", summary, NAMES) == (
        "most confused on test (true as predicted, images): 'cat' as 'dog' 2, 'fox' as 'cat' 2, "
        "'cat' as 'yak' 1; never predicted (precision 0): 'fox'"
    )
    perfect = class_metrics.split_summary(np.diag([2, 2]), ["a", "b"])
    assert (
        class_metrics.describe_confused("valid", perfect, ["a", "b"])
        == "no class confused with another on valid"
    )


def test_markdown_table():
    pairs = class_metrics.most_confused(CONFUSION, ["c|at", *NAMES[1:]], top=1)
    assert class_metrics.markdown_table(pairs).splitlines() == [
        "| true | predicted | images |",
        "|---|---|---:|",
        "| c\\|at | dog | 2 |",
    ]


@pytest.mark.parametrize(
    ("confusion", "message"),
    [(np.zeros((2, 3)), "square"), (np.array([[1, -1], [0, 1]]), "negative")],
)
def test_bad_matrices_are_refused(confusion, message):
    with pytest.raises(ValueError, match=message):
        class_metrics.per_class(confusion)


def test_wrong_number_of_names_is_refused():
    with pytest.raises(ValueError, match="4 class names for a 5-class"):
        class_metrics.most_confused(CONFUSION, NAMES[:4])


def _labels(confusion):
    """The ``(y_true, y_pred)`` lists whose confusion matrix is ``confusion``."""
    pairs = [(t, p) for (t, p), n in np.ndenumerate(confusion) for _ in range(n)]
    return [t for t, _ in pairs], [p for _, p in pairs]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_scikit_learn(seed):
    """scikit-learn's precision_recall_fscore_support, zero_division=0, if it happens to be installed."""
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    confusion = rng.integers(0, 6, size=(6, 6)) * (rng.random((6, 6)) < 0.6)
    confusion[5] = 0  # A class without images.
    matrices = [CONFUSION, confusion]
    for matrix in matrices:
        y_true, y_pred = _labels(matrix)
        classes = list(range(len(matrix)))
        precision, recall, f1, support = metrics.precision_recall_fscore_support(
            y_true, y_pred, labels=classes, average=None, zero_division=0
        )
        numbers = class_metrics.per_class(matrix)
        np.testing.assert_allclose(numbers["precision"], precision)
        np.testing.assert_allclose(numbers["recall"], recall)
        np.testing.assert_allclose(numbers["f1"], f1)
        assert numbers["support"].tolist() == support.tolist()
        macro = metrics.precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
        ours = class_metrics.macro_averages(matrix)
        np.testing.assert_allclose([ours[key] for key in class_metrics.MACRO_KEYS], macro[:3])

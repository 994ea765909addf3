"""Tests for fmnist_mlp.scoring.metrics against independent loop-based references."""

import re

import numpy as np
import pytest

from fmnist_mlp.data import CLASS_NAMES as NAMES
from fmnist_mlp.scoring.metrics import confusion_matrix, format_confusion_table, per_class_accuracy


def _noisy_labels(n=2000, num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, num_classes, n)
    y_pred = np.where(rng.random(n) < 0.7, y_true, rng.integers(0, num_classes, n))
    return y_true, y_pred


def test_confusion_matrix_matches_a_python_loop():
    y_true, y_pred = _noisy_labels()
    reference = np.zeros((10, 10), dtype=np.int64)
    for t, p in zip(y_true, y_pred):
        reference[t, p] += 1
    cm = confusion_matrix(y_true, y_pred)
    assert cm.dtype == np.int64
    assert cm.shape == (10, 10)
    np.testing.assert_array_equal(cm, reference)


def test_confusion_matrix_rows_are_true_and_columns_predicted():
    cm = confusion_matrix(np.array([3, 3, 3]), np.array([5, 5, 3]), num_classes=6)
    assert cm[3, 5] == 2 and cm[3, 3] == 1 and cm[5, 3] == 0
    assert cm.sum() == 3


def test_confusion_matrix_keeps_unseen_classes_and_accepts_uint8():
    cm = confusion_matrix(np.array([0, 1], dtype=np.uint8), np.array([1, 1], dtype=np.uint8))
    assert cm.shape == (10, 10)
    assert cm[0, 1] == 1 and cm[1, 1] == 1 and cm.sum() == 2


@pytest.mark.parametrize(
    "y_true, y_pred, message",
    [
        ([0, 1], [0], "y_true has 2 labels but y_pred has 1"),
        ([0, 10], [0, 1], "outside [0, 10)"),
        ([0, 1], [-1, 1], "y_pred has labels outside"),
        ([0.0, 1.0], [0, 1], "integer labels"),
    ],
)
def test_confusion_matrix_rejects_bad_labels_with_a_clear_message(y_true, y_pred, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        confusion_matrix(np.array(y_true), np.array(y_pred))


def test_per_class_accuracy_is_recall_and_nan_for_empty_classes():
    y_true, y_pred = _noisy_labels(num_classes=10)
    keep = y_true != 4  # class 4 has no samples at all
    cm = confusion_matrix(y_true[keep], y_pred[keep])
    accuracy = per_class_accuracy(cm)
    assert accuracy.shape == (10,) and accuracy.dtype == np.float64
    assert np.isnan(accuracy[4])
    for c in range(10):
        if c == 4:
            continue
        in_class = y_true[keep] == c
        assert accuracy[c] == pytest.approx(np.mean(y_pred[keep][in_class] == c))


def test_per_class_accuracy_of_an_empty_matrix_warns_nothing():
    with np.errstate(all="raise"):
        accuracy = per_class_accuracy(np.zeros((3, 3), dtype=np.int64))
    assert np.isnan(accuracy).all()


def test_per_class_accuracy_rejects_a_non_square_matrix():
    with pytest.raises(ValueError, match="square"):
        per_class_accuracy(np.zeros((3, 4)))


def test_format_confusion_table_is_aligned_and_complete():
    y_true, y_pred = _noisy_labels()
    keep = y_true != 7
    cm = confusion_matrix(y_true[keep], y_pred[keep])
    table = format_confusion_table(cm, NAMES)
    lines = table.splitlines()
    body = lines[2:12]
    assert len(body) == 10
    # Every row of the matrix lines up to the same width as the header.
    assert len({len(line) for line in [lines[0], *body]}) == 1
    for i, (name, line) in enumerate(zip(NAMES, body)):
        assert line.startswith(f"{i} {name}")
        numbers = line[len(f"{i} {name}"):].split()
        assert [int(v) for v in numbers[:10]] == cm[i].tolist()
        assert int(numbers[10]) == cm[i].sum()
    assert body[7].split()[-1] == "-"  # the empty class shows no accuracy
    accuracy = 100 * np.trace(cm) / cm.sum()
    assert f"{accuracy:.2f} %" in lines[-1]


def test_format_confusion_table_rejects_wrong_number_of_names():
    with pytest.raises(ValueError, match="9 class names for a 10-class matrix"):
        format_confusion_table(np.zeros((10, 10), dtype=np.int64), NAMES[:9])


def test_most_confident_mistakes_orders_wrong_answers_by_confidence():
    from fmnist_mlp.scoring.metrics import most_confident_mistakes

    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(10), size=500)
    y_true = rng.integers(0, 10, 500)
    chosen = most_confident_mistakes(y_true, probs, k=20)
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    # Independent reference: sort every wrong answer by its top probability, highest first.
    reference = sorted(wrong, key=lambda i: -probs[i].max())[:20]
    assert chosen.tolist() == [int(i) for i in reference]
    assert chosen.dtype == np.int64


def test_most_confident_mistakes_with_few_or_no_errors():
    from fmnist_mlp.scoring.metrics import most_confident_mistakes

    probs = np.eye(4)[[0, 1, 2, 3]] * 0.7 + 0.075
    assert most_confident_mistakes(np.array([0, 1, 2, 3]), probs, k=5).size == 0
    assert most_confident_mistakes(np.array([0, 1, 3, 3]), probs, k=5).tolist() == [2]
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        most_confident_mistakes(np.array([0, 1]), probs)

"""Precision, recall, F1 and expected calibration error against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist_mlp.scoring.metrics import classification_report, expected_calibration_error, precision_recall_f1


def test_precision_recall_f1_by_hand():
    # true 0 0 0 1 1 2, predicted 0 0 1 1 2 2
    cm = np.array([[2, 1, 0],
                   [0, 1, 1],
                   [0, 0, 1]])
    precision, recall, f1 = precision_recall_f1(cm)
    np.testing.assert_allclose(precision, [2 / 2, 1 / 2, 1 / 2])
    np.testing.assert_allclose(recall, [2 / 3, 1 / 2, 1 / 1])
    np.testing.assert_allclose(f1, [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5])


def test_undefined_ratios_are_zero():
    cm = np.array([[3, 0, 0], [2, 0, 0], [0, 0, 0]])        # class 1 never predicted, 2 absent
    precision, recall, f1 = precision_recall_f1(cm)
    np.testing.assert_allclose(precision, [0.6, 0.0, 0.0])
    np.testing.assert_allclose(recall, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(f1, [0.75, 0.0, 0.0])


def test_ece_by_hand():
    # Confidences 0.9, 0.9 (one right, one wrong), 0.6 (right), 0.3 (wrong: three classes).
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.6, 0.2], [0.3, 0.3, 0.4]])
    y = np.array([0, 1, 1, 0])
    ece, bins = expected_calibration_error(probs, y, num_bins=10)
    # bin (0.8, 0.9]: acc 0.5, conf 0.9; bin (0.5, 0.6]: acc 1, conf 0.6; bin (0.3, 0.4]: acc 0, conf 0.4
    expected = (2 / 4) * abs(0.5 - 0.9) + (1 / 4) * abs(1 - 0.6) + (1 / 4) * abs(0 - 0.4)
    assert ece == pytest.approx(expected)
    assert bins["count"].tolist() == [0, 0, 0, 1, 0, 1, 0, 0, 2, 0]
    assert bins["accuracy"][8] == 0.5 and np.isnan(bins["accuracy"][0])


def test_bin_edges_are_right_closed():
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    _, bins = expected_calibration_error(probs, np.array([0, 0]), num_bins=2)
    assert bins["count"].tolist() == [1, 1]                 # 0.5 in (0, 0.5], 1.0 in (0.5, 1]


def test_a_perfectly_calibrated_model_has_zero_ece():
    probs = np.tile([[0.75, 0.25]], (4, 1))
    ece, _ = expected_calibration_error(probs, np.array([0, 0, 0, 1]))
    assert ece == pytest.approx(0.0)


def test_report_leaves_ece_out_for_non_probabilities():
    outputs = np.array([[2.0, -1.0], [0.1, 0.3]])
    report = classification_report(np.array([0, 1]), outputs, output="linear")
    assert report["ece"] is None and report["macro_f1"] == 1.0

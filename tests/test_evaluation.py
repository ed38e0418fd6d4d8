"""Evaluation metrics checked against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from classifier.evaluation import expected_calibration_error, ndcg, precision_at_k, score_kind

# Three documents, three labels.
Y_TRUE = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=bool)
Y_PRED = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=bool)
PROBA = np.array([[0.9, 0.6, 0.1], [0.8, 0.4, 0.3], [0.2, 0.1, 0.7]])


def test_micro_and_macro_by_hand() -> None:
    rep = score_kind(["a", "b", "c"], Y_TRUE, Y_PRED, PROBA)
    f = rep.figures
    # tp = 2 (a,a), fp = 2 (b on doc0, c on doc2), fn = 1 (b on doc1)
    assert (f["true_positives"], f["false_positives"], f["false_negatives"]) == (2, 2, 1)
    assert f["micro_precision"] == pytest.approx(2 / 4)
    assert f["micro_recall"] == pytest.approx(2 / 3)
    assert f["micro_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    # per label: a P=1 R=1 F=1; b P=0 R=0 F=0; c P=0 R=0 (no support but predicted) F=0
    assert f["macro_f1"] == pytest.approx(1 / 3)
    assert [r["support"] for r in rep.per_label] == [2, 1, 0]


def test_sample_average_counts_empty_agreement_as_perfect() -> None:
    y_true = np.array([[0, 0], [1, 0]], dtype=bool)
    y_pred = np.array([[0, 0], [1, 1]], dtype=bool)
    rep = score_kind(["a", "b"], y_true, y_pred, np.array([[0.1, 0.1], [0.9, 0.8]]))
    # doc0: nothing true, nothing predicted -> 1; doc1: P=1/2 R=1 F=2/3
    assert rep.figures["samples_f1"] == pytest.approx((1 + 2 / 3) / 2)


def test_precision_at_k_by_hand() -> None:
    # doc0 top1 = a (true) -> 1; doc1 top1 = a (true) -> 1; doc2 has no true label: skipped
    assert precision_at_k(Y_TRUE.astype(int), PROBA, 1) == pytest.approx(1.0)
    # top3: doc0 1/3, doc1 2/3
    assert precision_at_k(Y_TRUE.astype(int), PROBA, 3) == pytest.approx(0.5)


def test_ndcg_by_hand() -> None:
    y = np.array([[0, 1, 0]])
    s = np.array([[0.9, 0.5, 0.1]])  # the true label is ranked second
    assert ndcg(y, s) == pytest.approx(1 / math.log2(3))
    assert ndcg(np.array([[1, 0]]), np.array([[0.9, 0.1]])) == pytest.approx(1.0)


def test_ece_by_hand() -> None:
    y = np.array([[1, 0], [1, 0]])
    p = np.array([[0.95, 0.05], [0.55, 0.05]])
    # bins: 0.95 -> bin 9 (acc 1, conf .95), 0.55 -> bin 5 (acc 1, conf .55), 0.05 x2 -> bin 0 (acc 0, conf .05)
    expected = 0.25 * 0.05 + 0.25 * 0.45 + 0.5 * 0.05
    assert expected_calibration_error(y, p) == pytest.approx(expected)


def test_evaluate_dev_set_runs(model) -> None:  # type: ignore[no-untyped-def]
    from classifier.evaluation import evaluate_model, load_gold

    from .conftest import shared_or_skip

    gold = load_gold(shared_or_skip("eval/dev.jsonl"))
    flat = evaluate_model(model, gold).flat()
    for key in ("domains.micro_f1", "domains.macro_f1", "pillars.micro_f1", "domains.ece"):
        assert 0.0 <= flat[key] <= 1.0
    assert flat["documents"] == len(gold)

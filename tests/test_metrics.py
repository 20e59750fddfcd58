"""Protocol metrics on inputs whose answers can be checked by hand."""
import math

import numpy as np
import pytest

from tvmptq.errors import ShapeError
from tvmptq.eval import accuracy, classification_fidelity, embedding_fidelity, log_softmax, sqnr_db


def test_identical_logits_are_perfect():
    logits = np.random.default_rng(0).normal(size=(20, 10)).astype(np.float32)
    m = classification_fidelity(logits, logits.copy())
    assert m["top1_agreement"] == 100.0 and m["top5_contains_ref_top1"] == 100.0
    assert m["kl_mean"] == pytest.approx(0.0, abs=1e-12)
    assert m["sqnr_db"] == math.inf


def test_permuted_classes():
    # Sample 0: q swaps the top-2 classes (top-1 disagrees, still in top 5).
    # Sample 1: q moves the FP32 top class to the very bottom of 6 classes (not in top 5).
    ref = np.array([[5.0, 4.0, 0, 0, 0, 0], [6.0, 5, 4, 3, 2, 1]])
    q = np.array([[4.0, 5.0, 0, 0, 0, 0], [0.0, 5, 4, 3, 2, 1]])
    m = classification_fidelity(ref, q)
    assert m["top1_agreement"] == 0.0
    assert m["top5_contains_ref_top1"] == 50.0


def test_kl_matches_hand_computation():
    ref = np.array([[0.0, math.log(3.0)]])  # softmax (1/4, 3/4)
    q = np.array([[0.0, 0.0]])  # softmax (1/2, 1/2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert classification_fidelity(ref, q)["kl_mean"] == pytest.approx(expected, rel=1e-12)


def test_log_softmax_is_stable_for_huge_logits():
    out = log_softmax(np.array([[1e4, 0.0]]))
    assert np.all(np.isfinite(out)) and out[0, 0] == pytest.approx(0.0)


def test_sqnr():
    ref = np.array([3.0, 4.0])  # signal power 25
    assert sqnr_db(ref, ref + np.array([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))
    assert sqnr_db(ref, ref) == math.inf


def test_accuracy():
    logits = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, np.array([0, 1, 1, 1])) == 75.0


def test_embedding_fidelity_identical():
    emb = np.random.default_rng(1).normal(size=(12, 8))
    m = embedding_fidelity(emb, emb.copy())
    assert m["cosine_mean"] == pytest.approx(1.0)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["nn_agreement"] == 100.0


def test_embedding_fidelity_hand_example():
    # Four unit vectors in the plane; q moves d next to a instead of next to c.
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-1.0, 0.1]])
    q = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.1]])
    m = embedding_fidelity(ref, q)
    # Nearest other row, FP32 vs q: a: b vs d, b: d vs d, c: d vs b, d: c vs a. Only b agrees.
    assert m["nn_agreement"] == 25.0
    cos_d = (-1.0 * 1.0 + 0.1 * 0.1) / (1.0 + 0.01)
    assert m["cosine_mean"] == pytest.approx((3 + cos_d) / 4)
    assert m["spearman"] < 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ShapeError):
        classification_fidelity(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ShapeError):
        embedding_fidelity(np.zeros((1, 3)), np.zeros((1, 3)))

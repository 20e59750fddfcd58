"""Metrics of the evaluation protocol, as pure numpy functions of model outputs.

Fidelity metrics compare a quantized model's outputs with the FP32 model's on the same inputs;
percentages are in [0, 100]. Everything is computed in float64.
"""
from __future__ import annotations

import numpy as np

from tvmptq.errors import ShapeError


def _pair_as_float64(ref: np.ndarray, q: np.ndarray, ndim: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(ref, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if ref.shape != q.shape:
        raise ShapeError(f"{what}: reference shape {ref.shape} differs from quantized shape {q.shape}")
    if ref.ndim != ndim or ref.shape[0] == 0:
        raise ShapeError(f"{what}: expected a non-empty {ndim}-D array, got shape {ref.shape}")
    return ref, q


def sqnr_db(ref: np.ndarray, x: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - x)^2)`` in dB.

    +inf when `x` equals `ref` exactly.
    """
    ref = np.asarray(ref, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if ref.shape != x.shape:
        raise ShapeError(f"sqnr_db: reference shape {ref.shape} differs from {x.shape}")
    signal = float(np.sum(ref * ref))
    noise = float(np.sum((ref - x) ** 2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax (shifts by the max before exponentiating)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - np.max(logits, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def classification_fidelity(ref_logits: np.ndarray, q_logits: np.ndarray) -> dict[str, float]:
    """Quantized vs FP32 logits (N, classes).

    Returns top1_agreement (%), top5_contains_ref_top1 (% of samples whose FP32 top-1 class is
    among the quantized top 5), kl_mean (mean KL(softmax ref || softmax q), nats) and sqnr_db.
    """
    ref, q = _pair_as_float64(ref_logits, q_logits, 2, "classification_fidelity")
    ref_top1 = np.argmax(ref, axis=1)
    q_top1 = np.argmax(q, axis=1)
    k = min(5, q.shape[1])
    q_top5 = np.argpartition(-q, k - 1, axis=1)[:, :k]

    log_p_ref = log_softmax(ref)
    log_p_q = log_softmax(q)
    kl_per_sample = np.sum(np.exp(log_p_ref) * (log_p_ref - log_p_q), axis=1)

    return {
        "top1_agreement": 100.0 * float(np.mean(ref_top1 == q_top1)),
        "top5_contains_ref_top1": 100.0 * float(np.mean(np.any(q_top5 == ref_top1[:, None], axis=1))),
        "kl_mean": float(np.mean(kl_per_sample)),
        "sqnr_db": sqnr_db(ref, q),
    }


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (%) of logits (N, classes) against integer labels (N,)."""
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ShapeError(f"accuracy: need logits (N, classes) and labels (N,), got {logits.shape} and {labels.shape}")
    return 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0.0, 1.0, norms)  # a zero row stays zero (cosine 0)


def embedding_fidelity(ref_emb: np.ndarray, q_emb: np.ndarray) -> dict[str, float]:
    """Quantized vs FP32 sentence embeddings (N, dim), N >= 2.

    Returns cosine_mean (mean cosine of each embedding with its FP32 one), spearman (rank
    correlation between the upper triangles of the two pairwise cosine-similarity matrices) and
    nn_agreement (% of sentences whose nearest other sentence is the same as under FP32).
    """
    from scipy.stats import spearmanr

    ref, q = _pair_as_float64(ref_emb, q_emb, 2, "embedding_fidelity")
    if ref.shape[0] < 2:
        raise ShapeError(f"embedding_fidelity: need at least 2 embeddings, got {ref.shape[0]}")
    ref_unit, q_unit = _unit_rows(ref), _unit_rows(q)

    cosine_to_ref = np.sum(ref_unit * q_unit, axis=1)
    ref_sim = ref_unit @ ref_unit.T
    q_sim = q_unit @ q_unit.T
    upper = np.triu_indices(ref.shape[0], k=1)
    spearman = spearmanr(ref_sim[upper], q_sim[upper]).statistic

    # The nearest neighbour must be another sentence, so each one's self-similarity is masked.
    np.fill_diagonal(ref_sim, -np.inf)
    np.fill_diagonal(q_sim, -np.inf)
    nn_same = np.argmax(ref_sim, axis=1) == np.argmax(q_sim, axis=1)

    return {
        "cosine_mean": float(np.mean(cosine_to_ref)),
        "spearman": float(spearman),
        "nn_agreement": 100.0 * float(np.mean(nn_same)),
    }

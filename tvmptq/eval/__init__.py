"""Evaluation of quantized models under the evaluation protocol."""
from tvmptq.eval.metrics import accuracy, classification_fidelity, embedding_fidelity, log_softmax, sqnr_db

__all__ = ["accuracy", "classification_fidelity", "embedding_fidelity", "log_softmax", "sqnr_db"]

"""The protocol's three sets as data: which arrays feed a model, and how its outputs are scored.

``evaluate`` is the one function that scores any model variant (FP32, simulated, compiled) on any
set: it only needs a runner, a callable from a batch of NumPy inputs to NumPy outputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError, ShapeError
from . import metrics

Arrays = tuple[np.ndarray, ...]


@dataclass(frozen=True)
class EvalSet:
    name: str
    task: str                                  # classification | embedding
    calibration: Callable[[], Arrays]          # model inputs
    evaluation: Callable[[], Arrays]
    labels: Callable[[], np.ndarray] | None = None
    description: str = ""


def _photos_calib():
    from ..data import calibration_views, preprocess_imagenet
    return (preprocess_imagenet(calibration_views()),)


def _photos_eval():
    from ..data import evaluation_views, preprocess_imagenet
    return (preprocess_imagenet(evaluation_views()),)


def _digits_calib():
    from ..data import calibration_digits
    return (np.ascontiguousarray(calibration_digits()),)


def _digits_eval():
    from ..data import evaluation_digits
    return (np.ascontiguousarray(evaluation_digits()[0]),)


def _digits_labels():
    from ..data import evaluation_digits
    return evaluation_digits()[1]


def _tokens(sentences):
    from ..zoo.minilm import encode_sentences
    return tuple(t.numpy() for t in encode_sentences(sentences))


def _sentences_calib():
    from ..data import calibration_sentences
    return _tokens(calibration_sentences())


def _sentences_eval():
    from ..data import evaluation_sentences
    return _tokens(evaluation_sentences())


SETS = {
    "photos": EvalSet("photos", "classification", _photos_calib, _photos_eval,
                      description="256 calibration / 512 evaluation views of 22 bundled photos"),
    "digits": EvalSet("digits", "classification", _digits_calib, _digits_eval, _digits_labels,
                      description="sklearn digits: 256 calibration train images / 540 test images"),
    "sentences": EvalSet("sentences", "embedding", _sentences_calib, _sentences_eval,
                         description="256 calibration / 512 evaluation stdlib docstring sentences"),
}
DEFAULT_SET = {"efficientnet_lite0": "photos", "digits_resnet": "digits", "digits_vit": "digits", "minilm_l6": "sentences"}


def get_set(name: str) -> EvalSet:
    if name not in SETS:
        raise ConfigError(f"unknown evaluation set {name!r}; known: {', '.join(SETS)}")
    return SETS[name]


class FixedBatch(int):
    """A batch size that a model's graph requires exactly (an ONNX file or ``.pt2`` exported at
    batch 1, say): :func:`batches` pads a short last chunk to it by repeating its last sample and
    :func:`run_outputs` trims the padded rows, so such a model takes any number of samples."""


def batch_size_for(graph, batch_size: int) -> int:
    """``batch_size``, or the :class:`FixedBatch` of a graph that fixes its batch size."""
    fixed = getattr(graph, "batch", None)
    return FixedBatch(fixed) if fixed else batch_size


def batches(arrays: Arrays, batch_size: int) -> Iterator[Arrays]:
    n = len(arrays[0])
    for i in range(0, n, batch_size):
        chunk = tuple(a[i:i + batch_size] for a in arrays)
        short = batch_size - len(chunk[0])
        if isinstance(batch_size, FixedBatch) and short > 0:
            chunk = tuple(np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) for c in chunk)
        yield chunk


def torch_runner(module: torch.nn.Module) -> Callable[..., np.ndarray]:
    """Wrap a torch module (float or simulated) as a NumPy-in, NumPy-out runner."""
    def run(*arrays):
        with torch.no_grad():
            # torch refuses to wrap read-only arrays (cached data sets are read-only): copy those.
            out = module(*(torch.from_numpy(a if a.flags.writeable and a.flags.c_contiguous else np.array(a))
                           for a in map(np.asarray, arrays)))
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.float().numpy()
    return run


def run_outputs(runner, arrays: Arrays, batch_size: int = 32, desc: str = "evaluate",
                progress: bool = True) -> np.ndarray:
    outs = []
    total = (len(arrays[0]) + batch_size - 1) // batch_size
    for batch in tqdm(batches(arrays, batch_size), total=total, desc=desc, unit="batch",
                      disable=not progress, leave=False):
        outs.append(np.asarray(runner(*batch)))
    return np.concatenate(outs)[:len(arrays[0])]  # without the rows a FixedBatch padded


def score(task: str, reference: np.ndarray, outputs: np.ndarray, labels=None) -> dict[str, float]:
    if reference.shape != outputs.shape:
        raise ShapeError(f"outputs of shape {outputs.shape} do not match the reference {reference.shape}")
    if task == "classification":
        result = metrics.classification_fidelity(reference, outputs)
        if labels is not None:
            result["accuracy"] = metrics.accuracy(outputs, labels)
        return result
    return metrics.embedding_fidelity(reference, outputs)


def evaluate(runner, evalset: EvalSet, reference: np.ndarray | None = None, batch_size: int = 32,
             progress: bool = True, desc: str = "evaluate") -> tuple[np.ndarray, dict[str, float]]:
    """Run ``runner`` on the evaluation split; metrics against ``reference`` outputs (FP32).

    Without a reference only label accuracy (when the set has labels) is computed.
    """
    outputs = run_outputs(runner, evalset.evaluation(), batch_size, desc, progress)
    labels = evalset.labels() if evalset.labels else None
    if reference is None:
        return outputs, ({"accuracy": metrics.accuracy(outputs, labels)} if labels is not None else {})
    return outputs, score(evalset.task, reference, outputs, labels)

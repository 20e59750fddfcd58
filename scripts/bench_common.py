"""Setup shared by the accuracy benchmarks (bench_cwac.py, bench_reconstruction.py): one zoo
model's graph, calibration and evaluation slices, and the timing of a compiled callable."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import tvmptq  # noqa: E402
from tvmptq.eval.sets import DEFAULT_SET  # noqa: E402

PRIMARY = {"classification": "top1_agreement", "embedding": "cosine_mean"}


@dataclass(frozen=True)
class Case:
    """A zoo model with its prepared graph and the protocol's data slices."""
    model: object
    evalset: object
    graph: object
    calib: tuple       # the first calib_samples calibration inputs
    evals: tuple       # the first eval_samples evaluation inputs
    labels: object     # their labels (None for tasks without)
    key: str           # the primary metric against FP32


def load_case(name: str, calib_samples: int, eval_samples: int) -> Case:
    model = tvmptq.load(name)
    evalset = tvmptq.get_set(DEFAULT_SET[name])
    calib = tuple(np.asarray(a[:calib_samples]) for a in evalset.calibration())
    evals = tuple(a[:eval_samples] for a in evalset.evaluation())
    labels = evalset.labels()[:len(evals[0])] if evalset.labels else None
    return Case(model, evalset, tvmptq.prepare(model), calib, evals, labels, PRIMARY[evalset.task])


def relax_import(model, batch: int):
    """The model imported into Relax and canonicalized, at a static batch."""
    import relay_passes as rp
    return rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(batch)))


def latency_ms(run, xs, repeats: int) -> float:
    """Median ms per sample of ``run(*xs)`` (all model inputs, e.g. MiniLM's ids and mask), after a warm-up call."""
    run(*xs)
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(*xs)
        t.append(time.perf_counter() - t0)
    return 1000 * float(np.median(t)) / len(xs[0])

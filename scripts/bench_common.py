"""Setup shared by the accuracy benchmarks (bench_baseline.py, bench_cwac.py, bench_reconstruction.py,
bench_lowering.py, ablation_bias_correction.py): the protocol's bit widths per zoo model, one zoo model's
graph, calibration and evaluation slices (with its FP32 outputs and calibration statistics), and the
timing of a compiled callable."""
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
# The bit widths the baseline and CWAC tables report per zoo model (W2A4 only where the digits models
# still carry meaning at 2 bits).
PROTOCOL_BITS = {"efficientnet_lite0": ["W8A8", "W6A6", "W4A8", "W4A4"],
                 "minilm_l6": ["W8A8", "W6A6", "W4A8", "W4A4"],
                 "digits_resnet": ["W8A8", "W6A6", "W4A8", "W4A4", "W2A4"],
                 "digits_vit": ["W8A8", "W6A6", "W4A8", "W4A4", "W2A4"]}


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


@dataclass(frozen=True)
class Calibrated:
    """A zoo model's graph with its FP32 outputs on the evaluation slice and its calibration statistics
    (the whole calibration set): what a table of plans built from the same statistics starts from."""
    model: object
    evalset: object
    graph: object
    calib: tuple       # the whole calibration set
    evals: tuple       # the first eval_samples evaluation inputs (all of them when None)
    ref: object        # the FP32 graph's outputs on evals
    observers: dict    # collect_statistics over calib


def calibrated(name: str, eval_samples: int | None = None, batch_size: int = 32) -> Calibrated:
    from tvmptq.eval.sets import batches, run_outputs, torch_runner
    from tvmptq.quant.calibrate import collect_statistics
    model = tvmptq.load(name)
    evalset = tvmptq.get_set(DEFAULT_SET[name])
    graph = tvmptq.prepare(model)
    calib, evals = evalset.calibration(), evalset.evaluation()
    if eval_samples:
        evals = tuple(a[:eval_samples] for a in evals)
    ref = run_outputs(torch_runner(graph.gm), evals, batch_size, "fp32")
    observers, _ = collect_statistics(graph, batches(calib, batch_size))
    return Calibrated(model, evalset, graph, calib, evals, ref, observers)


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


def put_row(rows: list, row: dict) -> None:
    """Add ``row``; a row already there with the same model, bits and method (an earlier run of
    the same setting, kept by ``--append``) is replaced in place, so a rerun updates the table."""
    key = lambda r: (r["model"], r["bits"], r["method"])  # noqa: E731
    same = [i for i, r in enumerate(rows) if key(r) == key(row)]
    if same:
        rows[same[0]] = row
        rows[:] = [r for i, r in enumerate(rows) if i not in same[1:]]
    else:
        rows.append(row)

"""Batch-1 latency across engines (PyTorch, ONNX Runtime, TVM) and per-kernel profiles, each in a fresh
process with its thread count (scripts/bench_speed.py drives it; targets/speed_report.py writes
``results/speed.md`` from the results).

    r = measure_in_subprocess({"engine": "tvm_int8_tuned", "kind": "tvm", "path": "lib.so",
                               "inputs": "x.npz", "repeat": 30, "number": 5, "warmup": 5}, threads=1, work=d)

Why a process per measurement: TVM's runtime reads ``TVM_NUM_THREADS`` once, when its thread pool
starts, and PyTorch / ONNX Runtime keep their pools for the life of the process too. The worker sets
``TVM_NUM_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` (environment, before any import),
``torch.set_num_threads`` and ORT's ``intra_op_num_threads`` (``inter_op_num_threads`` = 1).

Timing protocol, the same for every engine (targets.profile._measure for TVM, whose
``time_evaluator`` does exactly this in C++): ``warmup`` untimed calls, then ``repeat`` timed
samples, each the mean of ``number`` back-to-back calls; reported: median and IQR of the samples.

Profiles: TVM through the Relax VM's instrument hook (wall time between the hook's before and after
calls of every kernel; the hook's own Python cost is included, so the kernel sum exceeds the
latency a little), ONNX Runtime through its own profiler (``SessionOptions.enable_profiling``;
per-node ``*_kernel_time`` events, warm-up runs excluded by timestamp).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

# (key, column label); the first seven are the engines, the last one shows what the
# tensorized kernels bring (the plain lowering, LLVM's own vectorization, no hand kernels)
ENGINES = (("torch_fp32", "PyTorch FP32"),
           ("ort_fp32", "ORT FP32"),
           ("ort_int8", "ORT int8 (quantize_static)"),
           ("ort_tvmptq_qdq", "ORT on tvmptq QDQ"),
           ("tvm_fp32_tuned", "TVM FP32 tuned"),
           ("tvm_int8_untuned", "TVM int8 untuned"),
           ("tvm_int8_tuned", "TVM int8 tuned"),
           ("tvm_int8_plain", "TVM int8 untuned, no dot kernels"),
           ("litert_int8", "LiteRT int8 (tvmptq TFLite, XNNPACK)"))
LABELS = dict(ENGINES)
THREAD_VARS = ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ------------------------------------------------------------------------------------- worker side
def _load_inputs(path) -> list[np.ndarray]:
    data = np.load(path)
    return [np.ascontiguousarray(data[f"in{i}"]) for i in range(len(data.files))]


def time_calls(fn, repeat: int, number: int, warmup: int) -> dict:
    """The timing protocol for engines without a time evaluator (see the module doc)."""
    from .profile import summarize
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - t0) / number)
    return summarize(samples)


def _torch_fn(spec, xs, threads):
    import torch
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass
    import tvmptq
    module = tvmptq.load(spec["model"]).build().eval()
    args = [torch.from_numpy(np.array(x)) for x in xs]

    def run():
        with torch.inference_mode():
            return module(*args)
    return run


def _ort_session(path, threads, profile_prefix=None):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_feed(sess, xs) -> dict:
    from tvmptq.peers.onnxruntime_peer import _numpy_dtype
    return {i.name: np.asarray(x, dtype=_numpy_dtype(i.type)) for i, x in zip(sess.get_inputs(), xs)}


def _tvm_vm(path):
    import tvm
    from tvm import relax
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), dev)
    return vm, dev


def _tvm_args(vm, dev, xs):
    import tvm
    return [tvm.runtime.tensor(x, dev) for x in xs]


def run_worker(spec: dict) -> dict:
    """One measurement (``spec["mode"]`` "latency", the default) or profile ("profile") of one engine
    in this process; the thread count comes from ``spec["threads"]`` (the environment is already set
    by :func:`measure_in_subprocess`)."""
    threads = int(spec["threads"])
    xs = _load_inputs(spec["inputs"])
    kind, mode = spec["kind"], spec.get("mode", "latency")
    repeat, number, warmup = int(spec["repeat"]), int(spec["number"]), int(spec["warmup"])
    out = {"engine": spec["engine"], "threads": threads, "mode": mode}
    if kind == "torch":
        out.update(time_calls(_torch_fn(spec, xs, threads), repeat, number, warmup))
    elif kind == "ort":
        if mode == "profile":
            out.update(_profile_ort(spec, xs, threads, warmup, repeat * number))
        else:
            sess = _ort_session(spec["path"], threads)
            feed = _ort_feed(sess, xs)
            out.update(time_calls(lambda: sess.run(None, feed), repeat, number, warmup))
    elif kind == "tvm":
        vm, dev = _tvm_vm(spec["path"])
        args = _tvm_args(vm, dev, xs)
        if mode == "profile":
            out.update(_profile_tvm(vm, args, warmup, repeat * number))
        else:
            from .profile import _measure
            out.update(_measure(vm, dev, args, repeat, number, warmup))
    elif kind == "litert":  # the int8 input is quantized beforehand (the .tflite takes int8)
        from .npu.litert import invoke_fn
        out.update(time_calls(invoke_fn(spec["path"], xs[0], threads), repeat, number, warmup))
    else:
        raise ValueError(f"unknown engine kind {kind!r}")
    return out


def _profile_tvm(vm, args, warmup: int, runs: int) -> dict:
    """Mean wall time per inference of every function the VM calls (kernels and VM builtins)."""
    for _ in range(warmup):
        vm["main"](*args)
    times, calls, start = {}, {}, {}

    def instrument(func, symbol, before, ret, *rest):
        now = time.perf_counter()
        if before:
            start[symbol] = now
        else:
            times[symbol] = times.get(symbol, 0.0) + now - start.pop(symbol, now)
            calls[symbol] = calls.get(symbol, 0) + 1
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(instrument)
    t0 = time.perf_counter()
    for _ in range(runs):
        vm["main"](*args)
    wall = (time.perf_counter() - t0) / runs
    return {"runs": runs, "wall_ms": wall * 1e3,
            "kernels": [{"name": k, "ms": v * 1e3 / runs, "calls": calls[k] / runs} for k, v in times.items()]}


def _profile_ort(spec, xs, threads, warmup: int, runs: int) -> dict:
    prefix = Path(spec["profile_dir"]) / f"ort_{spec['engine']}_{threads}t"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    sess = _ort_session(spec["path"], threads, prefix)
    feed = _ort_feed(sess, xs)
    for _ in range(warmup):
        sess.run(None, feed)
    t0 = time.perf_counter()
    for _ in range(runs):
        sess.run(None, feed)
    wall = (time.perf_counter() - t0) / runs
    path = sess.end_profiling()
    return {"runs": runs, "wall_ms": wall * 1e3, **ort_profile_summary(path, skip_runs=warmup)}


def ort_profile_summary(path, skip_runs: int = 0) -> dict:
    """Per-node mean kernel time (ms per run) from an ONNX Runtime profile JSON, the first
    ``skip_runs`` runs (warm-up) left out: ``{"nodes": [{"name", "op", "ms"}], "profiled_runs"}``."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    kept = runs[skip_runs:]
    if not kept:
        return {"nodes": [], "profiled_runs": 0}
    t_from = kept[0][0]
    per_node, ops = {}, {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e["ts"] < t_from:
            continue
        name = e["name"][: -len("_kernel_time")]
        per_node[name] = per_node.get(name, 0.0) + e["dur"]
        ops[name] = e.get("args", {}).get("op_name", "?")
    n = len(kept)
    return {"profiled_runs": n,
            "nodes": [{"name": k, "op": ops[k], "ms": v / 1e3 / n} for k, v in per_node.items()]}


# ------------------------------------------------------------------------------------- parent side
def measure_in_subprocess(spec: dict, threads: int, work, timeout: float = 1800) -> dict:
    """Run :func:`run_worker` in a fresh Python with every thread knob set to ``threads``; returns
    its result, or ``{"error": ...}`` when the worker fails."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tag = f"{spec['engine']}_{spec.get('mode', 'latency')}_{threads}t_{os.getpid()}_{time.monotonic_ns()}"
    spec_path, out_path = work / f"{tag}.spec.json", work / f"{tag}.out.json"
    spec_path.write_text(json.dumps({**spec, "threads": threads, "result": str(out_path)}))
    env = dict(os.environ)
    env.update({v: str(threads) for v in THREAD_VARS})
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, "-m", "targets.speed", str(spec_path)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        spec_path.unlink(missing_ok=True)
    if res.returncode != 0 or not out_path.exists():
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"error": f"worker exit {res.returncode}: {' | '.join(tail)}"}
    out = json.loads(out_path.read_text())
    out_path.unlink()
    return out


def describe_qdq(path) -> dict:
    """What a QDQ ONNX model quantizes and how: activation zero-point dtypes, and for weights
    (DequantizeLinear of an int8 initializer) how many are per-channel and whether every weight
    zero point is 0 (symmetric)."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    act_zp, weights, per_channel, symmetric = set(), 0, 0, True
    for node in m.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and node.input[2] in inits:
            act_zp.add(onnx.helper.tensor_dtype_to_np_dtype(inits[node.input[2]].data_type).name)
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            w = inits[node.input[0]]
            if w.data_type != onnx.TensorProto.INT8:
                continue
            weights += 1
            scale = inits.get(node.input[1])
            if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
                per_channel += 1
            if len(node.input) > 2 and node.input[2] in inits:
                symmetric &= bool(np.all(numpy_helper.to_array(inits[node.input[2]]) == 0))
    return {"format": "QDQ" if any(n.op_type == "DequantizeLinear" for n in m.graph.node) else "other",
            "activation_dtypes": sorted(act_zp), "int8_weights": weights, "per_channel_weights": per_channel,
            "symmetric_weights": symmetric}


def main(argv=None) -> int:
    """Worker entry point: ``python -m targets.speed SPEC.json`` (see measure_in_subprocess)."""
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    out = run_worker(spec)
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

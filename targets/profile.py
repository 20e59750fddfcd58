"""Latency of a compiled artifact: locally, or on a device behind TVM's RPC tracker.

    stats = profile_artifact("build/digits", repeat=20, number=5, warmup=3)             # this machine
    stats = profile_artifact("build/digits_a72", tracker="127.0.0.1:9190", key="cortex-a72")

The program runs ``warmup`` times first (not timed), then ``repeat`` timed runs, each the mean of
``number`` back-to-back calls (TVM's time_evaluator). Reported: median and spread (interquartile
range, min, max) of the ``repeat`` values, in milliseconds per call of the static batch.

The RPC plumbing (tracker addresses, LoopbackRPC for tests and qemu servers) is targets.rpc.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tvmptq.errors import ConfigError

from .rpc import RPCError, parse_tracker, server_keys


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def sample_inputs(manifest: dict, seed: int = 0) -> list[np.ndarray]:
    """Deterministic inputs of the artifact's static shapes (latency does not depend on values here)."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in manifest["inputs"]:
        shape, dtype = spec["shape"], spec["dtype"]
        if "int" in dtype:
            out.append(rng.integers(0, 100, size=shape).astype(dtype))
        else:
            out.append(rng.standard_normal(shape).astype(dtype))
    return out


def summarize(seconds) -> dict:
    ms = np.asarray(seconds, np.float64) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(med), "iqr_ms": float(q3 - q1), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "std_ms": float(ms.std()), "repeat": int(len(ms))}


def _measure(vm, dev, args, repeat, number, warmup) -> dict:
    for _ in range(warmup):
        vm["main"](*args)
    dev.sync()
    res = vm.time_evaluator("main", dev, number=number, repeat=repeat)(*args)
    return summarize(res.results)


def _read_manifest(folder: Path) -> dict:
    from tvmptq.deploy.artifact import _checked_file, _read_manifest as read
    manifest = read(folder)
    _checked_file(folder, manifest["library"], "library")
    return manifest


def profile_artifact(folder, repeat: int = 20, number: int = 5, warmup: int = 3, tracker: str | None = None,
                     key: str | None = None, session_timeout: int = 600, check_outputs=None) -> dict:
    """Median and spread of the artifact's latency. ``tracker``/``key``: measure on a remote device
    (the key defaults to the rpc key of the artifact's named target). ``check_outputs``: (inputs,
    expected outputs) to compare bit for bit on the device before timing."""
    import tvm
    from tvm import relax

    if repeat < 1 or number < 1 or warmup < 0:
        raise ConfigError(f"--repeat and --number must be at least 1 and --warmup at least 0, "
                          f"got {repeat}, {number}, {warmup}")
    folder = Path(folder)
    manifest = _read_manifest(folder)
    target = manifest.get("target", {})
    kind = target.get("kind", "llvm")
    inputs = sample_inputs(manifest)
    result = {"artifact": str(folder), "model": manifest["model"]["name"], "config": manifest["plan"]["config"],
              "target": target.get("name") or target.get("requested"), "batch": manifest["batch"],
              "warmup": warmup, "number": number}
    if tracker is None:
        from tvmptq.deploy import load_artifact
        art = load_artifact(folder)
        vm, dev = art.vm, art.device
        result["where"] = "local"
    else:
        key = key or target.get("name") or ""
        if not key:
            raise ConfigError("--rpc-key is needed: the artifact names no registry target")
        host, port = parse_tracker(tracker)
        try:
            session = tvm.rpc.connect_tracker(host, port)
            keys = server_keys(session)
            if key not in keys:  # request() would wait forever for a key no server offers
                raise RPCError(f"no RPC server with key {key!r} at tracker {host}:{port} "
                               f"(registered: {', '.join(sorted(keys)) or 'none'})")
            remote = session.request(key, priority=1, session_timeout=session_timeout, max_retry=3)
        except RPCError:
            raise
        except Exception as err:
            raise RPCError(f"no RPC server with key {key!r} at tracker {host}:{port}: {_first_line(err)}") from None
        try:
            remote.upload(str(folder / manifest["library"]["file"]))
            lib = remote.load_module(manifest["library"]["file"])
            dev = remote.cpu() if kind in ("llvm", "c") else remote.device(kind)
            vm = relax.VirtualMachine(lib, dev)
        except Exception as err:
            raise RPCError(f"the RPC server {key!r} could not load {folder}: {_first_line(err)}") from None
        result["where"] = f"rpc {host}:{port} key={key}"
    args = [tvm.runtime.tensor(a, dev) for a in inputs]
    if check_outputs is not None:
        x, expected = check_outputs
        # set_input/invoke_stateful/get_outputs: the way to read a tuple result back over RPC
        vm.set_input("main", *[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in x])
        vm.invoke_stateful("main")
        got = vm.get_outputs("main")
        got = [got] if hasattr(got, "numpy") else list(got)
        expected = expected if isinstance(expected, (list, tuple)) else [expected]
        result["bit_exact"] = all(np.array_equal(g.numpy(), np.asarray(e)) for g, e in zip(got, expected))
    try:
        result.update(_measure(vm, dev, args, repeat, number, warmup))
    except Exception as err:
        raise RPCError(f"timing failed on {result['where']}: {_first_line(err)}") from None
    return result


def format_result(r: dict) -> str:
    return (f"{r['model']} {r['config']} on {r['target']} ({r['where']}, batch {r['batch']}): median "
            f"{r['median_ms']:.3f} ms, IQR {r['iqr_ms']:.3f} ms, min {r['min_ms']:.3f}, max {r['max_ms']:.3f} "
            f"over {r['repeat']} repeats of {r['number']} calls after {r['warmup']} warm-up calls")


def to_json(r: dict) -> str:
    return json.dumps(r, indent=2)

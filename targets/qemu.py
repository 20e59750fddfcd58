"""Run aarch64 tvmptq artifacts without a board: qemu-user + Debian's arm64 python + the aarch64 TVM wheel.

The environment is made by ``scripts/setup_arm64.sh`` (``make arm-setup``) in ``build/arm64`` (or
``$TVMPTQ_ARM64_DIR``): an arm64 sysroot, the aarch64 wheels, a ``python`` wrapper that starts
python3.11 under qemu-aarch64, and ``libinsn.so``, a qemu plugin that counts guest instructions.

Guest instruction counts are a *proxy* for work done (they ignore caches, memory and pipelines);
they rank programs on one ISA and are never an ARM latency. Emulated wall time means nothing.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from tvmptq.errors import DataError, TvmptqError

REPO = Path(__file__).resolve().parent.parent
GUEST_SCRIPT = Path(__file__).with_name("_guest_run.py")


class QemuError(TvmptqError):
    exit_code = 4


def arm64_dir() -> Path:
    return Path(os.environ.get("TVMPTQ_ARM64_DIR", REPO / "build" / "arm64"))


def missing() -> str | None:
    """Why aarch64 programs cannot run here (None: they can)."""
    if shutil.which("qemu-aarch64") is None:
        return "qemu-aarch64 is not installed (apt-get install qemu-user; or make arm-setup)"
    d = arm64_dir()
    if not (d / "python").exists() or not (d / "site" / "tvm").is_dir():
        return f"no aarch64 python/TVM environment in {d} (run scripts/setup_arm64.sh, or make arm-setup)"
    return None


def _python() -> str:
    why = missing()
    if why:
        raise QemuError(why)
    return str(arm64_dir() / "python")


def run_library(lib: Path, arrays, batch: int, timeout: float = 900) -> list[np.ndarray]:
    """Outputs of the aarch64 library ``lib`` on ``arrays`` (numpy, any number of samples), run
    under qemu: chunks of the static ``batch`` (the last one padded by repeating the last sample)."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    pad = (-n) % batch
    if pad:
        arrays = [np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) for a in arrays]
    with tempfile.TemporaryDirectory(prefix="tvmptq-qemu-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "in.npz", **{f"in{i}": a for i, a in enumerate(arrays)})
        _guest(lib, tmp / "in.npz", tmp / "out.npz", batch, -1, timeout)
        data = np.load(tmp / "out.npz")
        return [data[f"out{j}"][:n] for j in range(len(data.files))]


def _guest(lib, inputs, outputs, batch, calls, timeout, plugin_out=None):
    env = dict(os.environ)
    if plugin_out is not None:
        env["QEMU_PLUGIN_ARGS"] = f"-plugin {arm64_dir() / 'libinsn.so'},outfile={plugin_out}"
    cmd = [_python(), str(GUEST_SCRIPT), str(lib), str(inputs), str(outputs), str(batch), str(calls)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise QemuError(f"the aarch64 run under qemu did not finish in {timeout:.0f} s") from None
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise QemuError(f"the aarch64 run under qemu failed (exit {res.returncode}): {' | '.join(tail)}")


def instruction_count(lib: Path, arrays, batch: int, calls: int = 10, timeout: float = 900,
                      min_total: float = 3e8) -> dict:
    """Guest instructions per program call (a proxy, not a latency): two qemu runs that differ only
    by ``calls`` calls of ``main`` on one batch; their difference divided by ``calls``. Python's own
    start-up (about 4 G instructions) cancels out; calls are raised until they add at least
    ``min_total`` instructions. Single-threaded (TVM_NUM_THREADS=1), PYTHONHASHSEED=0. Measured
    run-to-run variation: about 5 % per call (digits int8, batch 8: 22.9 M vs 21.6 M), so compare
    programs only on differences well above that."""
    if not (arm64_dir() / "libinsn.so").is_file():
        raise QemuError(f"the instruction-count plugin {arm64_dir() / 'libinsn.so'} is missing (make arm-setup)")
    arrays = [np.asarray(a)[:batch] for a in arrays]
    if len(arrays[0]) < batch:
        arrays = [np.concatenate([a, np.repeat(a[-1:], batch - len(a), axis=0)]) for a in arrays]
    counts = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tvmptq-qemu-") as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "in.npz", **{f"in{i}": a for i, a in enumerate(arrays)})

        def count(k):
            _guest(lib, tmp / "in.npz", tmp / "unused.npz", batch, k, timeout, plugin_out=tmp / f"insns{k}.txt")
            text = (tmp / f"insns{k}.txt").read_text().split()
            if len(text) != 2 or text[0] != "GUEST_INSNS":
                raise QemuError(f"unexpected output of the instruction-count plugin: {' '.join(text)!r}")
            counts[k] = int(text[1])
        count(0)
        count(calls)
        per_call = (counts[calls] - counts[0]) / calls
        if per_call * calls < min_total:  # small program: more calls, so the noise is below 1 %
            calls = int(np.ceil(min_total / per_call)) if per_call > 0 else calls * 100
            count(calls)
    per_call = (counts[calls] - counts[0]) / calls
    if per_call * calls < 5e6:
        raise DataError(f"instruction counts grew by less than the run-to-run noise ({counts}); use more calls")
    return {"guest_insns_per_call": per_call, "batch": batch, "calls": calls, "raw": counts,
            "seconds": time.perf_counter() - t0,
            "note": "qemu-user guest instruction count: a proxy for work, NOT an ARM latency"}


def check_artifact(folder, arrays, reference) -> dict:
    """Run an aarch64 artifact under qemu and compare bit for bit with ``reference`` outputs (x86)."""
    import json
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    outs = run_library(folder / manifest["library"]["file"], arrays, int(manifest["batch"]))
    ref = reference if isinstance(reference, (list, tuple)) else [reference]
    same = [np.array_equal(o, np.asarray(r)) for o, r in zip(outs, ref)]
    return {"bit_exact": all(same) and len(outs) == len(ref), "outputs": outs,
            "max_abs_diff": max(float(np.max(np.abs(o.astype(np.float64) - np.asarray(r, np.float64))))
                                for o, r in zip(outs, ref))}

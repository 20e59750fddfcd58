"""CUDA targets without a GPU: TVM 0.27 stores CUDA C source in the library (it is JIT-compiled when
loaded on the device), so a build "succeeds" even for an arch the toolkit cannot compile for.
``validate`` compiles that source with nvcc for the target's arch (``-cubin``), which is the check
available on a machine without a GPU. Latency needs a GPU (profile through an RPC tracker)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tvmptq.errors import ModelError

CUDA_SOURCE = "kernels.cu"


def nvcc_path() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/bin/nvcc"):
        if Path(p).is_file():
            return p
    return None


def cuda_source(executable) -> str | None:
    """The generated CUDA C source inside a compiled executable (None: no CUDA module)."""
    def walk(m):
        yield m
        for i in m.imports:
            yield from walk(i)
    mods = [m for m in walk(executable.mod) if m.kind == "cuda"]
    return "\n".join(m.inspect_source() for m in mods) if mods else None


def validate(source_file, arch: str, timeout: float = 600) -> dict:
    """Compile the CUDA source for ``arch`` (e.g. "sm_87") with nvcc; a ModelError when it fails."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise ModelError("nvcc is not installed: CUDA builds cannot be validated here")
    with tempfile.TemporaryDirectory(prefix="tvmptq-nvcc-") as tmp:
        out = Path(tmp) / "kernels.cubin"
        t0 = time.perf_counter()
        res = subprocess.run([nvcc, f"-arch={arch}", "-cubin", "-w", "-o", str(out), str(source_file)],
                             capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise ModelError(f"nvcc -arch={arch} rejected the generated CUDA source: {' | '.join(tail)}")
        version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
        return {"arch": arch, "ok": True, "cubin_bytes": out.stat().st_size, "seconds": seconds,
                "nvcc": version[-1] if version else "?"}


def schedule_gpu(mod, tvm_target):
    """Legalize, fuse and thread-bind ``mod`` as TVM's CUDA pipeline does (DLight's default rules,
    first that applies wins), except that a rule that raises passes the kernel on to the next rule
    instead of failing the build. Why: DLight's Matmul rule asserts on a conv whose fused consumers
    it cannot inline (EfficientNet-Lite0's conv + bias + ReLU6 + pad-for-the-next-depthwise kernels),
    and one such kernel stopped the whole model from compiling for CUDA. Those kernels get the next
    rule (GEMV, reductions, Fallback). The pipeline that ``tvm.compile`` runs afterwards skips the
    kernels scheduled here (DLight marks them). Returns (module, the rule that raised, once per kernel it raised on)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    fell_through: list[str] = []

    class PassOnErrors(dl.ScheduleRule):
        def __init__(self, rule):
            self.rule = rule

        def is_target_available(self, target) -> bool:
            return self.rule.is_target_available(target)

        def apply(self, func, target, tunable):
            try:
                return self.rule.apply(func, target, tunable)
            except Exception:  # noqa: BLE001 - DLight rules signal "not for me" by asserting
                fell_through.append(type(self.rule).__name__)
                return None

    rules = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
    seq = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                    relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                    relax.transform.FuseTIR(),
                                    dl.ApplyDefaultSchedule(*[PassOnErrors(r) for r in rules[:-1]], rules[-1])])
    with tvm_target:
        mod = seq(mod)
    return mod, fell_through

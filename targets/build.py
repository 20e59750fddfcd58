"""Build and export Relax modules for a named target (cross-compiling where the target says so)."""
from __future__ import annotations

import json
import platform
import shutil

from tvmptq.errors import ConfigError, DataError, ModelError

from . import Target, TargetError, get, is_name, load


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def resolve(spec: str, extra_files=()):
    """(named Target or None, tvm.target.Target) for a registry name, a TVM target string or a JSON dict."""
    import tvm
    spec = spec.strip()
    if spec in load(extra_files):
        t = get(spec, extra_files)
        return t, t.tvm_target()
    if spec.startswith("{"):
        try:
            d = json.loads(spec)
        except json.JSONDecodeError as err:
            raise ConfigError(f"invalid target JSON {spec!r}: {err}") from None
        if d.get("mcpu") == "native":
            raise TargetError("mcpu \"native\" silently becomes \"generic\" in TVM 0.27; use a target name such as "
                              "x86-host (see `tvmptq targets`)")
    elif spec not in ("llvm", "c", "cuda") and not spec.startswith(("llvm ", "cuda ")):
        raise TargetError(f"unknown target {spec!r}: not a registry name ({', '.join(load(extra_files))}), "
                          "nor a TVM target (llvm, cuda, or a JSON dict)")
    try:
        return None, tvm.target.Target(json.loads(spec) if spec.startswith("{") else spec)
    except Exception as err:
        raise TargetError(f"invalid TVM target {spec!r}: {_first_line(err)}") from None


def host_arch() -> str:
    m = platform.machine()
    return {"arm64": "aarch64", "AMD64": "x86_64"}.get(m, m)


def cross_compiler(target: Target | None):
    """fcompile for export_library: the target's cross compiler, or None for the host's default."""
    if target is None or not target.cross_cc:
        return None
    if shutil.which(target.cross_cc) is None:
        raise TargetError(f"target {target.name!r} needs the cross compiler {target.cross_cc!r}, which is not "
                          "installed (Debian: apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu; "
                          "or `make arm-setup`)")
    from tvm.support import cc
    return cc.cross_compiler(target.cross_cc)


def compile_module(mod, tvm_target, database=None):
    """Build a Relax module: ``tvm.compile``, applying a MetaSchedule database's tuned schedules
    first when one is given.

    CPU (llvm) modules are legalized and fused first (tune.prepare: FuseOps + FuseTIR), tuned or
    not. Why: TVM 0.27's ``tvm.compile`` builds CPU targets with its ``default_build`` pipeline,
    which has no operator fusion, so every elementwise op of a requantize chain would be its own
    kernel and its own pass over memory (EfficientNet-Lite0 int8: 33 VNNI kernels plus about 300
    small ones). Tuned builds already run on the fused module (the tasks are the fused kernels), so
    untuned and tuned programs now have the same kernels; fused kernels no schedule covers
    get cpu_defaults.schedule_elementwise (elementwise: intermediates inlined) or
    cpu_reduction.schedule_reduction (attention matmuls with their requantize, softmax). CUDA targets get TVM's GPU pipeline
    (fusion plus DLight thread bindings), with a DLight rule that fails passing the kernel on to
    the next rule (cuda.schedule_gpu) instead of failing the build."""
    import tvm
    try:
        if database is not None:
            from .tune import apply_database
            return apply_database(mod, tvm_target, database)
        if tvm_target.kind.name == "llvm":
            from .cpu_defaults import schedule_elementwise_kernels
            from .tune import prepare
            mod, _ = schedule_elementwise_kernels(prepare(mod, tvm_target), tvm_target)
        elif tvm_target.kind.name == "cuda":
            from .cuda import schedule_gpu
            mod, _ = schedule_gpu(mod, tvm_target)
        return tvm.compile(mod, target=tvm_target)
    except (TargetError, DataError):  # a bad target or tuning database speaks for itself
        raise
    except Exception as err:
        raise ModelError(f"TVM could not compile for {tvm_target.kind.name} target: {_first_line(err)}") from err


def export(executable, path, target: Target | None) -> None:
    fcompile = cross_compiler(target)
    try:
        if fcompile is None:
            executable.export_library(str(path))
        else:
            executable.export_library(str(path), fcompile=fcompile)
    except TargetError:
        raise
    except Exception as err:
        raise ModelError(f"exporting the library for {target.name if target else 'the target'} failed: "
                         f"{_first_line(err)}") from err


def runs_here(target_info: dict) -> bool:
    """Whether an artifact compiled for ``target_info`` (the manifest's) can be loaded on this machine."""
    arch = target_info.get("arch")
    return arch in (None, host_arch()) and target_info.get("kind", "llvm") in ("llvm", "c")


def compile_integer(mod, target="llvm", tensorize: bool = False):
    """Build ``mod`` and return ``run(*arrays) -> array`` (a tuple for several outputs).

    ``target``: a TVM target (or its string / dict), or a registry target name such as
    ``x86-host`` (targets/registry.toml). ``tensorize=True`` first applies
    ``tensorize.TensorizeDot(target)``: linear layers and 1x1 convs as tensorized VNNI kernels
    when the registry target has VNNI; otherwise nothing changes and a warning names every layer
    and why. (It runs here, so only x86 kernels make sense; Arm ones run under qemu, targets.qemu.)

    The module has a static batch size; ``run`` takes any number of samples and feeds them in
    chunks of that size (the last chunk padded by repeating its last sample, then trimmed)."""
    import tvm
    from tvm import relax
    named = None  # a registry target; plain TVM targets ("llvm", "llvm -mcpu=...", JSON) never read the registry
    if isinstance(target, str) and target.split(" ")[0] not in ("llvm", "c", "cuda") and not target.startswith("{"):
        named = get(target) if is_name(target) else None
    if tensorize:
        from relay_passes.tensorize import TensorizeDot
        mod = TensorizeDot(named if named is not None else target)(mod)
    if named is not None:
        target = named.tvm_target()
    target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
    vm = relax.VirtualMachine(compile_module(mod, target), tvm.cpu())  # fused, as every CPU build of the project
    shapes = [tuple(int(d) for d in p.ty.shape) for p in mod["main"].params]
    dtypes = [str(p.ty.dtype) for p in mod["main"].params]
    batch = shapes[0][0]

    def run(*arrays):
        return run_batched(vm["main"], arrays, batch, dtypes, tvm.cpu())
    return run


def run_batched(func, arrays, batch: int, dtypes, device):
    """Call a static-batch compiled ``func`` on any number of samples: chunks of ``batch``, the last
    one padded by repeating its last sample, outputs trimmed and concatenated (a tuple for
    several outputs)."""
    import numpy as np
    import tvm
    n = len(arrays[0])
    outs = []
    for i in range(0, n, batch):
        chunk = [np.asarray(a[i:i + batch], dtype=dt) for a, dt in zip(arrays, dtypes)]
        short = batch - len(chunk[0])
        if short:
            chunk = [np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) for c in chunk]
        res = func(*[tvm.runtime.tensor(np.ascontiguousarray(c), device) for c in chunk])
        res = [res] if hasattr(res, "numpy") else list(res)  # one tensor or a tuple of them
        outs.append([r.numpy()[:batch - short] for r in res])
    merged = [np.concatenate(parts) for parts in zip(*outs)]
    return merged[0] if len(merged) == 1 else tuple(merged)


def compile_qdq(qdq_path, float_path=None, target="llvm"):
    """``(run, qm)``: a QDQ ONNX model (ORT ``quantize_static``, PT2E) read as a plan
    (``tvmptq.peers.plan_from_qdq``), lowered by relay_passes to an integer-only Relax program and
    compiled (``run(x) -> dequantized logits``); ``qm`` holds the plan and its simulation."""
    import relay_passes as rp
    from tvmptq.peers.qdq_import import plan_from_qdq

    float_path, qm = plan_from_qdq(qdq_path, float_path)
    mod = rp.lowering_passes(qm.plan)(rp.import_onnx(float_path))
    return compile_integer(mod, target), qm

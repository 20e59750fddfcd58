"""CUDA ``dp4a`` kernels (targets/kernels/cuda_dp4a.py): linear layers and 1x1 convs tensorized for CUDA
targets, the requantize in each thread's epilogue, the generated CUDA source compiled with nvcc.

No GPU runs here, so the arithmetic is checked the one way a CPU can: the same rewrite with the
GPU schedule left out (the kernels' TIR as TensorizeDot builds it, unscheduled) runs on x86 and is
bit for bit equal to the NumPy reference. What that leaves unchecked is what TVM's schedule
primitives and ``__dp4a`` itself do on a device; nvcc checks that the code compiles for the arch."""
import dataclasses
import re

import numpy as np
import pytest

from tvmptq.reference import run_plan

tvm = pytest.importorskip("tvm")
import relay_passes as rp  # noqa: E402
import targets  # noqa: E402
from relay_passes.tensorize import target_isa  # noqa: E402
from targets import cuda  # noqa: E402
from targets import kernels as dot  # noqa: E402
from targets.build import compile_module  # noqa: E402
from targets.kernels.cuda_dp4a import DP4A  # noqa: E402

from test_arm_int8 import _model  # noqa: E402

needs_nvcc = pytest.mark.skipif(cuda.nvcc_path() is None, reason="nvcc not installed")
DP4A_CALL = re.compile(r"__dp4a\(\*\(int\*\)")
KERNEL_DEF = re.compile(r"__global__ void[^;{]*\{")   # a kernel's definition, not its declaration


def test_cuda_targets_pick_dp4a():
    for name in ("sm_80", "sm_87", "sm_90"):
        assert target_isa(name)[0] is DP4A
    assert dot.packed_shape(37, 50, DP4A.lanes) == (37, 13, 1, 4)
    assert (dot.shift_of("uint8", DP4A), dot.shift_of("int8", DP4A)) == (-128, 0)


def _source(prim, arch="sm_87"):
    T = targets.get(arch).tvm_target()
    lib = tvm.compile(tvm.IRModule({"main": prim.with_attr("tirx.is_scheduled", True)}), target=T)
    return cuda.cuda_source(lib)


@pytest.mark.parametrize("M, N, K, x_dtype, out_dtype", [(1, 1000, 1280, "uint8", "int8"), (128, 384, 384, "int8", "int8"),
                                                          (3, 37, 50, "uint8", "uint8")])
def test_dense_kernel_is_one_dp4a_loop_per_thread_with_the_requantize(tmp_path, M, N, K, x_dtype, out_dtype):
    sch = DP4A.schedule_dense(dot.dense_requant(M, N, K, x_dtype, out_dtype, DP4A), DP4A)
    src = _source(sch.mod["main"])
    kernel = src[src.rindex("__global__"):]
    assert len(DP4A_CALL.findall(kernel)) == 1          # the k loop: one __dp4a per 4 bytes
    assert "int compute_local_ptr[1]" in kernel         # the accumulator lives in a register
    assert f"{'uchar' if out_dtype == 'uint8' else 'signed char'}* __restrict__ C_ptr" in kernel
    assert "int64_t" in kernel and ">>" in kernel       # the requantize, in int64, in the same kernel
    if x_dtype == "uint8":                              # the shift stage: its own elementwise kernel
        assert len(KERNEL_DEF.findall(src)) == 2
    if cuda.nvcc_path():
        f = tmp_path / "k.cu"
        f.write_text(src)
        assert cuda.validate(f, "sm_87")["cubin_bytes"] > 0


@needs_nvcc
def test_conv1x1_kernel_compiles_for_two_archs(tmp_path):
    sch = DP4A.schedule_conv1x1(dot.conv1x1_requant(1, 196, 112, 672, "uint8", "uint8", DP4A), DP4A)
    src = _source(sch.mod["main"], "sm_90")
    assert len(DP4A_CALL.findall(src)) == 1
    f = tmp_path / "k.cu"
    f.write_text(src)
    for arch in ("sm_87", "sm_90"):
        assert cuda.validate(f, arch)["ok"]


@pytest.mark.parametrize("symmetric", [False, True], ids=["uint8-asym", "int8-sym"])
@pytest.mark.parametrize("kind", ["convnet", "linears"])
def test_dp4a_program_arithmetic_is_bit_exact_without_the_gpu_schedule(kind, symmetric):
    x, plan, base, batch = _model(kind, symmetric)
    t = targets.get("sm_87")

    def unscheduled(func, isa, *_):
        return tvm.s_tir.Schedule(func)
    plain = dataclasses.replace(DP4A, schedule_dense=unscheduled, schedule_conv1x1=unscheduled)
    tensorize = rp.TensorizeDot(t, plan, warn=False, isas=(plain,))
    mod = tensorize(base)
    done = [r for r in tensorize.report if r.tensorized]
    assert len(done) == 2 and all(r.kernel.startswith("dp4a_") for r in done)
    cpu = compile_module(mod, targets.get("x86-avx2").tvm_target())
    vm = tvm.relax.VirtualMachine(cpu, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x[:batch], np.float32)))
    got = got if hasattr(got, "numpy") else got[0]
    assert np.array_equal(got.numpy(), run_plan(plan, x[:batch]))


@needs_nvcc
def test_tensorized_model_builds_for_cuda_and_nvcc_accepts_it(tmp_path):
    """The whole lowered program for sm_87: the linears run in dp4a kernels (DLight schedules the
    rest), and nvcc compiles the source."""
    _, plan, base, _ = _model("linears", False)
    t = targets.get("sm_87")
    tensorize = rp.TensorizeDot(t, plan, warn=False)
    mod = tensorize(base)
    assert sum(r.tensorized for r in tensorize.report) == 2
    src = cuda.cuda_source(compile_module(mod, t.tvm_target()))
    assert len(DP4A_CALL.findall(src)) == 2
    f = tmp_path / "model.cu"
    f.write_text(src)
    assert cuda.validate(f, "sm_87")["ok"]

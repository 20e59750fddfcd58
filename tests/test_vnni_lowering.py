"""TensorizeDenseVNNI: quantized linear layers lowered to one tensorized ``vpdpbusd`` kernel each,
with the requantize in the kernel's epilogue, bit for bit equal to the NumPy reference.

Models: the digits ResNet at W8A8 and W4A4 (its final linear layer; its 3x3 and strided 1x1 convs
stay as they are and are reported), a small conv model (1x1 convs tensorized, depthwise, strided and
3x3 convs reported), and a small synthetic model of two linears on [B, T, K] inputs with awkward N and
K (K=50, N=37: N % 16 != 0, K % 4 != 0), with uint8 (asymmetric) and int8 (symmetric)
activations, with and without bias. A hand-built Relax function covers 3-D matmuls (leading dims
flattened by the pass). Tests that run a kernel need the ``avx512_vnni`` cpuinfo flag; the
pass-only and build-only tests (reports, non-VNNI targets, vpdpbusd in the exported library,
the default pipeline leaving the kernel alone) run on any x86 host.
"""
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tvmptq
from tvmptq.reference import run_plan
from tvmptq.zoo import from_module

tvm = pytest.importorskip("tvm")
from tvm_ffi import structural_equal  # noqa: E402

import relay_passes as rp  # noqa: E402  (needs tvm)
from targets.build import compile_integer  # noqa: E402
from relay_passes.tensorize import KERNEL_PREFIX, KERNEL_PREFIXES  # noqa: E402
from targets.kernels import x86_vnni as xi  # noqa: E402

HAS_VNNI = xi.host_has_avx512_vnni()
needs_vnni = pytest.mark.skipif(not HAS_VNNI, reason="host CPU lacks avx512_vnni (no 'avx512_vnni' in /proc/cpuinfo "
                                                     "flags): the tensorized vpdpbusd kernels cannot run here")
RUN_TARGET = "x86-host"          # registry target: this CPU (vnni + avx512 on a VNNI host)
BUILD_TARGET = "x86-avx512-vnni"  # registry target with the vnni capability, buildable on any x86 host
BATCH = 8


def _quiet(pass_, mod):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = pass_(mod)
    return out, [str(w.message) for w in caught]


def _vnni_kernels(mod):
    return {gv.name_hint: f for gv, f in mod.functions_items() if gv.name_hint.startswith(KERNEL_PREFIXES)}


# --- the kernel alone: full ranges, per-channel everything ------------------------------------------
@needs_vnni
@pytest.mark.parametrize("x_dtype,out_dtype", [("uint8", "uint8"), ("int8", "int8"), ("int8", "uint8")])
def test_requant_kernel_bit_exact_at_the_extremes(x_dtype, out_dtype):
    M, N, K = 7, 40, 66  # M prime (one-row tiles), N % 16 != 0, K % 4 != 0
    rng = np.random.default_rng(11)
    lo_x, hi_x = (0, 255) if x_dtype == "uint8" else (-128, 127)
    x = rng.integers(lo_x, hi_x + 1, (M, K)).astype(x_dtype)
    x[0], x[-1, K // 2:] = lo_x, hi_x
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    w[0], w[-1], w[1, ::2] = -127, 127, -127
    lo_o, hi_o = (0, 255) if out_dtype == "uint8" else (-128, 127)
    bias = rng.integers(-2 ** 20, 2 ** 20, N)
    mult = rng.integers(2 ** 30, 2 ** 31 + 1, N)
    mult[:2] = 2 ** 31, 1
    shift = rng.integers(14, 40, N)
    rnd = np.left_shift(np.int64(1), shift - 1)
    zp = rng.integers(lo_o, hi_o + 1, N)
    lo, hi = lo_o + rng.integers(0, 4, N), hi_o - rng.integers(0, 4, N)
    acc = x.astype(np.int64) @ w.astype(np.int64).T
    want = np.clip((((acc + bias) * mult + rnd) >> shift) + zp, lo, hi)
    assert (want == lo).any() and (want == hi).any() and ((want > lo) & (want < hi)).any()
    corr = xi.shift_correction(w).astype(np.int64) if x_dtype == "int8" else 0
    qp = np.stack([bias - corr, mult, rnd, shift, zp, lo, hi]).astype(np.int64)
    assert len(qp) == len(xi.REQUANT_ROWS)
    sch = xi.schedule_dense_vnni(xi.dense_requant_vnni(M, N, K, x_dtype, out_dtype))
    f = tvm.compile(sch.mod, target=tvm.target.Target(xi.DEFAULT_TARGET)).jit()
    out = tvm.runtime.tensor(np.zeros((M, N), out_dtype))
    f["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(xi.pack_dense_weight(w)), tvm.runtime.tensor(qp), out)
    assert np.array_equal(out.numpy(), want.astype(out_dtype))


# --- synthetic: two linears on [B, T, K] ----------------------------------------------------------
class TwoLinears(nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.a, self.b = nn.Linear(50, 37, bias=bias), nn.Linear(37, 20)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.fixture(scope="module", params=[(False, True), (True, True), (True, False)],
                ids=["uint8-asym", "int8-sym", "int8-sym-nobias"])
def synthetic(request):
    symmetric, bias = request.param
    torch.manual_seed(3)
    x = (torch.randn(20, 6, 50) + 0.3).numpy()
    model = from_module(TwoLinears(bias).eval(), (torch.from_numpy(x[:1]),))
    qm = tvmptq.quantize(model, (x[:8],), tvmptq.make_config(8, 8, "minmax", symmetric=symmetric), progress=False)
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(4)))
    base = rp.lowering_passes(qm.plan)(imported)
    tensorize = rp.TensorizeDenseVNNI(RUN_TARGET if HAS_VNNI else BUILD_TARGET, qm.plan)
    mod, caught = _quiet(tensorize, base)
    return dict(x=x[8:], plan=qm.plan, base=base, mod=mod, report=tensorize.report, warnings=caught,
                act="int8" if symmetric else "uint8")


def test_synthetic_every_linear_is_one_kernel(synthetic):
    mod, base, report = synthetic["mod"], synthetic["base"], synthetic["report"]
    assert [(r.layer, r.tensorized, r.shape) for r in report] == [("linear", True, (24, 37, 50)),
                                                                  ("linear_1", True, (24, 20, 37))]
    assert not synthetic["warnings"]  # nothing left behind, so nothing to warn about
    assert rp.tensorize_report(mod) == [str(r) for r in report]
    kernels = _vnni_kernels(mod)
    assert sorted(kernels) == sorted(r.kernel for r in report)
    act = synthetic["act"]
    assert all(f"_{act[0]}8_" in name for name in kernels)
    counts, before = rp.op_counts(mod), rp.op_counts(base)
    assert before["right_shift -> int64"] == 2 and before["matmul -> int32"] == 2
    # no standalone requantize (nor matmul) left: one call_tir per linear, data movement, the boundary
    assert counts == {f"call_tir -> {act}": 2, f"reshape -> {act}": 4, f"quantize -> {act}": 1,
                      "dequantize -> float32": 1}
    assert not rp.float_ops(mod)
    for f in kernels.values():
        assert f.attrs["tirx.is_scheduled"] and int(f.attrs["op_pattern"]) == 8  # kOpaque: never fused
        assert "vpdpbusd" in f.script()


@needs_vnni
def test_synthetic_equals_reference(synthetic):
    got = compile_integer(synthetic["mod"], RUN_TARGET)(synthetic["x"])
    assert np.array_equal(got, run_plan(synthetic["plan"], synthetic["x"]))


def test_default_pipeline_keeps_the_kernel_schedule(synthetic):
    """Legalization and fusion (the CPU default pipeline) leave the scheduled kernel as it is and
    add no requantize kernel: the only PrimFuncs with a shift are the VNNI kernels."""
    from tvm.relax.backend.cpu_generic import legalize_passes
    mod = synthetic["mod"]
    target = tvm.target.Target(xi.DEFAULT_TARGET)
    with target:
        lowered = tvm.transform.Sequential(legalize_passes(target))(mod)
    prims = {gv.name_hint: f for gv, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    for name, f in _vnni_kernels(mod).items():
        assert structural_equal(prims[name].body, f.body)
    assert [n for n, f in prims.items() if ">>" in f.script() and not n.startswith(KERNEL_PREFIX)] == []


def test_exported_library_has_vpdpbusd(synthetic, tmp_path):
    ex = tvm.compile(synthetic["mod"], target=tvm.target.Target(xi.DEFAULT_TARGET))
    so = tmp_path / "vnni_linears.so"
    ex.export_library(str(so))
    if shutil.which("objdump") is None:
        pytest.skip("objdump not installed")
    dis = subprocess.run(["objdump", "-d", str(so)], capture_output=True, text=True, check=True).stdout
    assert dis.count("vpdpbusd") >= 2


# --- 3-D matmul (leading dims) built by hand with the lowering's requantize -----------------------
@needs_vnni
@pytest.mark.parametrize("act", ["uint8", "int8"])
def test_leading_dims_are_flattened(act):
    from relay_passes.integer_ops import Grid, requantize
    from tvm import relax
    from tvm.relax import op as R
    from tvmptq.quant.fixedpoint import quantize_multiplier
    rng = np.random.default_rng(5)
    B, T, K, N = 2, 6, 50, 37
    lo, hi = (0, 255) if act == "uint8" else (-128, 127)
    x = rng.integers(lo, hi + 1, (B, T, K)).astype(act)
    x[0, 0], x[-1, -1] = lo, hi
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    bias = rng.integers(-20000, 20000, N)
    m, k = quantize_multiplier(rng.uniform(1e-4, 2e-4, N))
    out = Grid(np.float32(1), 7, 0, 255, "uint8")
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType([B, T, K], act))
    with bb.function("main", [xv]):
        with bb.dataflow():
            acc = bb.emit(R.matmul(xv, relax.const(np.ascontiguousarray(w.T), "int8"), out_dtype="int32"))
            y = requantize(bb, acc, m, k, out, (3, 250), axis=2, bias=bias, acc_bound=255 * 127 * K)
            gv = bb.emit_output(y)
        bb.emit_func_output(gv)
    mod = bb.get()
    tensorize = rp.TensorizeDenseVNNI(RUN_TARGET)
    new = tensorize(mod)
    assert [(r.tensorized, r.shape) for r in tensorize.report] == [(True, (B * T, N, K))]
    counts = rp.op_counts(new)
    assert counts["call_tir -> uint8"] == 1 and counts["matmul -> int32"] == 0 and counts["right_shift -> int64"] == 0
    acc64 = x.astype(np.int64) @ w.astype(np.int64).T + bias
    want = np.clip(((acc64 * m + (1 << (k - 1))) >> k) + 7, 3, 250).astype(np.uint8)
    got = compile_integer(new, RUN_TARGET)(x)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert np.array_equal(compile_integer(mod)(x), want)  # the untensorized module agrees


# --- digits ResNet: the final linear layer ----------------------------------------------------------
@pytest.fixture(scope="module")
def digits(digits_relax):
    assert int(digits_relax[4]["main"].params[0].ty.shape[0]) == BATCH  # the shared import's static batch
    return digits_relax


@pytest.mark.parametrize("w,a", [(8, 8), (4, 4)])
def test_digits_every_layer_is_a_kernel(digits, w, a):
    """3x3 and strided 1x1 convs as im2col + the dense kernel (channels last), the linear as a dense."""
    model, graph, calib, x, imported = digits
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(w, a, "minmax" if w == 8 else "mse"), graph=graph,
                         progress=False)
    target = RUN_TARGET if HAS_VNNI else BUILD_TARGET
    mod, caught = _quiet(lambda m: rp.lowering_passes(qm.plan, target=target)(m), imported)
    assert not [c for c in caught if "tensorized" in c]  # nothing left to warn about
    report = rp.tensorize_report(mod)
    assert len(report) == 10 and all(": tensorized (" in r for r in report) and report[-1].startswith("linear")
    assert sum("vnni_conv_im2col_requant" in r for r in report) >= 7  # the 3x3 and the strided convs
    base = rp.lowering_passes(qm.plan)(imported)
    before, after = rp.op_counts(base), rp.op_counts(mod)
    assert after["matmul -> int32"] == 0 and before["matmul -> int32"] == 1
    assert after["nn.conv2d -> int32"] == 0 and before["nn.conv2d -> int32"] == 9
    assert before["right_shift -> int64"] - after["right_shift -> int64"] == 10  # every requantize went in a kernel
    if HAS_VNNI:
        got = compile_integer(mod, RUN_TARGET)(x)
        assert np.array_equal(got, run_plan(qm.plan, x))


# --- targets without VNNI, and chains in another form: nothing changes, and it is said -------------
@pytest.mark.parametrize("target,why", [("x86-avx2", "lacks the 'vnni' capability"),
                                        ("cortex-a72", "lacks the 'vnni' capability"),
                                        ("llvm", "not a registry target")])
def test_without_vnni_nothing_changes_and_layers_are_named(synthetic, target, why):
    base = synthetic["base"]
    tensorize = rp.TensorizeDenseVNNI(target, synthetic["plan"])
    mod, caught = _quiet(tensorize, base)
    assert structural_equal(mod["main"], base["main"]) and len(mod.functions_items()) == 1
    assert len(caught) == 1 and "0 of 2 integer kernels tensorized" in caught[0]
    assert f"linear (linear): not tensorized: target {target!r}" in caught[0] and why in caught[0]
    assert "linear_1 (linear)" in caught[0]
    assert [r.tensorized for r in tensorize.report] == [False, False]


def test_compile_integer_without_vnni_target_warns_and_builds(synthetic):
    # no plan here: the layers are named by their Relax bindings
    with pytest.warns(UserWarning, match=r"0 of 2 integer kernels tensorized(.|\n)*\(linear\): not tensorized: "
                                         r"target 'llvm' is not a registry"):
        run = compile_integer(synthetic["base"], "llvm", tensorize=True)
    assert np.array_equal(run(synthetic["x"][:4]), compile_integer(synthetic["base"])(synthetic["x"][:4]))


def test_fixed_point_multiply_chain_is_reported(digits):
    model, graph, calib, _, imported = digits
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, "minmax"), graph=graph, progress=False)
    mod = rp.lowering_passes(qm.plan, requantize="fixed_point_multiply")(imported)
    tensorize = rp.TensorizeDenseVNNI(BUILD_TARGET, qm.plan)
    new, caught = _quiet(tensorize, mod)
    assert "linear (linear): not tensorized: its int32 accumulator is not followed by the int64 fixed-point" \
        in caught[0]
    assert not _vnni_kernels(new)


# --- 1x1 convs (NCHW): conv1x1_requant_vnni -------------------------------------------------------
@needs_vnni
@pytest.mark.parametrize("x_dtype,out_dtype", [("uint8", "uint8"), ("int8", "int8")])
def test_conv1x1_kernel_bit_exact_at_the_extremes(x_dtype, out_dtype):
    B, M, N, K = 2, 49, 40, 30  # 7x7 maps (7-pixel tiles), N % 16 != 0, K % 4 != 0, two images
    rng = np.random.default_rng(12)
    lo_x, hi_x = (0, 255) if x_dtype == "uint8" else (-128, 127)
    x = rng.integers(lo_x, hi_x + 1, (B, K, M)).astype(x_dtype)
    x[0, :, 0], x[1, :, -1] = lo_x, hi_x
    w = rng.integers(-127, 128, (N, K)).astype(np.int8)
    w[0], w[-1] = -127, 127
    lo_o, hi_o = (0, 255) if out_dtype == "uint8" else (-128, 127)
    bias, mult, shift = rng.integers(-2 ** 18, 2 ** 18, N), rng.integers(2 ** 30, 2 ** 31, N), rng.integers(28, 36, N)
    rnd, zp = np.left_shift(np.int64(1), shift - 1), rng.integers(lo_o, hi_o + 1, N)
    acc = np.einsum("bkm,nk->bnm", x.astype(np.int64), w.astype(np.int64))
    c = lambda v: v[None, :, None]  # noqa: E731  per output channel, NCHW
    want = np.clip((((acc + c(bias)) * c(mult) + c(rnd)) >> c(shift)) + c(zp), lo_o, hi_o)
    assert (want == lo_o).any() and (want == hi_o).any() and ((want > lo_o) & (want < hi_o)).any()
    corr = xi.shift_correction(w).astype(np.int64) if x_dtype == "int8" else 0
    qp = np.stack([bias - corr, mult, rnd, shift, zp, np.full(N, lo_o), np.full(N, hi_o)]).astype(np.int64)
    sch = xi.schedule_conv1x1_vnni(xi.conv1x1_requant_vnni(B, M, N, K, x_dtype, out_dtype))
    f = tvm.compile(sch.mod, target=tvm.target.Target(xi.DEFAULT_TARGET)).jit()
    out = tvm.runtime.tensor(np.zeros((B, N, M), out_dtype))
    f["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(xi.pack_dense_weight(w)), tvm.runtime.tensor(qp), out)
    assert np.array_equal(out.numpy(), want.astype(out_dtype))


class ConvNet(nn.Module):
    """1x1 convs (tensorized) around a depthwise 3x3, a strided 1x1 and a 3x3 conv (reported)."""

    def __init__(self):
        super().__init__()
        self.expand, self.dw = nn.Conv2d(6, 30, 1), nn.Conv2d(30, 30, 3, padding=1, groups=30)
        self.project, self.down = nn.Conv2d(30, 37, 1, bias=False), nn.Conv2d(37, 20, 1, stride=2)
        self.full = nn.Conv2d(20, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.expand(x))))
        return self.full(torch.relu(self.down(self.project(x))))


@pytest.fixture(scope="module", params=[False, True], ids=["uint8-asym", "int8-sym"])
def convnet(request):
    torch.manual_seed(4)
    x = (torch.randn(12, 6, 7, 9) + 0.2).numpy()
    model = from_module(ConvNet().eval(), (torch.from_numpy(x[:1]),))
    qm = tvmptq.quantize(model, (x[:6],), tvmptq.make_config(8, 8, "minmax", symmetric=request.param), progress=False)
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(2)))
    base = rp.lowering_passes(qm.plan)(imported)
    tensorize = rp.TensorizeDenseVNNI(RUN_TARGET if HAS_VNNI else BUILD_TARGET, qm.plan)
    mod, caught = _quiet(tensorize, base)
    return dict(x=x[6:], plan=qm.plan, base=base, mod=mod, report=tensorize.report, warnings=caught)


def test_convnet_pointwise_convs_are_kernels_and_the_rest_is_named(convnet):
    report = {r.layer: r for r in convnet["report"]}
    # the strided 1x1 (4 x 5 outputs) and the 3x3 conv run as im2col rows through the same dense kernel
    assert [(n, r.tensorized, r.shape) for n, r in report.items() if r.tensorized] == [
        ("conv2d", True, (2 * 63, 30, 6)), ("conv2d_2", True, (2 * 63, 37, 30)), ("conv2d_3", True, (2 * 20, 20, 37)),
        ("conv2d_4", True, (2 * 20, 8, 9 * 20))]
    # the depthwise conv pads implicitly (p1), so it gets the hand-scheduled SIMD kernel of
    # targets.kernels.depthwise, not its dot-product one (targets.kernels.depthwise.dot_reason)
    dw = report["conv2d_1"]
    assert not dw.tensorized and "depthwise" in dw.reason and dw.shape == (2 * 63, 30, 9)
    assert dw.kernel.startswith("dw_requant_b2_") and dw.kernel.endswith("_30x7x9_k3x3_s1x1_p1_1_1_1")
    assert len(convnet["warnings"]) == 1 and "4 of 5 integer kernels tensorized" in convnet["warnings"][0]
    kernels = _vnni_kernels(convnet["mod"])
    assert sorted(kernels) == sorted(r.kernel for r in report.values() if r.tensorized)
    assert sorted(n.split("_nhwc")[0] for n in kernels) == ["vnni_conv1x1_requant_b2"] * 2 + [
        "vnni_conv_im2col_requant_b2"] * 2
    for f in kernels.values():
        assert "vpdpbusd" in f.script() and int(f.attrs["op_pattern"]) == 8
    before, after = rp.op_counts(convnet["base"]), rp.op_counts(convnet["mod"])
    assert before["nn.conv2d -> int32"] == 5 and after["nn.conv2d -> int32"] == 0
    assert before["right_shift -> int64"] - after["right_shift -> int64"] == 5  # their requantize went with them


@needs_vnni
def test_convnet_equals_reference(convnet):
    got = compile_integer(convnet["mod"], RUN_TARGET)(convnet["x"])
    assert np.array_equal(got, run_plan(convnet["plan"], convnet["x"]))


def test_tuning_leaves_the_kernels_alone(synthetic):
    """MetaSchedule never gets a hand-scheduled kernel as a task (it would fail to count its flops)."""
    from targets.tune import tuning_tasks
    names = [t.task_name for t in tuning_tasks(synthetic["mod"], tvm.target.Target(xi.DEFAULT_TARGET))]
    assert names and not any(n.startswith(KERNEL_PREFIXES) for n in names)
    assert not any(n.startswith("reshape") for n in names)  # views at run time, never worth a trial
    base = [t.task_name for t in tuning_tasks(synthetic["base"], tvm.target.Target(xi.DEFAULT_TARGET))]
    assert any("matmul" in n for n in base)  # the untensorized program's linears are tasks

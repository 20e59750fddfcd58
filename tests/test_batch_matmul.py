"""targets/kernels/batch_matmul.py: attention's activation x activation matmuls on VNNI, with the
run-time packing of the second operand, the exact zero-point correction and the requantize epilogue,
against an independent NumPy integer reference bit for bit; and the rewrite of a tiny attention
model's QK^T and P V into these kernels (compiled == NumPy reference of the plan)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm

import targets
from targets.kernels import batch_matmul as bm
from targets.kernels import hi32_rows, x86_vnni as xi

needs_vnni = pytest.mark.skipif(not xi.host_has_avx512_vnni(), reason="host CPU lacks avx512_vnni")


def reference(a, b, za, zb, mult, shift, zp, lo, hi, b_layout):
    """The plan's matmul layer in NumPy int64: requant(sum_k (a - za)(b - zb))."""
    a = a.astype(np.int64) - za
    b = b.astype(np.int64) - zb
    if b_layout == "nk":
        b = b.transpose(0, 2, 1)
    acc = np.einsum("bmk,bkn->bmn", a, b)
    return np.clip(((acc * mult + (1 << (shift - 1))) >> shift) + zp, lo, hi)


def _run(spec, a, b, qp):
    func = bm.build(spec, xi.VNNI)
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                     target=targets.get("x86-host").tvm_target())
    out = tvm.runtime.tensor(np.zeros((spec.batch, spec.M, spec.N), spec.out_dtype))
    ex["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), tvm.runtime.tensor(qp), out)
    return out.numpy()


CASES = [  # batch, M, N, K, a dtype, b dtype, za, zb, b layout, out dtype
    (3, 12, 12, 16, "uint8", "uint8", 138, 137, "nk", "uint8"),   # QK^T, asymmetric, T not a multiple of 16
    (2, 12, 16, 12, "uint8", "uint8", 0, 106, "kn", "uint8"),     # P V: softmax u8 (z=0) x asymmetric V
    (2, 7, 21, 10, "int8", "int8", 0, 0, "nk", "int8"),           # symmetric int8 x int8, K % 4 != 0
    (4, 16, 32, 32, "int8", "uint8", -5, 130, "kn", "uint8"),     # mixed signs, nonzero zero points
    (1, 5, 3, 7, "uint8", "int8", 255, -128, "nk", "int8"),       # extreme zero points, tiny odd shapes
]


@needs_vnni
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[4][0]}8{c[5][0]}8_{c[8]}_{c[0]}x{c[1]}x{c[2]}x{c[3]}")
@pytest.mark.parametrize("hi32", [False, True])
def test_kernel_equals_numpy_reference(case, hi32):
    Bt, M, N, K, adt, bdt, za, zb, layout, odt = case
    rng = np.random.default_rng(hash(case) % 2**32)
    ia, ib = np.iinfo(adt), np.iinfo(bdt)
    a = rng.integers(ia.min, ia.max + 1, (Bt, M, K)).astype(adt)
    b = rng.integers(ib.min, ib.max + 1, (Bt, N, K) if layout == "nk" else (Bt, K, N)).astype(bdt)
    bound = K * max(ia.max - za, za - ia.min) * max(ib.max - zb, zb - ib.min)
    # a multiplier and output zero point that map the accumulator's spread onto the output grid
    acc = reference(a, b, za, zb, 1, 1, 0, -2**62, 2**62, layout) * 2  # (2 acc + 1) >> 1 == acc
    shift, info = 38, np.iinfo(odt)
    mult = int((1 << shift) * 50 / max(acc.std(), 1))
    zp = int(np.clip((info.min + info.max) // 2 - acc.mean() * mult / (1 << shift), info.min, info.max))
    qp = np.array([[0], [mult], [1 << (shift - 1)], [shift], [zp], [info.min], [info.max]], np.int64)
    want = reference(a, b, za, zb, mult, shift, zp, info.min, info.max, layout)
    assert 0.2 < np.mean((want > info.min) & (want < info.max))
    if hi32:
        qp = hi32_rows(qp, bound)
        assert qp is not None
    spec = bm.BatchMatmulSpec(Bt, M, N, K, adt, bdt, odt, za, zb, layout, hi32=hi32)
    got = _run(spec, a, b, qp)
    assert got.dtype == np.dtype(odt)
    assert np.array_equal(got, want), np.abs(got.astype(np.int64) - want).max()


def test_kernel_is_tensorized_and_refuses_what_it_cannot_take():
    spec = bm.BatchMatmulSpec(4, 64, 64, 64, "uint8", "uint8", "uint8", 138, 137, "nk")
    script = bm.build(spec, xi.VNNI).script()
    assert "vpdpbusd" in script and "T.parallel" in script
    assert all(f'sblock("{b}")' in script for b in ("B_p", "rs", "cs", "C"))
    sym = bm.build(bm.BatchMatmulSpec(2, 12, 12, 16, "uint8", "int8", "uint8", 0, 0, "kn"), xi.VNNI).script()
    assert '"rs"' not in sym and '"cs"' not in sym and '"A_s"' not in sym  # zero terms are not computed
    from targets.kernels.arm_i8mm import SMMLA
    with pytest.raises(ValueError, match="own"):
        bm.batch_matmul_requant(spec, SMMLA)
    with pytest.raises(ValueError, match="depth"):
        bm.batch_matmul_requant(bm.BatchMatmulSpec(1, 4, 4, bm.MAX_DEPTH + 4, "uint8", "int8", "uint8"), xi.VNNI)
    with pytest.raises(ValueError, match="int16"):
        bm.batch_matmul_requant(bm.BatchMatmulSpec(1, 4, 4, 8, "int16", "int8", "uint8"), xi.VNNI)


DIM, HEADS, SEQ = 32, 2, 12  # T = 12: not a multiple of 16 (padded lanes) nor of the row tile


class Attention(torch.nn.Module):
    """A BERT self-attention block: q/k/v/o linears, SDPA with an additive padding mask."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(DIM, DIM) for _ in range(4))

    def _heads(self, x):
        b, t, c = x.shape
        return x.view(b, t, HEADS, c // HEADS).transpose(1, 2)

    def forward(self, x, mask):
        m = (1.0 - mask[:, None, None, :]) * -1e4
        a = F.scaled_dot_product_attention(self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x)),
                                           attn_mask=m)
        b, _, t, _ = a.shape
        return self.o(a.transpose(1, 2).reshape(b, t, DIM))


def _attention_plan(symmetric: bool):
    """(model, plan, x, mask): the block quantized W8A8 (minmax) on 16 random sentences, every other padded."""
    import tvmptq
    torch.manual_seed(0)
    rs = np.random.RandomState(0)
    x = (rs.randn(16, SEQ, DIM) * 2).astype(np.float32)
    mask = np.ones((16, SEQ), np.float32)
    mask[::2, 7:] = 0
    model = tvmptq.zoo.from_module(Attention().eval(), (torch.from_numpy(x[:2]), torch.from_numpy(mask[:2])))
    plan = tvmptq.quantize(model, (x, mask), tvmptq.make_config(8, 8, "minmax", symmetric=symmetric),
                           progress=False).plan
    return model, plan, x, mask


def _tensorized(model, plan, target, prefix):
    """The lowered block after TensorizeDot for ``target``; asserts both matmuls are ``prefix`` kernels."""
    import relay_passes as rp
    from relay_passes.tensorize import TensorizeDot
    tensorize = TensorizeDot(target, plan, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mod = tensorize(rp.lower(model.build(), model.example_inputs(2), plan))
    matmuls = [r for r in tensorize.report if r.kind == "matmul"]
    assert len(matmuls) == 2 and all(r.tensorized for r in matmuls), [str(r) for r in matmuls]
    assert all(r.kernel.startswith(prefix) for r in matmuls)
    assert sum(r.tensorized for r in tensorize.report) == len(tensorize.report) == 6  # e.g. "vnni 6/6"
    assert "_nk_" in matmuls[0].kernel  # Q K^T reads the keys untransposed
    names = [gv.name_hint for gv, _ in mod.functions_items()]
    assert sum(n.startswith(prefix) for n in names) == 2
    assert not any("matmul" in n and not n.startswith(prefix) for n in names)
    return mod


@needs_vnni
@pytest.mark.parametrize("symmetric", [False, True], ids=["asymmetric", "symmetric"])
def test_attention_model_compiled_equals_reference(symmetric):
    """QK^T and P V of a tiny attention model run in the batch-matmul kernels (the report says so and
    the module calls them; no other matmul kernel is left) and the compiled program equals the NumPy
    reference of the plan bit for bit."""
    from targets.build import compile_module, run_batched
    from tvm import relax
    from tvmptq.reference.executor import run_plan
    model, plan, x, mask = _attention_plan(symmetric)
    mod = _tensorized(model, plan, "x86-host", "vnni_batch_matmul_requant")
    vm = relax.VirtualMachine(compile_module(mod, targets.get("x86-host").tvm_target()), tvm.cpu())
    got = run_batched(vm["main"], (x, mask), 2, ["float32", "float32"], tvm.cpu())
    want = run_plan(plan, x, mask)
    assert np.array_equal(got, want), np.abs(got - want).max()


def _arm_missing():
    import shutil
    from targets import qemu
    return "aarch64-linux-gnu-gcc missing (make arm-setup)" if shutil.which("aarch64-linux-gnu-gcc") is None \
        else qemu.missing()


@pytest.mark.skipif(_arm_missing() is not None, reason=str(_arm_missing()))
@pytest.mark.parametrize("target,symmetric", [("cortex-a76", False),
                                              pytest.param("neoverse-v1", True, marks=pytest.mark.slow)])
def test_attention_model_on_arm_sdot_under_qemu(target, symmetric, tmp_path):
    """The same rewrite through the ISA table on Arm: ``sdot`` batch-matmul kernels (also on an i8mm
    core, whose denses run on ``smmla``), cross-compiled, run under qemu-user == NumPy reference."""
    from targets import qemu
    from targets.build import compile_module, export
    from tvmptq.reference.executor import run_plan
    model, plan, x, mask = _attention_plan(symmetric)
    t = targets.get(target)
    mod = _tensorized(model, plan, t, "sdot_batch_matmul_requant")
    lib = tmp_path / "model.so"
    export(compile_module(mod, t.tvm_target()), lib, t)
    got = qemu.run_library(lib, [x[:4], mask[:4]], 2)[0]
    assert np.array_equal(got, run_plan(plan, x[:4], mask[:4]))

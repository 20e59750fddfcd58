"""Dense kernels for wide (9..16-bit) activations on x86 VNNI (targets.kernels.x86_vnni.VNNI16,
``vpdpwssd``; int16 outputs from the ``vpdpbusd`` kernel): bit-exact against an independent NumPy
integer reference (an int64 matmul of the unpacked int8 weight, then the int64 requantize written out
here), over the int16 range's ends, N and K not multiples of the lane/pair widths, int64 and high-half
epilogues. Kernels run only on a host with avx512_vnni; the build and assembly checks run anywhere."""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from targets.kernels import dense as dot, hi32_rows, x86_vnni as xi  # noqa: E402

needs_vnni = pytest.mark.skipif(not xi.host_has_avx512_vnni(), reason="host CPU lacks avx512_vnni: "
                                "the vpdpwssd / vpdpbusd kernels cannot run here")
TARGET = tvm.target.Target(xi.DEFAULT_TARGET)


def _reference(x, w, bias, mult, shift, zp, lo, hi):
    """int64: clip(((x . w^T + bias) * mult + 2^(shift-1)) >> shift + zp, lo, hi)."""
    acc = x.astype(np.int64) @ w.astype(np.int64).T
    return np.clip((((acc + bias) * mult + (1 << (shift - 1))) >> shift) + zp, lo, hi)


def _case(M, N, K, x_dtype, out_dtype, seed, x_range=None):
    """Random inputs with the extremes forced into whole rows, and requantize numbers that spread the
    accumulators over the output grid (most outputs inside it)."""
    rng = np.random.default_rng(seed)
    lo, hi = x_range or (int(np.iinfo(x_dtype).min), int(np.iinfo(x_dtype).max))
    x = rng.integers(lo, hi + 1, (M, K)).astype(x_dtype)
    x[0], x[-1, : K // 2] = lo, hi
    w = rng.integers(-128, 128, (N, K)).astype(np.int8)
    w[0], w[-1, ::2] = -128, 127
    acc = x.astype(np.int64) @ w.astype(np.int64).T
    info = np.iinfo(out_dtype)
    olo, ohi = (0, 4095) if out_dtype == "int16" else (int(info.min), int(info.max))  # a 12-bit grid in int16
    ratio = (ohi - olo) / 8 / max(acc.std(), 1)   # output steps per accumulator step
    shift = max(s for s in range(33, 63) if ratio * 2 ** s < 2 ** 30)  # a multiplier the hi32 epilogue takes
    mult = int((1 << shift) * ratio)
    bias = rng.integers(-1000, 1000, N)
    zp = (olo + ohi) // 2 - int(np.round((acc.mean() + bias.mean()) * mult / (1 << shift)))
    want = _reference(x, w, bias, mult, shift, zp, olo, ohi)
    assert 0.5 < np.mean((want > olo) & (want < ohi)), "the case should mostly land inside the grid"
    qp = np.stack([bias, np.full(N, mult), np.full(N, 1 << (shift - 1)), np.full(N, shift), np.full(N, zp),
                   np.full(N, olo), np.full(N, ohi)]).astype(np.int64)
    return x, w, qp, want, max(abs(lo), abs(hi))


def _run(isa, x, w, qp, out_dtype, hi32):
    M, K = x.shape
    N = w.shape[0]
    kw = {"hi32": True} if hi32 else {}
    ex = tvm.compile(dot.schedule_dense(dot.dense_requant(M, N, K, str(x.dtype), out_dtype, isa, **kw), isa).mod,
                     target=TARGET)
    packed = (isa.pack_weight or dot.pack_weight)(w, isa.lanes)
    y = tvm.runtime.tensor(np.zeros((M, N), out_dtype))
    ex.jit()["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(packed), tvm.runtime.tensor(qp), y)
    return y.numpy(), ex


def test_int16_weight_layout_and_padding():
    w = np.arange(-60, 60).reshape(8, 15).astype(np.int8)   # N = 8 < 16 lanes, K = 15 odd
    p = xi.pack_dense_weight16(w)
    assert p.dtype == np.int16 and p.shape == (1, 8, 16, 2)
    for n in range(8):
        for k in range(15):
            assert p[0, k // 2, n, k % 2] == w[n, k]
    assert not p[0, 7, :, 1].any() and not p[0, :, 8:].any()  # the padded k and n are zeros
    assert xi.VNNI.int16_isa is xi.VNNI16 and xi.VNNI16.k_pack == 2
    from targets.kernels import isas
    assert xi.VNNI16 not in isas()  # never chosen for a target by itself


def test_int16_kernel_is_tensorized_on_vpdpwssd():
    func = dot.dense_requant(4, 40, 31, "int16", "uint8", xi.VNNI16)
    sch = dot.schedule_dense(func, xi.VNNI16)
    assert "vpdpwssd" in sch.mod.script() and "X_s" in sch.mod.script()  # K = 31: a zero-padding stage
    asm = tvm.compile(sch.mod, target=TARGET).mod.inspect_source("asm")
    assert "vpdpwssd" in asm
    with pytest.raises(ValueError, match="int16"):
        dot.dense_requant(4, 40, 32, "uint8", "uint8", xi.VNNI16)


@needs_vnni
@pytest.mark.parametrize("M,N,K", [(1, 16, 64), (8, 40, 33), (7, 100, 384), (16, 64, 130)])
@pytest.mark.parametrize("out_dtype", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("hi32", [False, True])
def test_int16_input_kernel_equals_numpy(M, N, K, out_dtype, hi32):
    x, w, qp, want, x_max = _case(M, N, K, "int16", out_dtype, M * 1000 + N * 10 + K)
    if hi32:
        qp = hi32_rows(qp, x_max * np.abs(w.astype(np.int64)).sum(1))
        assert qp is not None
    got, _ = _run(xi.VNNI16, x, w, qp, out_dtype, hi32)
    assert got.dtype == np.dtype(out_dtype)
    assert np.array_equal(got, want), np.abs(got.astype(np.int64) - want).max()


@needs_vnni
def test_int16_extreme_products_do_not_saturate():
    # -32768 x -128 summed over pairs: vpdpwssds (the saturating form) or vpmaddwd alone would clip
    M, N, K = 4, 32, 256
    x = np.full((M, K), -32768, np.int16)
    x[1] = 32767
    w = np.full((N, K), -128, np.int8)
    w[N // 2:] = 127
    acc = x.astype(np.int64) @ w.astype(np.int64).T
    assert np.abs(acc).max() >= 2 ** 30
    qp = np.stack([np.zeros(N), np.ones(N), np.full(N, 1 << 19), np.full(N, 20), np.zeros(N),
                   np.full(N, -2 ** 31), np.full(N, 2 ** 31 - 1)]).astype(np.int64)
    got, _ = _run(xi.VNNI16, x, w, qp, "int16", False)   # (acc + 2^19) >> 20, then int16
    assert np.array_equal(got, np.clip((acc + (1 << 19)) >> 20, -2 ** 31, 2 ** 31 - 1).astype(np.int16))


@needs_vnni
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("hi32", [False, True])
def test_8bit_input_int16_output_stays_on_vpdpbusd(x_dtype, hi32):
    M, N, K = 8, 40, 66
    x, w, qp, want, _ = _case(M, N, K, x_dtype, "int16", 7 + hi32)
    qp[0] -= dot.shift_of(x_dtype, xi.VNNI) * w.astype(np.int64).sum(1)  # the +128 shift of int8 inputs
    if hi32:
        qp = hi32_rows(qp, 255 * np.abs(w.astype(np.int64)).sum(1))
        assert qp is not None
    got, ex = _run(xi.VNNI, x, w, qp, "int16", hi32)
    assert np.array_equal(got, want), np.abs(got.astype(np.int64) - want).max()
    assert "vpdpbusd" in ex.mod.inspect_source("asm")


# ------------------------------------------------------------------------------ a transformer block
WIDE_BLOCK = {  # res_ln_proj12 (MiniLM's accurate preset) and every group a linear touches at 12 bits
    "res_ln_proj12": {"residual": 12, "ln_out": 12, "proj_out": 12},
    "linears12": {"residual": 12, "ln_out": 12, "proj_out": 12, "ffn_act": 12, "ffn_pre": 12, "qkv": 12},
}


@pytest.fixture(scope="module")
def attention_block():
    from tests.test_wide_lowering import AttentionBlock, _captured
    return _captured(AttentionBlock, (4, 8, 16), 1)


@pytest.mark.parametrize("name", sorted(WIDE_BLOCK))
def test_wide_block_linears_stay_tensorized_and_bit_exact(attention_block, name):
    """A one-layer post-LN encoder with 12-bit tensors: every linear stays a dot-product kernel
    (int16 inputs on vpdpwssd, int16 outputs as a wider store), and the compiled tensorized module
    equals the simulation and the NumPy reference executor."""
    import relay_passes as rp
    import tvmptq
    from targets.build import compile_integer
    from tests.test_wide_lowering import VNNI_TARGET
    from tvmptq.reference.executor import run_plan
    model, x, imported = attention_block
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8, "minmax", tensor_bits=WIDE_BLOCK[name]),
                         progress=False)
    wide = {n for n, t in qm.plan.tensors.items() if t.bits > 8}
    assert wide and all(255 < qm.plan.tensors[n].qmax - qm.plan.tensors[n].qmin <= 4095 for n in wide)  # 12-bit
    tensorize = rp.TensorizeDot(VNNI_TARGET, qm.plan, warn=False)
    mod = tensorize(rp.lowering_passes(qm.plan)(imported))
    linears = {lp.name: lp for lp in qm.plan.layers if lp.kind == "linear"}
    recs = {r.layer: r for r in tensorize.report if r.kind == "linear"}
    assert sorted(recs) == sorted(linears) and len(recs) == 6
    assert all(r.tensorized for r in recs.values()), [str(r) for r in recs.values() if not r.tensorized]
    wide_in = {n for n, lp in linears.items() if set(lp.inputs) & wide}
    wide_out = {n for n, lp in linears.items() if lp.output in wide}
    assert wide_in and wide_out
    dtypes = {n: r.kernel.split("_")[-3:-1] for n, r in recs.items()}  # <isa>_dense_requant_<in>_<out>_<MxNxK>
    assert {n for n, r in recs.items() if r.kernel.startswith("vnni16_dense_requant")} == wide_in
    assert {n for n, (i, o) in dtypes.items() if i == "i16"} == wide_in
    assert {n for n, (i, o) in dtypes.items() if o == "i16"} == wide_out
    if not xi.host_has_avx512_vnni():
        pytest.skip("host CPU lacks avx512_vnni: the tensorized block cannot run here")
    got = compile_integer(mod, VNNI_TARGET)(x)
    assert np.array_equal(got, qm.runner()(x))
    assert np.array_equal(got, run_plan(qm.plan, x))


def test_bench_speed_and_kernel_report_take_wide_specs():
    """scripts/bench_speed.py --wide (tvmptq/cli_wide.py's parser): a bad spec fails before any work,
    rows are keyed by the specs; scripts/wide_kernel_report.py's section merge keeps other sections."""
    import argparse
    import sys
    from pathlib import Path
    scripts = str(Path(__file__).resolve().parents[1] / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    bench_speed = pytest.importorskip("bench_speed")
    import wide_kernel_report as wkr
    from tvmptq.errors import ConfigError
    with pytest.raises(ConfigError, match="--wide"):
        bench_speed.main(["--models", "minilm_l6", "--wide", "residual"])
    args = argparse.Namespace(wide=["res_ln_proj12", "qkv=12"])
    assert bench_speed._wide_suffix(args, " wide:", "+") == " wide:res_ln_proj12+qkv12"
    assert bench_speed._wide_suffix(argparse.Namespace(wide=None), " wide:", "+") == ""
    assert wkr._family("vnni16_dense_requant_i16_u8_128x384x384") == "vnni16_dense_requant_i16_u8"
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "r.md"
        f.write_text("# t\n\n## a\n\nold a\n\n## b\n\nold b\n")
        f.write_text(wkr.merge_section(f, "## a", ["## a", "", "new a", ""]))
        assert f.read_text() == "# t\n\n## b\n\nold b\n\n## a\n\nnew a\n"


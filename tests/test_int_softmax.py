"""Integer softmax island (QuantConfig.integer_islands=("softmax",), tvmptq/quant/int_softmax.py):
within one output step of the float softmax on random codes (masked rows, all-but-one and all
masked included), the simulation's definition equals the independent NumPy reference, plans keep
it through save/load, bad names are refused, and on a tiny BERT layer simulation == reference ==
compiled Relax bit for bit with no float softmax left."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import tvmptq
from tvmptq.errors import ConfigError, DataError
from tvmptq.quant import int_softmax as isoft
from tvmptq.quant.plan import QuantPlan, TensorQuant
from tvmptq.reference import int_softmax as ref_isoft
from tvmptq.reference.executor import run_plan
from tests.test_user_transformers import BertLayer, _inputs


def _random_case(rng, bits, scale, rows=64, n=128):
    tin = TensorQuant("x", scale, 2 ** (bits - 1), bits, 0, 2 ** bits - 1)
    tout = TensorQuant("p", 1 / 255, 0, 8, 0, 255)
    codes = rng.integers(tin.qmin, tin.qmax + 1, (rows, n)) - tin.zero_point
    mask = np.where(rng.random((rows, n)) < 0.3, -1e4, 0.0)
    mask[0] = 0.0                                       # nothing masked
    mask[1], mask[1, 5] = np.finfo(np.float32).min, 0.0  # all but one masked
    mask[2] = -1e4                                      # all masked (an all-padding sentence)
    return tin, tout, codes, mask


@pytest.mark.parametrize("bits,scale", [(8, 0.05), (8, 0.2), (16, 0.0004)])
def test_integer_softmax_within_one_step_of_float_and_equals_reference(bits, scale):
    rng = np.random.default_rng(bits)
    tin, tout, codes, mask = _random_case(rng, bits, scale)
    params, table = isoft.island_params(tin, tout, (0, 255), codes.shape[1])
    params["dim"] = 1
    assert table.size <= tin.qmax - tin.qmin + 1 and table[0] == 2 ** params["frac_bits"]
    keep = isoft.check_mask(torch.as_tensor(mask), "t")
    got = isoft.softmax_codes(torch.as_tensor(codes), keep, 1, params, torch.as_tensor(table, dtype=torch.int64)).numpy()
    ref = ref_isoft.integer_softmax(codes, ref_isoft.keep_from_mask(mask, "t"), params, table, "t")
    assert np.array_equal(got, ref)
    x = codes * scale + mask
    x[2] = codes[2] * scale                              # all masked: the softmax of the scores
    p = torch.softmax(torch.as_tensor(x, dtype=torch.float64), 1).numpy()
    exact = p / tout.scale
    assert np.abs(got - exact).max() <= 0.5 + 1e-3       # correctly rounded up to the table's error
    assert (got != np.round(exact)).mean() < 0.01
    dropped = (mask <= isoft.MASK_DROP)
    dropped[2] = False
    assert np.all(got[dropped] == 0)                     # masked keys: exactly zero
    assert got[1, 5] == 255 and got[1].sum() == 255       # the one kept key takes everything
    assert np.allclose(got.sum(1), 255, atol=params["row_length"] * 0.5 + 1)


def test_mask_with_additive_bias_is_refused():
    with pytest.raises(DataError, match="neither 0"):
        isoft.check_mask(torch.tensor([0.0, -3.0, -1e4]), "softmax_3")
    with pytest.raises(ValueError, match="other than 0"):
        ref_isoft.keep_from_mask(np.array([0.0, 0.5]), "softmax_3")


def test_bad_island_names_refused():
    with pytest.raises(ConfigError, match="'gelu'"):
        tvmptq.make_config(integer_islands=["softmax", "gelu"])
    with pytest.raises(ConfigError, match="tuple"):
        tvmptq.QuantConfig(integer_islands="softmax")
    from tvmptq import cli_islands
    ns = type("A", (), {"integer_islands": "softmax, layer_norm"})()
    with pytest.raises(ConfigError, match="'layer_norm'"):
        cli_islands.integer_islands(ns)
    ns.integer_islands = "softmax"
    assert cli_islands.integer_islands(ns) == ("softmax",)


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    inp = tuple(_inputs("bert", 16, 0).values())
    model = tvmptq.zoo.from_module(BertLayer(), tuple(torch.from_numpy(v) for v in inp))
    qm = tvmptq.quantize(model, inp, tvmptq.make_config(8, 8, "minmax", integer_islands=("softmax",)), progress=False)
    return model, inp, qm


def test_bert_plan_records_island_simulation_equals_reference_and_round_trips(bert, tmp_path):
    model, inp, qm = bert
    step = next(s for s in qm.plan.program if s.get("integer_island"))
    island = step["integer_island"]
    assert island["mask_step"] and island["input"] in qm.plan.tensors and qm.plan.config["integer_islands"] == ["softmax"]
    assert step["name"] not in qm.plan.float_islands and island["mask_step"] not in qm.plan.float_islands
    sim = qm.runner()(*inp)
    assert np.array_equal(sim, run_plan(qm.plan, *inp))
    loaded = QuantPlan.load(qm.plan.save(tmp_path / "plan.npz"))
    assert loaded.program == qm.plan.program and loaded.config == qm.plan.config
    assert np.array_equal(loaded.constants[island["table"]], qm.plan.constants[island["table"]])
    assert np.array_equal(run_plan(loaded, *inp), sim)
    # the float island plan on the same data: the outputs agree closely (integer softmax is within
    # one output step of the float one)
    flt = tvmptq.quantize(model, inp, tvmptq.make_config(8, 8, "minmax"), progress=False)
    out_f = flt.runner()(*inp)
    assert np.abs(out_f - sim).max() <= 0.05 * np.abs(out_f).max() + 1e-6


tvm = pytest.importorskip("tvm")
import relay_passes as rp  # noqa: E402  (needs tvm)
from targets.build import compile_integer  # noqa: E402
from tests.test_user_transformers import TimmViT  # noqa: E402


def _float_ops(counts):
    return {k: v for k, v in counts.items() if "float" in k or "bool" in k}


@pytest.mark.parametrize("kind", ["bert", "timm"])
def test_compiled_equals_simulation_and_reference_without_float_softmax(bert, kind):
    if kind == "bert":
        model, inp, qm = bert
    else:
        torch.manual_seed(0)
        inp = tuple(_inputs("timm", 16, 0).values())
        model = tvmptq.zoo.from_module(TimmViT(), tuple(torch.from_numpy(v) for v in inp))
        qm = tvmptq.quantize(model, inp, tvmptq.make_config(8, 8, "minmax", integer_islands=("softmax",)),
                             progress=False)
    islands = [s["integer_island"] for s in qm.plan.program if s.get("integer_island")]
    assert islands and bool(islands[0]["mask_step"]) == (kind == "bert")
    imported = rp.Canonicalize()(rp.import_model(model.build(), tuple(torch.from_numpy(v) for v in inp)))
    mod = rp.lowering_passes(qm.plan)(imported)
    counts = rp.op_counts(mod)
    base_plan = tvmptq.quantize(model, inp, tvmptq.make_config(8, 8, "minmax"), progress=False).plan
    base = _float_ops(rp.op_counts(rp.lowering_passes(base_plan)(imported)))
    assert not any("softmax" in k for k in counts)
    want = {k: v for k, v in base.items() if "softmax" not in k}
    want["dequantize -> float32"] -= len(islands)  # the scores no longer leave the integer domain
    if kind == "bert":  # the mask add (float32) is gone, one compare of the mask remains
        want["add -> float32"] -= 1
        want["greater -> bool"] = 1
        want = {k: v for k, v in want.items() if v}
    # the float64 softmax island's casts and the float32 cast after it go with it
    got = {k: v for k, v in _float_ops(counts).items()}
    assert {k: v for k, v in got.items() if "float64" not in k and "astype" not in k} == \
        {k: v for k, v in want.items() if "float64" not in k and "astype" not in k}
    out = compile_integer(mod)(*inp)
    sim = qm.runner()(*inp)
    assert np.array_equal(out, sim)
    assert np.array_equal(out, run_plan(qm.plan, *inp))


def test_integer_softmax_kernel_is_one_scheduled_row_parallel_kernel_and_bit_exact():
    from tvm import relax
    from tvm.relax import op as R

    from relay_passes.int_softmax import lower_softmax
    from relay_passes.integer_ops import Grid, quantize
    from targets.build import compile_module
    from targets.cpu_defaults import schedule_elementwise_kernels
    from targets.tune import prepare
    target = tvm.target.Target("llvm")
    shape = (2, 3, 16, 16)
    tin, tout = TensorQuant("s", 0.08, 128, 8, 0, 255), TensorQuant("p", 1 / 255, 0, 8, 0, 255)
    island, table = isoft.island_params(tin, tout, (0, 255), shape[-1])
    island.update(dim=3, table="t", input_tensor="s")
    plan = type("P", (), {"tensors": {"s": tin, "p": tout}, "constants": {"t": table}})()
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType(shape, "uint8"))
    m = relax.Var("mask", relax.TensorType((2, 1, 1, 16), "float32"))
    with bb.function("main", [q, m]):
        with bb.dataflow():
            x = bb.emit(R.dequantize(q, relax.const(np.float32(0.08), "float32"), relax.const(128, "int32"), axis=-1))
            y = bb.emit(quantize(bb.emit(lower_softmax(bb, x, m, island, plan, "p")), Grid.of(tout)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = rp.CancelQDQ()(bb.get())
    kernels = {gv.name_hint: f for gv, f in schedule_elementwise_kernels(prepare(mod, target), target)[0].functions_items()
               if isinstance(f, tvm.tirx.PrimFunc)}
    kernel = kernels[next(n for n in kernels if "integer_softmax" in n)].script()
    assert "T.parallel" in kernel and "T.vectorized" in kernel and "float" not in kernel
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, shape).astype("uint8")
    mask = np.zeros((2, 1, 1, 16), np.float32)
    mask[0, ..., 5:] = -1e4
    mask[1] = np.finfo(np.float32).min  # a sentence of padding only
    vm = relax.VirtualMachine(compile_module(mod, target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(codes), tvm.runtime.tensor(mask)).numpy()
    want = ref_isoft.integer_softmax(codes.astype(np.int64) - 128, ref_isoft.keep_from_mask(mask, "p"), island, table, "p")
    assert np.array_equal(got, want) and np.all(got[0, ..., 5:] == 0)


@pytest.mark.slow
def test_digits_vit_integer_softmax_compiled_equals_simulation_and_reference():
    """The zoo's digits_vit (timm attention through SDPA, no mask) with integer softmax islands."""
    model = tvmptq.load("digits_vit")
    data = tvmptq.get_set("digits")
    calib, x = tuple(a[:64] for a in data.calibration()), data.evaluation()[0][:16]
    qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, "minmax", integer_islands=("softmax",)), progress=False)
    n_soft = sum(1 for s in qm.plan.program if s["kind"] == "op" and "softmax" in s["op"])
    assert n_soft and sum(1 for s in qm.plan.program if s.get("integer_island")) == n_soft
    mod = rp.lowering_passes(qm.plan)(rp.Canonicalize()(rp.import_model(model.build(), (torch.from_numpy(x),))))
    assert not any("softmax" in k for k in rp.op_counts(mod))
    got = compile_integer(mod)(x)
    assert np.array_equal(got, qm.runner()(x))
    assert np.array_equal(got, run_plan(qm.plan, x))


def test_exports_refuse_integer_island_plans(bert, tmp_path):
    from tvmptq.export.qdq_onnx import export_qdq_onnx
    from tvmptq.export.tflite import export_tflite
    _, _, qm = bert
    with pytest.raises(NotImplementedError, match="integer_islands"):
        export_qdq_onnx(qm.plan, tmp_path / "m.onnx")
    with pytest.raises(NotImplementedError, match="integer_islands"):
        export_tflite(qm.plan)


@pytest.mark.parametrize("kind", ["bert", "timm"])
def test_both_integer_islands_compiled_equals_simulation_and_reference(kind):
    # softmax and LayerNorm integer together (the calibrate.add_integer_islands registry): the
    # lowering runs both passes, no float64 island is left inside the encoder, and the compiled
    # program is bit-exact against the simulation and the NumPy reference.
    torch.manual_seed(0)
    inp = tuple(_inputs(kind, 16, 0).values())
    module = BertLayer() if kind == "bert" else TimmViT()
    model = tvmptq.zoo.from_module(module, tuple(torch.from_numpy(v) for v in inp))
    cfg = tvmptq.make_config(8, 8, "minmax", integer_islands=("softmax", "layernorm"))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a final LayerNorm feeding the float output
        qm = tvmptq.quantize(model, inp, cfg, progress=False)
    assert sorted(qm.plan.config["integer_islands"]) == ["layernorm", "softmax"]
    assert any(s.get("integer_island") for s in qm.plan.program)
    assert any(lp.kind == "layernorm" for lp in qm.plan.layers)
    left = qm.plan.config.get("integer_islands_float", [])
    assert all("layer_norm" in n for n in left)  # every softmax is integer; float LayerNorms named
    imported = rp.Canonicalize()(rp.import_model(model.build(), tuple(torch.from_numpy(v) for v in inp)))
    mod = rp.lowering_passes(qm.plan)(imported)
    assert not any("softmax" in k for k in rp.op_counts(mod))
    out = compile_integer(mod)(*inp)
    sim = qm.runner()(*inp)
    assert np.array_equal(out, sim)
    assert np.array_equal(out, run_plan(qm.plan, *inp))

"""Every integer tensor of the compiled program against the NumPy reference (relay_passes/probes.py,
targets/exact.py): a BERT layer (test_user_transformers.BertLayer: embedding LayerNorm, masked
attention, GELU table, two post-LN LayerNorms) with integer softmax and LayerNorm islands is equal
on all 17 integer values; a difference put into the reference is found where it starts; bad probe
names are refused. The slow test does MiniLM."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import tvmptq

tvm = pytest.importorskip("tvm")
import relay_passes as rp  # noqa: E402  (needs tvm)
from relay_passes.probes import TensorProbes, value_grids  # noqa: E402
from targets.exact import compare_integer_tensors  # noqa: E402
from tests.test_user_transformers import BertLayer, _inputs  # noqa: E402

ISLANDS = ("softmax", "layernorm")


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    inp = tuple(_inputs("bert", 12, 0).values())
    model = tvmptq.zoo.from_module(BertLayer(), tuple(torch.from_numpy(v[:8]) for v in inp))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        qm = tvmptq.quantize(model, inp, tvmptq.make_config(8, 8, "minmax", integer_islands=ISLANDS), progress=False)
    imported = rp.Canonicalize()(rp.import_model(model.build(), tuple(torch.from_numpy(v[:8]) for v in inp)))
    return qm.plan, imported, inp


def test_every_integer_value_bit_exact_with_integer_islands(bert):
    plan, imported, inp = bert
    r = compare_integer_tensors(plan, imported, inp)  # 12 sentences: a full chunk of 8 and a padded one
    names = [d.name for d in r["tensors"]]
    assert not r["skipped"] and sorted(names) == sorted(value_grids(plan)) and len(names) == 17
    kinds = {d.what for d in r["tensors"]}
    assert {"integer softmax", "integer layernorm", "lut", "matmul", "linear", "add", "quantize"} <= kinds
    bad = [d.row() for d in r["tensors"] if not d.equal]
    assert not bad, bad
    assert all(d.elements == 12 * int(np.prod(d.shape)) // 8 for d in r["tensors"])  # padding trimmed
    assert r["outputs"][0]["max_abs"] == 0.0 and r["outputs"][0]["elements"] == 12 * 10
    # the normal lowering has no probes: main returns the model's output alone (a 1-tuple)
    assert len(rp.lowering_passes(plan)(imported)["main"].ret_ty.fields) == 1


def test_a_difference_is_found_where_it_starts(bert):
    plan, imported, inp = bert
    ref = copy.deepcopy(plan)
    lp = ref.layer("linear_4")  # the FFN's first linear: bias off by 40 * 2^10 accumulator units
    lp.arrays["bias"] = lp.arrays["bias"] + np.int32(40 * 2 ** 10)
    r = compare_integer_tensors(plan, imported, tuple(a[:4] for a in inp), reference_plan=ref,
                                names=["linear_3", "linear_4", "gelu"])
    d = {t.name: t for t in r["tensors"]}
    assert d["linear_3"].equal and not d["linear_4"].equal and d["linear_4"].origin
    assert d["linear_4"].max_lsb >= 1 and 0 < d["linear_4"].fraction <= 1
    assert not d["gelu"].equal and not d["gelu"].origin  # it inherits the difference


def test_bad_probe_names_refused(bert):
    plan, _, _ = bert
    with pytest.raises(rp.LoweringError, match="'no_such_value'"):
        TensorProbes(plan, ["linear", "no_such_value"])


@pytest.mark.slow  # MiniLM compile + reference: ~3 min on the shared host
def test_minilm_every_integer_tensor_bit_exact_with_integer_islands():
    model = tvmptq.load("minilm_l6")
    data = tvmptq.get_set("sentences")
    calib = tuple(a[:32] for a in data.calibration())
    x = tuple(a[:2] for a in data.evaluation())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        qm = tvmptq.quantize(model, calib, tvmptq.make_config(8, 8, "mse", integer_islands=ISLANDS), progress=False)
    imported = rp.Canonicalize()(rp.import_model(model.build(), model.example_inputs(2)))
    r = compare_integer_tensors(qm.plan, imported, x, target="x86-host", tensorize=True)
    bad = [d.row() for d in r["tensors"] if not d.equal]
    assert len(r["tensors"]) > 100 and not bad, bad[:3]
    assert {"integer softmax", "integer layernorm"} <= {d.what for d in r["tensors"]}

"""AdaRound / BRECQ / WAPS-Quant: blocks, bounded caches, determinism, exact folding into the
integer program (compiled == simulation == NumPy reference, same Relax op and constant counts)."""
import dataclasses

import numpy as np
import pytest
import torch

import tvmptq
from tvmptq.algorithms.adaround import fit_adaround
from tvmptq.algorithms.brecq import fit_brecq
from tvmptq.algorithms.reconstruction import ReconConfig, refold
from tvmptq.algorithms.train_model import TrainModel, find_blocks
from tvmptq.algorithms.waps import READINGS, WAPSConfig, WAPSWeight, fit_waps
from tvmptq.errors import ConfigError
from tvmptq.eval.sets import torch_runner
from tvmptq.quant.simulate import simulate
from tvmptq.reference import run_plan

FAST = ReconConfig(iters=60, samples=64, batch_size=16)


def _fit(method, graph, plan, calib, cfg=FAST, **waps):
    if method == "adaround":
        return fit_adaround(graph, plan, calib, cfg, progress=False)
    if method == "brecq":
        return fit_brecq(graph, plan, calib, cfg, progress=False)
    return fit_waps(graph, plan, calib, cfg, WAPSConfig(**waps), progress=False)


@pytest.fixture(scope="module")
def fitted(digits_w2a4):
    model, graph, calib, x, qm = digits_w2a4
    return {m: _fit(m, graph, qm.plan, calib, reading="in") for m in ("adaround", "brecq", "waps")}


def test_refold_without_changes_is_the_baseline(digits_w2a4):
    _, graph, _, _, qm = digits_w2a4
    same = refold(graph, qm.plan, {}, {})
    for a, b in zip(qm.plan.layers, same.layers):
        assert a.clip == b.clip
        for k in a.arrays:
            assert np.array_equal(a.arrays[k], b.arrays[k]) and a.arrays[k].dtype == b.arrays[k].dtype, (a.name, k)


def test_blocks_are_residual_blocks(digits_w2a4):
    from tvmptq.algorithms.adaround import adaround_weight
    _, graph, _, _, qm = digits_w2a4
    model = TrainModel(graph, qm.plan, adaround_weight, FAST)
    blocks = find_blocks(model)
    assert [b.kernels for b in blocks] == [["q_conv2d"], ["q_conv2d_1", "q_conv2d_2"],
                                           ["q_conv2d_3", "q_conv2d_4", "q_conv2d_5"],
                                           ["q_conv2d_6", "q_conv2d_7", "q_conv2d_8"], ["q_linear"]]
    assert [b.produced for b in blocks[1:4]] == [["q_add"], ["q_add_1"], ["q_add_2"]]
    layers = find_blocks(model, "layer")
    assert len(layers) == 10 and all(len(b.kernels) == 1 for b in layers)
    assert "q_conv2d" in layers[1].outputs          # the skip value is carried across the cut


@pytest.mark.parametrize("method", ["adaround", "brecq", "waps"])
def test_plan_changes_only_values(fitted, digits_w2a4, method):
    _, graph, _, x, qm = digits_w2a4
    plan, sim = fitted[method]
    assert [lp.name for lp in plan.layers] == [lp.name for lp in qm.plan.layers]
    assert plan.program == qm.plan.program and set(plan.tensors) == set(qm.plan.tensors)
    changed = sum(int((a.arrays["weight"] != b.arrays["weight"]).sum()) for a, b in zip(qm.plan.layers, plan.layers)
                  if "weight" in a.arrays)
    assert changed > 0                               # rounding was learned, not left at nearest
    for a, b in zip(qm.plan.layers, plan.layers):
        assert set(a.arrays) == set(b.arrays)
        for k in a.arrays:
            assert a.arrays[k].shape == b.arrays[k].shape and a.arrays[k].dtype == b.arrays[k].dtype
    assert np.array_equal(torch_runner(sim)(x), run_plan(plan, x))
    fp = torch_runner(graph.gm)(x)
    err = lambda out: float(np.mean((out - fp) ** 2))  # noqa: E731
    assert err(torch_runner(sim)(x)) < err(qm.runner()(x))


@pytest.mark.parametrize("method", ["adaround", "brecq", "waps"])
def test_compiled_is_zero_cost_and_bit_exact(fitted, digits_w2a4, digits_relax, method):
    pytest.importorskip("tvm")
    import relay_passes as rp
    from targets.build import compile_integer
    from tvmptq.algorithms.cost import parameter_count, relax_constants
    _, _, _, x, qm = digits_w2a4
    imported = digits_relax[4]
    plan, sim = fitted[method]
    base_mod, mod = rp.lowering_passes(qm.plan)(imported), rp.lowering_passes(plan)(imported)
    assert rp.op_counts(base_mod) == rp.op_counts(mod)
    assert relax_constants(base_mod) == relax_constants(mod) and parameter_count(base_mod) == parameter_count(mod)
    got = compile_integer(mod)(x)
    assert np.array_equal(got, torch_runner(sim)(x)) and np.array_equal(got, run_plan(plan, x))


def test_waps_in_group_shifts_fold_into_int8_weights():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(6, 16, 3, 3)) * np.r_[np.full(8, 1.0), np.full(8, 0.1)].reshape(1, -1, 1, 1)
    s = np.abs(w).reshape(6, -1).max(1) / 7
    for reading in READINGS:
        mod = WAPSWeight(w, s, 4, WAPSConfig(reading=reading, group_size=8))
        stored, s_fold, attrs = mod.fold()
        real = mod(False).detach().numpy()
        assert np.allclose(stored * s_fold.reshape(-1, 1, 1, 1), real, rtol=1e-6, atol=1e-9)
        assert np.abs(stored).max() <= 127
    mod = WAPSWeight(w, s, 4, WAPSConfig(reading="in", group_size=8))
    t = mod.log2_gamma().detach().numpy()[0, :, 0, 0]
    assert t[:8].max() == 0 and t[8:].max() < 0     # the small-weight group gets a finer grid
    assert mod.fold()[2]["weight_bits"] > 4          # and the stored weights need more bits: said


def test_same_seed_same_bytes_and_bounded_memory(digits_w2a4, tmp_path):
    _, graph, calib, _, qm = digits_w2a4
    cfg = dataclasses.replace(FAST, iters=30)
    a = fit_brecq(graph, qm.plan, calib, cfg, progress=False)[0].save(tmp_path / "a.npz").read_bytes()
    b = fit_brecq(graph, qm.plan, calib, cfg, progress=False)[0].save(tmp_path / "b.npz").read_bytes()
    assert a == b
    budget = 0.05                                    # MB: every cache past a quarter of it spills to disk
    runs = {}
    for n in (32, 128):
        plan, _ = fit_brecq(graph, qm.plan, calib, dataclasses.replace(cfg, samples=n, memory_budget_mb=budget),
                            progress=False)
        blocks = plan.run_info["brecq"]["blocks"]
        assert all(r["resident_bytes"] <= budget * 2 ** 20 / 2 for r in blocks)
        runs[n] = blocks
    assert any(r["spilled"] for r in runs[128])
    assert max(r["cache_mb"] for r in runs[128]) > 3 * max(r["cache_mb"] for r in runs[32])
    spilled = fit_brecq(graph, qm.plan, calib, dataclasses.replace(cfg, memory_budget_mb=budget), progress=False)[0]
    ref = tvmptq.QuantPlan.load(tmp_path / "a.npz")                # spilling changes nothing learned
    assert spilled.tensors == ref.tensors
    for x, y in zip(ref.layers, spilled.layers):
        assert all(np.array_equal(x.arrays[k], y.arrays[k]) for k in x.arrays), x.name


def test_bad_options(digits_w2a4):
    model, graph, calib, _, qm = digits_w2a4
    with pytest.raises(ConfigError, match="unknown method 'foo'"):
        tvmptq.apply_method(qm, calib, "foo")
    with pytest.raises(ConfigError, match="do not compose"):
        tvmptq.apply_method(qm, calib, "cwac+brecq")
    with pytest.raises(ConfigError, match="do not compose"):
        tvmptq.apply_method(qm, calib, "brecq+waps")
    with pytest.raises(ConfigError, match="iters"):
        tvmptq.apply_method(qm, calib, "brecq", {"iters": 0})
    other = dataclasses.replace(qm, plan=dataclasses.replace(qm.plan, model="efficientnet_lite0"))
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        tvmptq.apply_method(other, calib, "brecq")
    with pytest.raises(ValueError):
        fit_waps(graph, qm.plan, calib, FAST, WAPSConfig(reading="diagonal"), progress=False)


def test_cli_methods_and_exit_codes(tmp_path, capsys):
    from tvmptq.cli import main
    base = ["quantize", "digits_resnet", "--calib-samples", "64", "--observer", "mse", "--wbits", "2",
            "--abits", "4", "--report", "0"]
    assert main(base + ["--method", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(base + ["--method", "brecq", "--iters", "0"]) == 2
    assert main(base + ["--method", "qwt+cwac"]) == 2
    plan = tmp_path / "p.npz"
    assert main(base + ["--method", "brecq+cwac", "--iters", "20", "--method-samples", "32", "--out", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "brecq: 5 blocks" in out and "CWAC" in out
    assert tvmptq.QuantPlan.load(plan).config["method"] == "brecq+cwac"
    # a method applied to a saved plan of another model
    assert main(["quantize", "efficientnet_lite0", "--from-plan", str(plan), "--method", "brecq",
                 "--calib", "digits"]) == 2
    assert "made for model 'digits_resnet'" in capsys.readouterr().err


class _MBConvs(torch.nn.Module):
    """Two MBConv-style residual blocks and a head reading the batch size off the input (as
    torch.export writes a ``sym_size`` of it): the scalar lives across the whole program."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(
            torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU6(), torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
            torch.nn.ReLU6(), torch.nn.Conv2d(16, 8, 1)) for _ in range(2))
        self.head = torch.nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        n = x.shape[0]
        x = torch.relu(self.stem(x))
        for block in self.blocks:
            x = x + block(x)
        return self.head(torch.nn.functional.avg_pool2d(x, 2).reshape(n, -1))


def _mbconv_case():
    from tvmptq.zoo import from_module
    torch.manual_seed(3)
    x = torch.randn(24, 3, 16, 16).numpy()
    model = from_module(_MBConvs().eval(), (torch.from_numpy(x[:1]),))
    return x, tvmptq.quantize(model, (x,), tvmptq.make_config(4, 4), progress=False)


def test_blocks_cut_around_batch_size_scalars_and_work_cap():
    from tvmptq.algorithms.adaround import adaround_weight
    x, qm = _mbconv_case()
    train = TrainModel(qm.graph, qm.plan, adaround_weight, FAST)
    assert any(n.op == "call_function" and not isinstance(n.meta.get("val"), torch.Tensor)
               and "val" in n.meta for n in train.nodes)            # the case this test is about
    blocks = find_blocks(train)
    assert [len(b.kernels) for b in blocks] == [1, 3, 3, 1]
    # each block's activations per sample: the work cap runs the big ones fewer iterations
    cfg = dataclasses.replace(FAST, iters=40, samples=24, batch_size=8, work=8 * 40 * 3000)
    plan, _ = fit_brecq(qm.graph, qm.plan, (x,), cfg, progress=False)
    iters = [b["iters"] for b in plan.run_info["brecq"]["blocks"]]
    assert iters[-1] == 40 and min(iters[1:3]) < 40 and all(i >= 1 for i in iters)
    with pytest.raises(ValueError, match="work"):
        fit_brecq(qm.graph, qm.plan, (x,), dataclasses.replace(cfg, work=0), progress=False)


def test_iters_above_every_work_cap_change_nothing():
    """Where ``work`` caps every block below ``iters`` (EfficientNet-Lite0 at the defaults: 6-277
    iterations against iters 2,000), the plan depends on the caps only: raising ``iters`` gives
    the same bytes (the warm-up and annealing schedule run on the capped count)."""
    x, qm = _mbconv_case()
    cfg = dataclasses.replace(FAST, samples=24, batch_size=8, work=8 * 6 * 3000)
    plans = [fit_brecq(qm.graph, qm.plan, (x,), dataclasses.replace(cfg, iters=n), progress=False)[0]
             for n in (100, 400)]
    caps = [[b["iters"] for b in p.run_info["brecq"]["blocks"]] for p in plans]
    assert caps[0] == caps[1] and max(caps[0]) < 100 and min(caps[0]) > 1
    assert plans[0].tensors == plans[1].tensors
    for a, b in zip(plans[0].layers, plans[1].layers):
        assert a.arrays.keys() == b.arrays.keys() and all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)
    assert any(not np.array_equal(a.arrays["weight"], b.arrays["weight"])      # and it did learn
               for a, b in zip(plans[0].layers, qm.plan.layers) if "weight" in a.arrays)


def test_refold_rebuilds_lookup_tables_for_learned_steps():
    """A learned step of a lookup table's input moves the codes the table is indexed by: the
    table is rebuilt (a stale one would map every code through the old grid)."""
    from tvmptq.zoo import from_module
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(64, 16).numpy()
    model = from_module(net, (torch.from_numpy(x[:1]),))
    qm = tvmptq.quantize(model, (x,), tvmptq.make_config(8, 8), progress=False)
    lut_layer = next(lp for lp in qm.plan.layers if lp.kind == "lut")
    t_in = lut_layer.inputs[0]
    new = refold(qm.graph, qm.plan, {t_in: qm.plan.tensors[t_in].scale * 1.25}, {})
    table = next(lp for lp in new.layers if lp.kind == "lut").arrays["table"]
    assert not np.array_equal(table, lut_layer.arrays["table"])
    ref = net(torch.from_numpy(x)).detach().numpy()
    got = torch_runner(simulate(qm.graph, new))(x)
    stale = new                                   # the same plan with the old table put back
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99
    next(lp for lp in stale.layers if lp.kind == "lut").arrays["table"] = lut_layer.arrays["table"]
    bad = torch_runner(simulate(qm.graph, stale))(x)
    assert np.abs(bad - ref).mean() > 2 * np.abs(got - ref).mean()


def test_mixed_precision_overrides_survive_reconstruction(digits_graph, digits_w2a4):
    """Per-layer weight bits (the plan's LayerOverride, e.g. depthwise convs at W8 in a W4 plan)
    are kept by the fit: those layers learn their rounding on the 8-bit grid, the rest on theirs,
    and the folded plan still runs bit-exactly in the NumPy reference."""
    model, graph = digits_graph
    _, _, calib, x, _ = digits_w2a4
    wide = {"conv2d_1", "conv2d_2"}
    cfg = tvmptq.make_config(2, 4, "mse", overrides={n: {"weight_bits": 8} for n in wide})
    qm = tvmptq.quantize(model, calib, cfg, graph=graph, progress=False)
    plan, sim = fit_brecq(graph, qm.plan, calib, FAST, progress=False)
    for lp in plan.layers:
        if "weight" not in lp.arrays:
            continue
        peak = int(np.abs(lp.arrays["weight"]).max())
        assert lp.weight_bits == (8 if lp.name in wide else 2), lp.name
        assert (peak > 1) == (lp.name in wide) and peak <= 2 ** (lp.weight_bits - 1) - 1, (lp.name, peak)
    assert np.array_equal(torch_runner(sim)(x), run_plan(plan, x))

"""CLE and QFT: FP32 function preserved by CLE, QFT's folded plan exact and zero-cost when compiled
(compiled == simulation == NumPy reference, same Relax op and constant counts as the baseline),
early stopping and the seed honoured, composition and bad options refused, user models via the CLI."""
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import tvmptq
from tvmptq.algorithms.cle import equalize, equalized_graph, find_pairs, fit_cle
from tvmptq.algorithms.qft import QFTConfig, build_model, fit_qft, holdout_split
from tvmptq.errors import ConfigError
from tvmptq.eval.sets import torch_runner
from tvmptq.reference import run_plan

FAST = QFTConfig(qft_iters=40, samples=96, batch_size=16, qft_eval_every=10)


class Chain(nn.Module):
    """conv -ReLU-> conv -ReLU-> depthwise -ReLU-> conv -ReLU6-> conv, a residual, a linear head;
    channel ranges made very unequal so CLE has work to do."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 12, 1)
        self.dw, self.c3 = nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.Conv2d(12, 8, 1)
        self.c4, self.c5 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():
            for m in (self.c1, self.c2, self.dw):
                m.weight.mul_(torch.logspace(-1.5, 1.5, m.weight.shape[0])[torch.randperm(m.weight.shape[0], generator=g)]
                              .reshape(-1, 1, 1, 1))

    def forward(self, x):
        y = torch.relu(self.c2(torch.relu(self.c1(x))))
        y = self.c3(torch.relu(self.dw(y)))
        z = self.c5(torch.clamp(self.c4(y), 0, 6))          # ReLU6 between c4 and c5: not equalized
        return self.fc((y + z).mean((2, 3)))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chain")
    torch.manual_seed(0)      # nn.Conv2d's default init draws from the global generator: same weights in any test order
    model = Chain().eval()
    x = torch.zeros(2, 1, 8, 8)
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(ep, folder / "chain.pt2")
    calib = np.random.default_rng(0).normal(size=(96, 1, 8, 8)).astype(np.float32)
    np.save(folder / "calib.npy", calib)
    zoo = tvmptq.load(str(folder / "chain.pt2"))
    return folder, zoo, tvmptq.prepare(zoo), calib


def test_cle_pairs_and_fp32_function(chain):
    _, zoo, graph, calib = chain
    qm = tvmptq.quantize(zoo, (calib,), tvmptq.make_config(4, 8), graph=graph, progress=False)
    pairs, skipped = find_pairs(graph, qm.plan)
    names = {lay.node.name: lay.name for lay in graph.layers}
    assert [(p.first, p.second, p.depthwise) for p in pairs] == [
        ("conv2d", "conv2d_1", False), ("conv2d_1", "conv2d_2", True), ("conv2d_2", "conv2d_3", False)], names
    assert [(s["first"], s["second"]) for s in skipped] == [("conv2d_4", "conv2d_5")]
    assert "not positively homogeneous" in skipped[0]["reason"]
    before = {lay.name: lay.weight.copy() for lay in graph.layers if lay.weight is not None}
    fp = torch_runner(graph.gm)(calib)
    plan, sim = fit_cle(graph, qm.plan, (calib,), progress=False)
    factors = {k: {d: np.asarray(v) for d, v in f.items()} for k, f in plan.stats["cle"]["factors"].items()}
    assert plan.stats["cle"]["max_factor"] > 1.0                  # the unequal channels were rescaled
    with equalized_graph(graph, factors):
        eq = torch_runner(graph.gm)(calib)
        r = lambda w: np.abs(w).reshape(w.shape[0], -1).max(1)  # noqa: E731
        spread = {lay.name: r(lay.weight).max() / r(lay.weight).min() for lay in graph.layers if lay.name == "conv2d"}
    np.testing.assert_allclose(eq, fp, rtol=1e-4, atol=1e-4 * np.abs(fp).max())
    assert spread["conv2d"] < r(before["conv2d"]).max() / r(before["conv2d"]).min() / 10
    for lay in graph.layers:                                   # the captured graph is restored
        if lay.weight is not None:
            assert np.array_equal(lay.weight, before[lay.name])
    assert np.array_equal(torch_runner(graph.gm)(calib), fp)
    assert np.array_equal(torch_runner(sim)(calib[:16]), run_plan(plan, calib[:16]))
    err = lambda p: float(np.mean((torch_runner(p)(calib) - fp) ** 2))  # noqa: E731
    assert err(sim) < err(qm.simulated)                        # equalized ranges quantize better


def test_equalize_closed_form_balances_ranges():
    rng = np.random.default_rng(1)
    w1 = rng.normal(size=(6, 4)) * np.logspace(-2, 2, 6)[:, None]
    w2 = rng.normal(size=(5, 6))
    from tvmptq.algorithms.cle import Pair
    eq, f = equalize({"a": (w1, np.ones(6)), "b": (w2, None)}, [Pair("a", "b", False)])
    r1, r2 = np.abs(eq["a"][0]).max(1), np.abs(eq["b"][0]).max(0)
    np.testing.assert_allclose(r1, r2, rtol=1e-9)               # Nagel: both ranges sqrt(r1 r2)
    x = np.maximum(rng.normal(size=(4, 3)), 0)
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    np.testing.assert_allclose(eq["b"][0] @ relu(eq["a"][0] @ x + eq["a"][1][:, None]),
                               w2 @ relu(w1 @ x + 1), rtol=1e-9)


@pytest.fixture(scope="module")
def qft_fitted(digits_w2a4):
    _, graph, calib, _, qm = digits_w2a4
    cle_plan, _ = fit_cle(graph, qm.plan, calib, progress=False)
    return cle_plan, fit_qft(graph, cle_plan, calib, FAST, progress=False)


def test_qft_starts_exactly_from_any_plan(digits_w2a4):
    """With every learning rate 0 the best held-out score is the start: the folded plan is the
    plan QFT was given, bit for bit (baseline, CWAC and BRECQ plans: QFT reads what they store)."""
    _, graph, calib, x, qm = digits_w2a4
    frozen = dataclasses.replace(FAST, qft_iters=4, qft_eval_every=2, qft_patience=1, **{
        f.name: 0.0 for f in dataclasses.fields(QFTConfig) if f.name.endswith("_lr")})
    cwac = tvmptq.apply_method(qm, calib, "cwac", {"samples": 64}).plan
    brecq = tvmptq.apply_method(qm, calib, "brecq", {"iters": 10, "samples": 32}).plan
    for start in (qm.plan, cwac, brecq):
        plan, sim = fit_qft(graph, start, calib, frozen, progress=False)
        assert plan.stats["qft"]["best_iteration"] == 0 and plan.stats["qft"]["stopped_early"]
        assert np.array_equal(torch_runner(sim)(x), run_plan(start, x))
        # the stored program exactly. weight_scale is a float record, not executed: QFT writes the
        # effective step there (CWAC's a_c, kept by CWAC in the multiplier only, included)
        for a, b in zip(start.layers, plan.layers):
            assert a.clip == b.clip
            for k in a.arrays:
                if k == "weight_scale":
                    assert start is cwac or np.allclose(a.arrays[k], b.arrays[k], rtol=1e-6), a.name
                else:
                    assert np.array_equal(a.arrays[k], b.arrays[k]), (start.config.get("method"), a.name, k)


def test_qft_learns_and_folds(qft_fitted, digits_w2a4):
    _, graph, calib, x, qm = digits_w2a4
    start, (plan, sim) = qft_fitted
    assert [lp.name for lp in plan.layers] == [lp.name for lp in qm.plan.layers]
    assert plan.program == qm.plan.program and set(plan.tensors) == set(qm.plan.tensors)
    for a, b in zip(qm.plan.layers, plan.layers):
        assert set(a.arrays) == set(b.arrays)
        for k in a.arrays:
            assert a.arrays[k].shape == b.arrays[k].shape and a.arrays[k].dtype == b.arrays[k].dtype
    changed = {k: sum(int((a.arrays[k] != b.arrays[k]).sum()) for a, b in zip(start.layers, plan.layers) if k in a.arrays)
               for k in ("weight", "bias", "multiplier")}
    assert all(v > 0 for v in changed.values()), changed      # integers, biases and steps all moved
    assert any(plan.tensors[t].scale != start.tensors[t].scale for t in plan.tensors)
    assert len(plan.stats["qft"]["cle_pairs_learned"]) == 3
    assert np.array_equal(torch_runner(sim)(x), run_plan(plan, x))
    fp = torch_runner(graph.gm)(x)
    agree = lambda out: float((out.argmax(1) == fp.argmax(1)).mean())  # noqa: E731
    assert agree(torch_runner(sim)(x)) > agree(qm.runner()(x)) + 0.1
    st = plan.stats["qft"]
    assert st["held_out_loss_best"] < st["held_out_loss_start"] and st["held_out_samples"] == 24


def test_qft_compiled_is_zero_cost_and_bit_exact(qft_fitted, digits_w2a4, digits_relax):
    pytest.importorskip("tvm")
    import relay_passes as rp
    from targets.build import compile_integer
    from tvmptq.algorithms.cost import parameter_count, relax_constants
    _, _, _, x, qm = digits_w2a4
    _, (plan, sim) = qft_fitted
    imported = digits_relax[4]
    base_mod, mod = rp.lowering_passes(qm.plan)(imported), rp.lowering_passes(plan)(imported)
    assert rp.op_counts(base_mod) == rp.op_counts(mod)
    assert relax_constants(base_mod) == relax_constants(mod) and parameter_count(base_mod) == parameter_count(mod)
    got = compile_integer(mod)(x)
    assert np.array_equal(got, torch_runner(sim)(x)) and np.array_equal(got, run_plan(plan, x))


def test_seed_and_early_stopping(qft_fitted, digits_w2a4, tmp_path):
    _, graph, calib, _, _ = digits_w2a4
    start, (plan, _) = qft_fitted
    cfg = dataclasses.replace(FAST, qft_iters=15, qft_eval_every=5)
    a = fit_qft(graph, start, calib, cfg, progress=False)[0].save(tmp_path / "a.npz").read_bytes()
    b = fit_qft(graph, start, calib, cfg, progress=False)[0].save(tmp_path / "b.npz").read_bytes()
    c = fit_qft(graph, start, calib, dataclasses.replace(cfg, seed=1), progress=False)[0].save(tmp_path / "c.npz")
    assert a == b and a != c.read_bytes()
    # a learning rate far too large makes the held-out loss worse: training stops after `patience`
    # scores and the best scored parameters are the ones folded
    wild = dataclasses.replace(cfg, qft_iters=200, qft_eval_every=2, qft_patience=2, qft_weight_lr=2.0, qft_step_lr=0.5)
    p, _ = fit_qft(graph, start, calib, wild, progress=False)
    st = p.stats["qft"]
    assert st["stopped_early"] and st["iterations"] < 200
    assert st["held_out_loss_best"] == min(st["held_out_history"])
    assert len(st["held_out_history"]) - 1 - st["held_out_history"].index(min(st["held_out_history"])) == 2


def test_group_holdout_keeps_whole_groups_out():
    """qft_holdout_groups: the early-stopping share is whole groups (i mod G), never trained on."""
    rng = np.random.default_rng(0)
    hold, train = holdout_split(192, dataclasses.replace(FAST, qft_holdout=0.2, qft_holdout_groups=10), rng)
    assert set(hold % 10) == {8, 9} and set(train % 10) == set(range(8))
    assert len(hold) + len(train) == 192 and not set(hold) & set(train)
    hold, _ = holdout_split(40, dataclasses.replace(FAST, qft_holdout=0.01, qft_holdout_groups=4), rng)
    assert set(hold % 4) == {3}                      # at least one group
    hold, train = holdout_split(100, dataclasses.replace(FAST, qft_holdout=0.25), rng)
    assert len(hold) == 25 and set(hold % 10) != {8, 9}  # default: a random share
    with pytest.raises(ConfigError, match="none held out"):
        holdout_split(3, dataclasses.replace(FAST, qft_holdout=0.2, qft_holdout_groups=10), rng)


def test_bad_options_refused(digits_w2a4):
    _, graph, calib, _, qm = digits_w2a4
    for bad in ({"qft_iters": 0}, {"qft_holdout": 1.0}, {"qft_weight_lr": -1.0}, {"qft_patience": 0},
                {"samples": 1}, {"qft_intermediate": float("nan")}, {"qft_holdout_groups": 1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            fit_qft(graph, qm.plan, calib, dataclasses.replace(FAST, **bad), progress=False)
    for method, name in (("qft+brecq", "'qft'"), ("cle+brecq", "'cle'"), ("qwt+qft", "'qwt'"), ("cle+cwac", "'cle'"),
                         ("baseline+qft", "baseline")):
        with pytest.raises(ConfigError, match=f"do not compose.*{name}"):
            tvmptq.apply_method(qm, calib, method)
    with pytest.raises(ConfigError, match="unknown method 'qtf'"):
        tvmptq.apply_method(qm, calib, "qtf")
    assert tvmptq.parse_method("qft") == ["cle", "qft"]
    assert tvmptq.parse_method("brecq+cwac+qft") == ["brecq", "cwac", "qft"]


def test_cli_user_model(chain, capsys):
    from tvmptq.cli import main
    folder, _, _, _ = chain
    base = ["quantize", str(folder / "chain.pt2"), "--calib", str(folder / "calib.npy"), "--wbits", "4",
            "--abits", "4", "--observer", "minmax", "--report", "0", "--method-samples", "64"]
    assert main(base + ["--method", "cwac+qft", "--qft-iters", "0"]) == 2
    assert "qft_iters must be a positive integer" in capsys.readouterr().err
    assert main(base + ["--method", "cwac", "--qft-iters", "5"]) == 2
    assert "--qft-iters" in capsys.readouterr().err
    assert main(base + ["--method", "cle+brecq"]) == 2
    assert "'cle'" in capsys.readouterr().err
    plan = folder / "p.npz"
    assert main(base + ["--method", "cle"]) == 0
    out = capsys.readouterr().out
    assert "CLE: 3 layer pairs equalized" in out and "conv2d_4->conv2d_5 (activation clamp(0, 6)" in out
    assert main(base + ["--method", "cwac+qft", "--qft-iters", "20", "--qft-eval-every", "5", "--out", str(plan)]) == 0
    out = capsys.readouterr().out
    saved = tvmptq.QuantPlan.load(plan)
    kernels = sum(1 for lp in saved.layers if "weight" in lp.arrays)
    assert "CWAC" in out and f"QFT: {kernels} layers" in out and "2 learned CLE pairs" in out, out.splitlines()[-4:]
    assert saved.config["method"] == "cwac+qft" and saved.stats["qft"]["iterations"] <= 20
    qm = tvmptq.from_plan(tvmptq.load(str(folder / "chain.pt2")), saved)
    x = np.load(folder / "calib.npy")[:8]
    assert np.array_equal(qm.runner()(x), run_plan(saved, x))


def test_build_model_reproduces_the_simulation(digits_w2a4):
    _, graph, _, x, qm = digits_w2a4
    model, kernels, acts, pairs, _, _ = build_model(graph, qm.plan, FAST)
    model.set_mode("hard")
    out = next(n for n in model.graph.nodes if n.op == "output").all_input_nodes[0].name
    with torch.no_grad():
        env = model.run(model.nodes, {model.nodes[0].name: torch.as_tensor(np.array(x[:32]))})
    np.testing.assert_allclose(env[out].numpy(), qm.runner()(x[:32]), atol=1e-5)
    assert len(kernels) == 10 and len(pairs) == 3 and acts


def test_intermediate_distillation_names_block_boundaries(digits_w2a4):
    """qft_intermediate > 0 adds the block-boundary tensors (cut while the kernels are still the
    reconstruction engine's, which find_blocks recognises) to the loss, and still folds exactly."""
    _, graph, calib, x, qm = digits_w2a4
    cfg = dataclasses.replace(FAST, qft_iters=6, qft_eval_every=3, qft_intermediate=1.0)
    plan, sim = fit_qft(graph, qm.plan, calib, cfg, progress=False)
    extra = plan.stats["qft"]["intermediate_tensors"]
    outputs = [a.name for a in next(n for n in graph.gm.graph.nodes if n.op == "output").all_input_nodes]
    assert extra and not set(extra) & set(outputs)
    assert np.array_equal(torch_runner(sim)(x), run_plan(plan, x))
    assert build_model(graph, qm.plan, FAST)[5] == []            # not cut when not asked for

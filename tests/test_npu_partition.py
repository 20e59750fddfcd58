"""The TVM-side NPU partition (relay_passes/npu_partition.py under targets/npu/ethos_u_ops.toml)
and `tvmptq compile --target ethos-u*` (targets/npu/artifact.py, tvmptq/cli_npu.py), issue 22."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relay_passes as rp
import tvmptq
from relay_passes.npu_partition import REPORT_ATTR
from targets.npu.artifact import NPUUnsupportedError, compile_npu_artifact
from targets.npu.capabilities import capabilities, partition
from targets.npu.ethos_u import npu_targets
from tvmptq.quant.plan import QuantPlan
from tvmptq.zoo import from_module


class NotForU55(nn.Module):
    """A depthwise conv of stride 4 (Ethos-U55/U65: stride 1..3; U85: no such limit), a grouped
    conv (no TFLite or NPU operator) and a softmax (a float island): each must be named."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, stride=4, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.grouped(F.relu(self.dw(F.relu(self.stem(x))))))
        return torch.softmax(self.fc(y.mean((2, 3))), -1)


@pytest.fixture(scope="module")
def not_for_u55():
    torch.manual_seed(0)
    x = torch.randn(32, 3, 32, 32)
    model = from_module(NotForU55().eval(), (x[:2],))
    qm = tvmptq.quantize(model, (x.numpy(),), tvmptq.make_config(8, 8, "minmax"), progress=False)
    return model, qm.plan, x[:4].numpy()


@pytest.fixture(scope="module")
def digits_module(digits_cli_plan):
    plan = QuantPlan.load(digits_cli_plan)
    model = tvmptq.load("digits_resnet")
    return model, plan, rp.lower(model.build(), model.example_inputs(1), plan)


def test_capability_tables_cover_every_npu_row():
    caps = {t.name: capabilities(t) for t in npu_targets()}
    assert set(caps) == {"ethos-u55-128", "ethos-u65-256", "ethos-u85-256"}
    assert caps["ethos-u55-128"].ops == caps["ethos-u65-256"].ops  # Vela: one rule set for U55 and U65
    assert caps["ethos-u55-128"].ops["depthwise_conv2d"].stride_max == 3
    assert caps["ethos-u85-256"].ops["depthwise_conv2d"].stride_max > 3
    assert all(c.activation_bits == 8 for c in caps.values())


def test_digits_all_on_npu_and_bit_exact(digits_module):
    model, plan, mod = digits_module
    x = tvmptq.get_set("digits").evaluation()[0][:8]
    p = partition(mod, plan, "ethos-u55-128", x)
    assert p.fallbacks == [] and p.host_ops == 2
    names = [e.name for e in p.report]
    assert [lp.name for lp in plan.layers] == [n for n in names if not n.startswith("reshape")]
    kinds = {e.tflite for e in p.report}
    assert kinds == {"CONV_2D", "ADD", "MEAN", "RESHAPE", "FULLY_CONNECTED"}
    assert p.bit_exact and p.matches_reference
    attr = [str(s) for s in p.module.attrs[REPORT_ATTR]]
    assert attr == [str(e) for e in p.report]
    composites = [f.attrs["Composite"] for _, f in p.module.functions_items() if f.attrs and "Composite" in f.attrs]
    assert len(composites) == len(p.report) and all(c.startswith("ethos-u55-128.") for c in composites)
    for t in ("ethos-u65-256", "ethos-u85-256"):  # no llvm run: the tables alone
        assert partition(mod, plan, t).fallbacks == []


def test_fallbacks_named_with_the_rule_and_still_bit_exact(not_for_u55):
    model, plan, x = not_for_u55
    mod = rp.lower(model.build(), model.example_inputs(1), plan)
    u55 = partition(mod, plan, "ethos-u55-128", x)
    cpu = {e.name: e.reason for e in u55.fallbacks}
    assert "stride [4, 4] > 3" in cpu["conv2d_1"]                    # the depthwise conv
    assert "grouped conv (groups=2" in cpu["conv2d_2"]
    assert any("softmax" in n and "float" in r for n, r in cpu.items())
    on = {e.name for e in u55.report if e.on_npu}
    assert {"conv2d", "mean", "linear"} <= on
    assert u55.bit_exact and u55.matches_reference                   # fallbacks stay in main, same program
    u85 = partition(mod, plan, "ethos-u85-256")
    assert "conv2d_1" in {e.name for e in u85.report if e.on_npu}    # U85 takes the stride-4 depthwise
    assert "conv2d_2" in {e.name for e in u85.fallbacks}


def test_artifact_refuses_naming_each_op(not_for_u55, tmp_path):
    model, plan, _ = not_for_u55
    with pytest.raises(NPUUnsupportedError, match=r"cannot run \d+ op\(s\).*'conv2d_1'.*stride.*'conv2d_2'.*grouped") as e:
        compile_npu_artifact(model, plan, tmp_path / "a", "ethos-u55-128")
    assert e.value.exit_code == 4 and "softmax" in str(e.value)
    assert not (tmp_path / "a").exists()  # nothing written


@pytest.mark.parametrize("npu", ["ethos-u55-128", "ethos-u65-256", "ethos-u85-256"])
def test_cli_compile_ethos_u_artifact(digits_cli_plan, tmp_path, npu):
    from tvmptq.cli import main
    out = tmp_path / npu
    assert main(["compile", "digits_resnet", "--plan", str(digits_cli_plan), "--target", npu,
                 "-o", str(out)]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["target"]["accelerator"] == npu and m["batch"] == 1
    for f in ("model.tflite", "vela/model_vela.tflite", "vela/model_per-layer.csv", "partition.txt",
              "partition.json", "plan.npz"):
        assert f in m["files"] and (out / f).is_file(), f
    summaries = [f for f in m["files"] if f.startswith("vela/model_summary_") and f.endswith(".csv")]
    assert len(summaries) == 1 and (out / summaries[0]).is_file()
    v = m["vela_estimate"]
    assert v["cycles_total"] > 0 and v["cpu_ops"] == [] and "estimate" in v["note"]
    assert m["partition"]["cpu_ops"] == [] and m["partition"]["bit_exact_llvm"] is True
    assert m["litert_vs_reference"]["top1_equal"] == m["litert_vs_reference"]["samples"]
    vela_tflite = (out / "vela/model_vela.tflite").read_bytes()
    assert b"ethos-u" in vela_tflite  # Vela's custom operator holding the NPU command stream
    assert "not measured" in (out / "report.md").read_text()


def test_cli_refuses_sub_8_bit_activations_by_name(tmp_path, capsys):
    from tvmptq.cli import main
    plan = tmp_path / "a4.npz"
    assert main(["quantize", "digits_resnet", "--abits", "4", "--calib-samples", "32", "--observer", "minmax",
                 "--report", "0", "--out", str(plan)]) == 0
    capsys.readouterr()
    assert main(["compile", "digits_resnet", "--plan", str(plan), "--target", "ethos-u55-128", "-o",
                 str(tmp_path / "x"), "--allow-cpu-fallback"]) == 4
    err = capsys.readouterr().err
    assert "4-bit activations" in err and "'conv2d'" in err and "'linear'" in err
    assert not (tmp_path / "x").exists()


def test_compare_npu_rows_are_labelled_estimates(tmp_path):
    from targets.compare import run_compare
    out = tmp_path / "cmp.md"
    r = run_compare(["digits_resnet"], ["ethos-u55-128"], tmp_path / "work", out_md=out, npu_wbits=(8,),
                    log=lambda m: None)
    (row,) = r["rows"]
    assert row["arch"] == "ethos-u" and row["latency_kind"] == "Vela estimate" and row["vela_summary_checked"]
    assert row["vela_est_ms"] == pytest.approx(row["vela_cycles"] / (row["clock_mhz"] * 1e3), rel=1e-3)
    assert row["partition_cpu_ops"] == [] and row["partition_bit_exact_llvm"] is True
    md = out.read_text()
    assert "estimates, not measurements" in md and "| digits_resnet | w8a8 | ethos-u55-128 |" in md
    assert (tmp_path / "cmp_npu.png").is_file()


def test_litert_peer_worker_times_the_export(digits_cli_plan, tmp_path):
    from targets.speed import run_worker
    from tvmptq.export.tflite import export_tflite, quantize_input
    plan = QuantPlan.load(digits_cli_plan)
    ex = export_tflite(plan, tmp_path / "d.tflite")
    x = tvmptq.get_set("digits").evaluation()[0][:1]
    np.savez(tmp_path / "in.npz", in0=quantize_input(plan, ex, x))
    r = run_worker({"engine": "litert_int8", "kind": "litert", "path": str(ex.path), "inputs": str(tmp_path / "in.npz"),
                    "threads": 1, "repeat": 3, "number": 2, "warmup": 1})
    assert r["engine"] == "litert_int8" and r["median_ms"] > 0

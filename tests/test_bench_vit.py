"""scripts/bench_vit.py's method specs and --merge: which rows a merged report keeps, replaces and
adds, and which commands its header names (synthetic rows, no model run)."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
bench_vit = pytest.importorskip("bench_vit")


def _row(bits, method, acc, command, held=90.0):
    return {"model": "digits_vit", "bits": bits, "method": method, "top1_agreement": acc, "held_out": held,
            "accuracy": acc, "fit_seconds": 1.0, "command": command}


def test_parse_spec_and_qft_head():
    assert bench_vit.parse_spec("waps:in_mixed+qft@qft_iters=600,qft_weight_lr=0.004") == (
        "waps+qft", {"reading": "in_mixed", "qft_iters": 600, "qft_weight_lr": 0.004})
    assert bench_vit.parse_spec("cwac") == ("cwac", {})
    assert bench_vit._qft_head("qft") == "cle"
    assert bench_vit._qft_head("waps:in_mixed+qft") == "waps:in_mixed"
    assert bench_vit._qft_head("cwac+qft@qft_iters=600") == "cwac"
    assert bench_vit._qft_head("brecq+qft@iters=10") is None      # the head itself would differ
    assert bench_vit._qft_head("brecq") is None
    with pytest.raises(SystemExit, match="not key=value"):
        bench_vit.parse_spec("qft@qft_iters")


def test_merge_replaces_same_bits_and_method_keeps_the_rest_in_order():
    full = "scripts/bench_vit.py"
    old = [_row("W8A8", "ort int8 (quantize_static)", 98.1, full), _row("W8A8", "baseline", 98.0, full),
           _row("W4A4", "baseline", 90.7, full), _row("W4A4", "cwac", 91.9, full),
           _row("W2A4", "cwac", 80.6, full)]
    cmd = "scripts/bench_vit.py --merge --bits W4A4 W2A4 --methods cwac qft"
    new = [_row("W4A4", "cwac", 92.5, cmd), _row("W4A4", "qft", 93.5, cmd), _row("W2A4", "qft", 85.0, cmd)]
    rows = bench_vit.merge_rows(old, new)
    assert [(r["bits"], r["method"], r["accuracy"]) for r in rows] == [
        ("W8A8", "ort int8 (quantize_static)", 98.1), ("W8A8", "baseline", 98.0), ("W4A4", "baseline", 90.7),
        ("W4A4", "cwac", 92.5), ("W4A4", "qft", 93.5), ("W2A4", "cwac", 80.6), ("W2A4", "qft", 85.0)]
    runs = bench_vit.merge_runs([{"command": full, "minutes": 22.6}, {"command": "gone", "minutes": 1.0}],
                                {"command": cmd, "minutes": 2.0}, rows)
    assert [r["command"] for r in runs] == [full, cmd]           # a run with no row left is dropped
    # a rerun of the same command replaces its run; its rows stay
    again = bench_vit.merge_runs(runs, {"command": cmd, "minutes": 3.0}, rows)
    assert [(r["command"], r["minutes"]) for r in again] == [(full, 22.6), (cmd, 3.0)]


def test_report_names_each_command_with_its_rows_and_the_targets(tmp_path):
    full, cmd = "scripts/bench_vit.py", "scripts/bench_vit.py --merge --bits W4A4 --methods qft"
    rows = [_row("W8A8", "baseline", 98.0, full, 100.0), _row("W4A4", "cwac", 91.9, full, 92.2),
            {**_row("W4A4", "qft", 94.1, cmd, 96.9), "qft": {"iterations": 325, "best_iteration": 225,
             "stopped_early": True, "held_out_loss_start": 0.16, "held_out_loss_best": 0.089}, "qft_seconds": 8.6}]
    data = {"fp32": {"accuracy": 98.0}, "rows": rows,
            "runs": [{"command": full, "minutes": 22.6, "note": "no QFT then"}, {"command": cmd, "minutes": 1.5}]}
    out = tmp_path / "vit.md"
    bench_vit.write_md(data, out)
    text = out.read_text()
    assert f"- `{full}` (no QFT then), 22.6 min: baseline at W8A8; cwac at W4A4" in text
    assert f"- `{cmd}`, 1.5 min: qft at W4A4" in text
    assert "- W4A4 qft: 325 (225), 8.6 s, 0.1600 -> 0.0890" in text
    assert "- W4A4: best qft 94.1 % (+3.9 pt below FP32): met; first on held-out calibration agreement (96.9): qft 94.1 %" in text
    assert "- W8A8: best baseline 98.0 % (+0.0 pt below FP32): met" in text
    assert json.loads(out.with_suffix(".json").read_text()) == data

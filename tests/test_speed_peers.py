"""The --peers-only section of results/speed.md: its own run, never touching the main tables."""
import json

from targets import speed_report
from targets.speed_peers import BEGIN, END, tflite_or_refusal, write_peers
from tests.test_bench_speed import _lat, synthetic_result
from tests.test_tflite_npu import quantized_softmax_head


def _peers(refused):
    lat = {"tvm_int8_untuned": _lat(0.02), "tvm_int8_tuned": _lat(0.01), "litert_int8": _lat(0.03)}
    return {"command": "scripts/bench_speed.py --peers-only --no-tune --models digits_resnet digits_vit",
            "date": "2026-12-07 11:30", "cpu_model": "Test CPU", "host_cpu": "znver4", "cores": 2, "seconds": 60,
            "versions": {"tvm": "0.27", "ai_edge_litert": "2.3.0"}, "tune": False, "repeat": 30, "number": 5,
            "warmup": 5, "threads": [1, 2],
            "models": {"digits_resnet": {
                "latency": {"1": lat, "2": {**lat, "litert_int8": {"error": "worker exit 1: boom"}}},
                "tuning": {"int8": {"trials_in_db": 58, "tuned_on": "znver4"}},
                "bit_exact": [{"variant": "tuned", "samples": 8, "bit_exact": True, "max_abs_diff": 0.0}],
                "litert_vs_reference": {"kernels": "AUTO", "equal": 79, "total": 80, "max_abs": 1,
                                        "top1_equal": 8, "samples": 8}}},
            "refused": refused}


def _soft_refusal(tmp_path):
    """A tiny model with a softmax (a float island): the export refuses it, naming the op."""
    qm = quantized_softmax_head()
    ex, refusal = tflite_or_refusal(qm.plan, tmp_path / "soft.tflite")
    assert ex is None and "softmax" in refusal["error"] and not (tmp_path / "soft.tflite").exists()
    assert any(k.startswith("softmax x") for k in refusal["float_islands"]), refusal
    return refusal


def test_peers_section_keeps_the_main_tables(tmp_path):
    out = speed_report.write_report(synthetic_result(), tmp_path / "speed.md")
    main_md, main_js = out.read_text(), json.loads(out.with_suffix(".json").read_text())
    refusal = _soft_refusal(tmp_path)
    write_peers(_peers({"tiny_softmax": refusal}), out)
    text = out.read_text()
    assert text.startswith(main_md.rstrip("\n")) and text.count(BEGIN) == text.count(END) == 1
    js = json.loads(out.with_suffix(".json").read_text())
    assert {k: v for k, v in js.items() if k != "peers"} == main_js
    section = text.split(BEGIN)[1]
    assert "| digits_resnet | 1 | 0.020 (0.002) | 0.010 (0.001) | 0.030 (0.003) | 3.00x |" in section
    assert "| digits_resnet | 2 | 0.020 (0.002) | 0.010 (0.001) | failed | - |" in section and "boom" in section
    assert "--peers-only --no-tune" in section and "Test CPU" in section and "threads 1, 2" in section
    assert "forces `--no-tune`" in section and "58 trials tuned on `znver4`" in section
    assert "79/80 output integers equal" in section
    row = next(x for x in section.splitlines() if x.startswith("| tiny_softmax |"))
    assert "softmax" in row and "softmax x1" in row
    # a second peers run replaces the section; a later main --merge re-render keeps it as it is
    write_peers(_peers({}), out)
    again = out.read_text()
    assert again.count(BEGIN) == 1 and "tiny_softmax" not in again and again.startswith(main_md.rstrip("\n"))
    merged = json.loads(out.with_suffix(".json").read_text())
    (tmp_path / "re").mkdir()
    assert speed_report.write_report(merged, tmp_path / "re" / "speed.md").read_text() == again


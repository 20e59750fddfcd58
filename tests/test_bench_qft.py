"""scripts/bench_qft.py's write_md: regenerating results/qft.md keeps the hand-written analysis
outside the generated block (synthetic rows, no model run)."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
bench_qft = pytest.importorskip("bench_qft")


def _row(model, bits, method, agree):
    return {"model": model, "bits": bits, "method": method, "primary": "top1_agreement", "top1_agreement": agree,
            "held_out": 90.0, "accuracy": agree, "fit_seconds": 1.0, "qft_seconds": None, "peak_rss_mb": 100.0,
            "qft": None, "cle": {}}


def test_write_md_keeps_prose_outside_the_generated_block(tmp_path):
    out = tmp_path / "qft.md"
    bench_qft.write_md([_row("digits_vit", "W4A4", "baseline", 88.5)], out, 1.0)
    first = out.read_text()
    assert first.startswith(bench_qft.GENERATED_START) and "| digits_vit | W4A4 | baseline | 88.5 |" in first
    out.write_text("Intro by hand.\n" + first + "\nEfficientNet analysis by hand.\n")
    bench_qft.write_md([_row("digits_vit", "W4A4", "baseline", 88.5), _row("digits_vit", "W4A4", "cwac", 91.2)],
                       out, 2.0)
    text = out.read_text()
    assert text.startswith("Intro by hand.\n" + bench_qft.GENERATED_START)
    assert text.endswith(bench_qft.GENERATED_END + "\n\nEfficientNet analysis by hand.\n")
    assert "| digits_vit | W4A4 | cwac | 91.2 |" in text
    assert text.count(bench_qft.GENERATED_START) == 1 and text.count("| digits_vit | W4A4 | baseline |") == 1


def test_write_md_replaces_a_file_without_markers_whole(tmp_path):
    out = tmp_path / "qft.md"
    out.write_text("old table, no markers\n")
    bench_qft.write_md([_row("digits_resnet", "W4A8", "baseline", 99.2)], out, 1.0)
    text = out.read_text()
    assert "old table" not in text and text.rstrip().endswith(bench_qft.GENERATED_END)


def test_merge_row_replaces_a_rerun_method_in_place_and_keeps_the_others():
    rows = [_row("efficientnet_lite0", "W4A8", m, a) for m, a in (("baseline", 48.0), ("cle", 45.9), ("qft", 44.3))]
    bench_qft.put_row(rows, _row("efficientnet_lite0", "W4A8", "qft", 47.0))
    bench_qft.put_row(rows, _row("efficientnet_lite0", "W8A8", "qft", 90.0))
    assert [(r["bits"], r["method"], r["top1_agreement"]) for r in rows] == [
        ("W4A8", "baseline", 48.0), ("W4A8", "cle", 45.9), ("W4A8", "qft", 47.0), ("W8A8", "qft", 90.0)]


def test_islands_added_after_fitting_go_into_a_copy_and_stay_bit_exact():
    """bench_qft --integer-islands: the fitted plan is copied, the copy's softmax and LayerNorm run in
    integers (its simulation equals the NumPy reference), the fitted plan itself is untouched."""
    import numpy as np
    import torch
    import tvmptq
    from tvmptq.reference.executor import run_plan
    from tests.test_user_transformers import BertLayer, _inputs
    torch.manual_seed(0)
    inp = tuple(_inputs("bert", 8, 0).values())
    model = tvmptq.zoo.from_module(BertLayer(), tuple(torch.from_numpy(v) for v in inp))
    qm = tvmptq.quantize(model, inp, tvmptq.make_config(8, 8, "minmax"), progress=False)
    before = qm.runner()(*inp)
    island = bench_qft.with_islands(qm, ["softmax", "layernorm"])
    assert island.plan.config["integer_islands"] == ["softmax", "layernorm"]
    assert "integer_islands" not in qm.plan.config and np.array_equal(qm.runner()(*inp), before)
    assert any(s.get("integer_island") for s in island.plan.program)
    out = island.runner()(*inp)
    assert np.array_equal(out, run_plan(island.plan, *inp))
    assert np.corrcoef(out.ravel(), before.ravel())[0, 1] > 0.99

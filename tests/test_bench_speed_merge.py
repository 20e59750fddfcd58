"""scripts/bench_speed.py --merge: which model's per-layer profile a merged report keeps
(synthetic results, nothing measured)."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
bench_speed = pytest.importorskip("bench_speed")


def _result(models, profile_model, date):
    return {"command": f"bench_speed.py --models {' '.join(models)}", "date": date, "seconds": 60.0,
            "models": {m: {"latency": {}} for m in models}, "budgets": {}, "arm": [],
            "profile": {"model": profile_model, "threads": 1, "tvm": {}, "ort": {}}}


def test_merge_keeps_the_earlier_profile_of_a_model_not_remeasured(tmp_path):
    old = tmp_path / "speed.json"
    old.write_text(json.dumps(_result(["efficientnet_lite0", "digits_resnet"], "efficientnet_lite0", "d0")))
    merged = bench_speed._merged(_result(["digits_vit"], "digits_vit", "d1"), old, ["digits_vit"])
    assert merged["profile"]["model"] == "efficientnet_lite0"
    assert set(merged["models"]) == {"efficientnet_lite0", "digits_resnet", "digits_vit"}
    assert [r["models"] for r in merged["runs"]] == [["efficientnet_lite0", "digits_resnet"], ["digits_vit"]]
    asked = bench_speed._merged(_result(["digits_vit"], "digits_vit", "d1"), old, ["digits_vit"], True)
    assert asked["profile"]["model"] == "digits_vit"
    again = bench_speed._merged(_result(["efficientnet_lite0"], "efficientnet_lite0", "d2"), old,
                                ["efficientnet_lite0"])
    assert again["profile"]["model"] == "efficientnet_lite0" and again["runs"][-1]["date"] == "d2"

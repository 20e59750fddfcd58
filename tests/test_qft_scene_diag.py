"""scripts/qft_scene_diag.py: runs end to end on digits and writes its table from real scores."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scene_diag_digits(tmp_path):
    out = REPO / "results" / "qft_scene_diag_digits_resnet_W4A8"
    try:
        subprocess.run([sys.executable, str(REPO / "scripts" / "qft_scene_diag.py"), "--model", "digits_resnet",
                        "--iters", "2", "--configs", "noweights", "--eval-samples", "32"], check=True, cwd=REPO)
        rows = json.loads(out.with_suffix(".json").read_text())["rows"]
        assert [r["config"] for r in rows] == ["baseline", "noweights"]
        assert all(0 <= r["scene_heldout"] <= 100 and 0 <= r["eval"] <= 100 for r in rows)
        assert rows[1]["iterations"] == 2 and len(rows[1]["held_out_history"]) >= 2
        assert "| noweights |" in out.with_suffix(".md").read_text()
    finally:
        for suffix in (".json", ".md"):
            out.with_suffix(suffix).unlink(missing_ok=True)

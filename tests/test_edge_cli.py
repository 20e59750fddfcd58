"""Issue 27 acceptance: edge-model blocks (tests/edge_models.py) through the CLI, from PyTorch
(``.pt2``, torch.export.save, dynamic batch) and from ONNX (torch.onnx.export, opset 17):
``tvmptq quantize`` -> ``tvmptq compile --target x86-host`` -> ``tvmptq run``. The compiled
program's outputs equal the NumPy integer reference bit for bit, W8A8 stays within cosine 0.999
of FP32, and with lookup tables on the manifest lists no float op (ConvNeXt: only the float64 ops
of its one declared LayerNorm island; its layer scale folds into the linear before it)."""
from __future__ import annotations

import contextlib
import io
import json
import warnings

import numpy as np
import pytest
import torch

import tvmptq
from tvmptq.cli import main
from tvmptq.reference.executor import run_plan

from edge_models import BLOCKS  # noqa: E402

IMAGE = (3, 16, 16)
# Relax ops the declared islands of a block may leave in the manifest's float-op list: LayerNorm
# computed in float64 (islands.Float64Islands: mean, subtract, multiply, mean, add, sqrt, divide, ...).
ISLAND_OPS = {"convnext": {"nn.layer_norm", "astype", "subtract", "mean", "multiply", "divide", "sqrt", "add"}}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edge_cli")
    rng = np.random.default_rng(0)
    np.save(folder / "calib.npy", rng.standard_normal((32, *IMAGE)).astype(np.float32))
    np.save(folder / "eval.npy", rng.standard_normal((6, *IMAGE)).astype(np.float32))
    out = {"calib": folder / "calib.npy", "eval": folder / "eval.npy"}
    for name, (cls, _) in BLOCKS.items():
        torch.manual_seed(0)
        module = cls().eval()
        example = (torch.randn(2, *IMAGE),)
        ep = torch.export.export(module, example, dynamic_shapes=({0: torch.export.Dim.AUTO},))
        torch.export.save(ep, str(folder / f"{name}.pt2"))
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example[0][:1],), str(folder / f"{name}.onnx"), input_names=["x"],
                              output_names=["y"], opset_version=17, dynamo=False)
        out[name, "pt2"], out[name, "onnx"], out[name, "module"] = folder / f"{name}.pt2", folder / f"{name}.onnx", module
    return out


@pytest.mark.parametrize("source", ["pt2", "onnx"])
@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_cli_bit_exact(files, tmp_path, capsys, name, source):
    path, plan_file, art, out = files[name, source], tmp_path / "plan.npz", tmp_path / "art", tmp_path / "out.npy"
    rc = main(["quantize", str(path), "--calib", str(files["calib"]), "--observer", "minmax", "--report", "0",
               "--out", str(plan_file)])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rc = main(["compile", str(path), "--plan", str(plan_file), "-o", str(art), "--target", "x86-host", "--batch", "4",
               "--untuned"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rc = main(["run", str(art), "--input", str(files["eval"]), "-o", str(out)])
    assert rc == 0, capsys.readouterr().err[-2000:]

    x = np.load(files["eval"])
    compiled, plan = np.load(out), tvmptq.QuantPlan.load(plan_file)
    assert compiled.shape[0] == len(x)
    np.testing.assert_array_equal(compiled, run_plan(plan, x))  # integer program == NumPy reference
    with torch.no_grad():
        fp = files[name, "module"](torch.as_tensor(x)).numpy().reshape(len(x), -1)
    got = compiled.reshape(len(x), -1)
    assert (fp * got).sum() / np.linalg.norm(fp) / np.linalg.norm(got) >= 0.999
    manifest = json.loads((art / "manifest.json").read_text())
    float_ops = {f.split(" = ")[1].split(" ")[0] for f in manifest["float_ops"]}
    assert float_ops <= ISLAND_OPS.get(name, set()), manifest["float_ops"]
    assert plan.float_islands == (["layer_norm"] if name == "convnext" else [])
    if name != "convnext":
        assert manifest["float_ops"] == []

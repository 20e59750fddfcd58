"""Attention variants beyond plain SDPA: accepted on the same integer path, or refused by node name.

Accepted (one small model, through the CLI from ``.pt2`` and from ONNX with a dynamic batch):
q, k, v taken from one fused projection with ``chunk(3, dim=-1)`` (ONNX: Split), Swin's
relative-position bias (a learned table gathered by a constant index, added to the scores) and
ALiBi (constant per-head slopes times the key distance), non-shifted windowed attention (window
partition and merge as reshape/permute). The two attention matmuls are integer layers, the bias
adds are float islands named in the plan next to softmax, and the compiled program equals the
NumPy reference bit for bit. Refused: Swin's *shifted* windows (``torch.roll``) by node name with
the CLI's exit code for an unsupported op (4), instead of anything being left in float silently.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import tvmptq
from tvmptq.cli import main
from tvmptq.reference.executor import run_plan

DIM, HEADS, WINDOW = 16, 2, 2  # 4x4 patch grid, 2x2 windows: 4 windows of 4 tokens


def _alibi(heads: int, tokens: int) -> torch.Tensor:
    slopes = torch.tensor([2.0 ** (-8 * (h + 1) / heads) for h in range(heads)])
    distance = torch.arange(tokens)[None, :] - torch.arange(tokens)[:, None]
    return -slopes[:, None, None] * distance.abs()[None].float()


class WindowAttention(nn.Module):
    """Swin's WindowAttention with a fused qkv split by chunk and ALiBi on top of the table bias."""

    def __init__(self, shift: int = 0):
        super().__init__()
        self.shift, n = shift, WINDOW * WINDOW
        self.patch = nn.Conv2d(1, DIM, 2, 2)
        self.qkv, self.proj, self.head = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM), nn.Linear(DIM, 10)
        self.table = nn.Parameter(torch.randn((2 * WINDOW - 1) ** 2, HEADS) * 0.5)
        coords = torch.stack(torch.meshgrid(torch.arange(WINDOW), torch.arange(WINDOW), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + WINDOW - 1
        self.register_buffer("index", rel[..., 0] * (2 * WINDOW - 1) + rel[..., 1], persistent=False)
        self.register_buffer("alibi", _alibi(HEADS, n), persistent=False)

    def forward(self, x):
        x = self.patch(x).permute(0, 2, 3, 1)  # (B, 4, 4, C)
        b, h, w, c = x.shape
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = x.reshape(b, h // WINDOW, WINDOW, w // WINDOW, WINDOW, c).permute(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(-1, WINDOW * WINDOW, c)  # (B * 4, 4, C)
        bw, n, _ = windows.shape
        q, k, v = self.qkv(windows).chunk(3, dim=-1)
        q, k, v = (t.reshape(bw, n, HEADS, c // HEADS).transpose(1, 2) for t in (q, k, v))
        bias = self.table[self.index.reshape(-1)].reshape(n, n, HEADS).permute(2, 0, 1)
        scores = (q @ k.transpose(-2, -1)) * (c // HEADS) ** -0.5 + bias + self.alibi
        y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c)
        y = self.proj(y).reshape(b, -1, c)  # merge the windows back into the image's tokens
        return self.head(y.mean(1))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("attention_variants")
    out = {}
    for name, shift in (("windows", 0), ("shifted", 1)):
        torch.manual_seed(0)
        model = WindowAttention(shift).eval()
        example = (torch.rand(2, 1, 8, 8),)
        ep = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim.AUTO},))
        torch.export.save(ep, str(folder / f"{name}.pt2"))
        out[name, "pt2"] = folder / f"{name}.pt2"
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        torch.onnx.export(WindowAttention().eval(), (torch.rand(1, 1, 8, 8),), str(folder / "windows.onnx"),
                          input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    out["windows", "onnx"] = folder / "windows.onnx"
    rs = np.random.RandomState(0)
    np.savez(folder / "calib.npz", x=rs.rand(24, 1, 8, 8).astype(np.float32))
    np.savez(folder / "eval.npz", x=rs.rand(5, 1, 8, 8).astype(np.float32))
    out["calib"], out["eval"] = folder / "calib.npz", folder / "eval.npz"
    return out


@pytest.mark.parametrize("source", ["pt2", "onnx"])
def test_chunk_relative_bias_alibi_windows_take_the_integer_path(files, tmp_path, capsys, source):
    path, plan_file, art, out = files["windows", source], tmp_path / "plan.npz", tmp_path / "art", tmp_path / "y.npy"
    assert main(["quantize", str(path), "--calib", str(files["calib"]), "--observer", "minmax", "--report", "0",
                 "--out", str(plan_file)]) == 0, capsys.readouterr().err[-2000:]
    assert main(["compile", str(path), "--plan", str(plan_file), "-o", str(art), "--target", "x86-host",
                 "--batch", "4", "--untuned"]) == 0, capsys.readouterr().err[-2000:]
    assert main(["run", str(art), "--input", str(files["eval"]), "-o", str(out)]) == 0, capsys.readouterr().err[-2000:]
    plan = tvmptq.QuantPlan.load(plan_file)
    kinds = [lp.kind for lp in plan.layers]
    assert kinds.count("matmul") == 2 and kinds.count("linear") == 3  # q k^T, p v; qkv, proj, head
    islands = " ".join(plan.float_islands)
    assert "softmax" in islands and islands.count("add") >= 2  # table bias and ALiBi: declared float ops
    with np.load(files["eval"]) as loaded:
        x = loaded["x"]
    compiled = np.load(out)
    assert compiled.shape == (5, 10)
    assert np.array_equal(compiled, run_plan(plan, x))


def test_shifted_windows_are_refused_naming_the_roll(files, capsys):
    rc = main(["quantize", str(files["shifted", "pt2"]), "--calib", str(files["calib"]), "--report", "0"])
    err = capsys.readouterr().err
    assert rc == 4 and "roll" in err and "unsupported op" in err, err

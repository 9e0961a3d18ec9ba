"""One model shape and every parameter and FLOP count derived from it.

The compute ledger, the DP batcher's cost model and the cluster planner all read a
:class:`ModelShape`; each uses the counting convention its job needs, and the three are written
side by side so that their differences are visible and deliberate. A multiply-add is 2 FLOPs and
the backward pass costs twice the forward everywhere.

* **Ledger** (``forward_flops`` …): the work a run really did. One forward pass over a sequence
  of T tokens costs ``2·N·T + attn(T)`` with N = :attr:`ModelShape.non_embedding_params` (every
  weight a token passes through, norms and biases included, the LM head counted as a matmul even
  when tied) and the exact causal attention count ``attn(T) = 2·L·d_attn·T·(T+1)`` (token t
  attends t positions; QKᵀ and AV each cost ``2·d_attn·t`` per layer). Generation with a KV
  cache does the same arithmetic, so inference = forward; training = 3 × forward; an extra
  old/reference log-prob pass = forward.
* **Batcher** (:func:`batch_cost_coefficients`): the training cost of one padded sequence as
  ``a·L + b·L²`` with ``a = 6·matmul_params`` and ``b = 6·layers·d_attn`` (the causal L²/2
  approximation). Only ratios between samples matter to the batcher.
* **MFU** (``mfu_forward_flops`` …): the convention of published MFU figures (Narayanan et
  al. 2021): matmul weights only and the full s × s attention matrix (no causal discount), so
  planner times and measured MFU compare with the literature; recompute replays the forward.
  With MHA, a 4h ungated MLP and no recompute this equals ``72·B·s·l·h²·(1 + s/6h + V/12hl)``
  (:func:`megatron_paper_flops`, kept for that cross-check).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from megatron_sgpo.model.hf_config import head_dim, num_kv_heads, padded_vocab_size

RECOMPUTE = ("none", "selective", "full")
GATED_ACTIVATIONS = ("silu", "swiglu", "gelu_pytorch_tanh", "geglu")


@dataclass(frozen=True)
class ModelShape:
    """Dense decoder-only transformer dimensions (Llama, Qwen2/3, Mistral); ``head_dim`` 0 = hidden // heads."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    head_dim: int = 0
    tied_embeddings: bool = False
    gated_mlp: bool = True  # SwiGLU: gate, up and down projections
    qkv_bias: bool = False
    name: str = "model"

    def __post_init__(self) -> None:
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.heads)

    @classmethod
    def from_hf_config(cls, cfg: Mapping[str, Any], name: str = "model") -> "ModelShape":
        """Read a Hugging Face ``config.json`` dict (Llama, Qwen2/3, Mistral field names)."""
        return cls(
            hidden=int(cfg["hidden_size"]),
            layers=int(cfg["num_hidden_layers"]),
            heads=int(cfg["num_attention_heads"]),
            kv_heads=int(num_kv_heads(cfg)),
            ffn=int(cfg["intermediate_size"]),
            vocab=int(cfg["vocab_size"]),
            head_dim=int(head_dim(cfg)),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            gated_mlp=str(cfg.get("hidden_act", "silu")) in GATED_ACTIVATIONS,
            qkv_bias=bool(cfg.get("attention_bias", False)) or cfg.get("model_type") == "qwen2",
            name=name,
        )

    @classmethod
    def load(cls, path: str | Path) -> "ModelShape":
        """From a ``config.json`` file, named after the model it describes."""
        path = Path(path)
        with open(path) as f:
            cfg = json.load(f)
        return cls.from_hf_config(cfg, name=cfg.get("_name_or_path") or path.stem)

    # ------------------------------------------------------------------ parameters
    @property
    def d_attn(self) -> int:
        return self.heads * self.head_dim

    @property
    def attention_params(self) -> int:
        """q, o: heads·head_dim·hidden each; k, v: kv_heads·head_dim·hidden each (biases excluded)."""
        return self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)

    @property
    def mlp_params(self) -> int:
        return (3 if self.gated_mlp else 2) * self.hidden * self.ffn

    @property
    def qkv_bias_params(self) -> int:
        return self.head_dim * (self.heads + 2 * self.kv_heads) if self.qkv_bias else 0

    @property
    def layer_params(self) -> int:
        """Weights of one layer: attention (+ q/k/v bias), MLP, two norm vectors."""
        return self.attention_params + self.qkv_bias_params + self.mlp_params + 2 * self.hidden

    @property
    def matmul_params(self) -> int:
        """Weights every token multiplies with (layers' matrices and the LM head; logits always computed)."""
        return self.layers * (self.attention_params + self.mlp_params) + self.vocab * self.hidden

    @property
    def non_embedding_params(self) -> int:
        """N of the ledger: layers + final norm + LM head (a matmul even when tied)."""
        return self.layers * self.layer_params + self.hidden + self.hidden * self.vocab

    def padded_vocab(self, tp: int = 1, divisible_by: int = 128) -> int:
        """Rows of the built model's embedding and output layer (the TP-independent padding of model.hf_config)."""
        return padded_vocab_size(self.vocab, divisible_by, tp)

    def embedding_params(self, tp: int | None = None) -> int:
        """tp=None: the HF checkpoint's count; tp=t: Megatron's padded vocabulary."""
        return (self.vocab if tp is None else self.padded_vocab(tp)) * self.hidden

    def output_params(self, tp: int | None = None) -> int:
        return 0 if self.tied_embeddings else self.embedding_params(tp)

    def total_params(self, tp: int | None = None) -> int:
        """Stored weights, final norm included; tp=None counts the HF checkpoint, tp=t Megatron's."""
        return (self.layers * self.layer_params + self.embedding_params(tp) + self.output_params(tp)
                + self.hidden)


# ---------------------------------------------------------------------- ledger: work really done
def attention_flops(shape: ModelShape, seq_len: int) -> int:
    """2·L·d_attn·T·(T+1): causal QKᵀ and AV over a T-token sequence."""
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    return 2 * shape.layers * shape.d_attn * seq_len * (seq_len + 1)


def forward_flops(shape: ModelShape, seq_len: int) -> int:
    """2·N·T + attn(T): one forward pass, also the cost of generating it (inference)."""
    return 2 * shape.non_embedding_params * seq_len + attention_flops(shape, seq_len)


def inference_flops(shape: ModelShape, prompt_len: int, response_len: int) -> int:
    return forward_flops(shape, prompt_len + response_len)


def training_flops(shape: ModelShape, seq_len: int) -> int:
    """Forward + backward = 3·forward = 6·N·T + 3·attn(T)."""
    return 3 * forward_flops(shape, seq_len)


def logprob_flops(shape: ModelShape, seq_len: int) -> int:
    """An extra forward for old-policy or reference log-probs."""
    return forward_flops(shape, seq_len)


# ---------------------------------------------------------------------- batcher: relative cost
def batch_cost_coefficients(shape: ModelShape) -> tuple[float, float]:
    """(a, b) of the batcher's training cost ``a·L + b·L²`` for one sequence of L padded tokens."""
    return 6.0 * shape.matmul_params, 6.0 * shape.layers * shape.d_attn


# ---------------------------------------------------------------------- MFU convention (planner)
def mfu_forward_flops(shape: ModelShape, seq_len: float, seq_len_sq: float | None = None) -> float:
    """Forward FLOPs of one sequence; pass E[s] and E[s²] to get the mean over a length distribution."""
    s2 = seq_len * seq_len if seq_len_sq is None else seq_len_sq
    return 2.0 * seq_len * shape.matmul_params + 4.0 * shape.layers * s2 * shape.d_attn


def mfu_training_flops(shape: ModelShape, seq_len: float, recompute: str = "none",
                       seq_len_sq: float | None = None) -> float:
    """Forward + backward (+ recompute) FLOPs for one sequence."""
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {RECOMPUTE}, got {recompute!r}")
    s2 = seq_len * seq_len if seq_len_sq is None else seq_len_sq
    logits = 2.0 * seq_len * shape.vocab * shape.hidden
    layers_fwd = mfu_forward_flops(shape, seq_len, s2) - logits
    total = 3.0 * (layers_fwd + logits)
    if recompute == "full":
        total += layers_fwd
    elif recompute == "selective":
        total += 4.0 * shape.layers * s2 * shape.d_attn  # the attention core only
    return total


def decode_flops_per_token(shape: ModelShape, context: float) -> float:
    """One generated token attending to ``context`` cached tokens: 2N + 4·L·ctx·d_attn."""
    return 2.0 * shape.matmul_params + 4.0 * shape.layers * context * shape.d_attn


def megatron_paper_flops(batch: int, seq_len: int, layers: int, hidden: int, vocab: int,
                         full_recompute: bool = False) -> float:
    """Narayanan et al. 2021: 72 (or 96 with full recompute) B s l h² (1 + s/6h + V/(12|16) h l)."""
    if full_recompute:
        return 96.0 * batch * seq_len * layers * hidden**2 * (
            1 + seq_len / (6 * hidden) + vocab / (16 * layers * hidden))
    return 72.0 * batch * seq_len * layers * hidden**2 * (
        1 + seq_len / (6 * hidden) + vocab / (12 * layers * hidden))

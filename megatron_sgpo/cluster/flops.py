"""Parameter counts and FLOP counts, written out so that every planner time can be traced.

Conventions (the same as Narayanan et al. 2021, "Efficient Large-Scale Language Model Training
on GPU Clusters", eq. for F): a multiply-add is 2 FLOPs; attention scores and the attention-
weighted sum are counted over the full s x s matrix (no causal discount), so numbers compare with
published MFU figures; the backward pass costs twice the forward; norms, softmax, rotary and the
optimizer are not counted.

Per sequence of length s, one forward pass:

    F_fwd(s) = 2 s (L P_layer + V h)  +  4 L s^2 a d

with P_layer the matmul weights of one layer (q, k, v, o, MLP), a heads of width d.
Training is 3 F_fwd without recompute; full recompute replays the layers' forward (4x layers,
3x logits); selective recompute replays only the attention core (+ 4 L s^2 a d).
For a model with MHA, a 4h ungated MLP and no recompute this equals the paper's
72 B s l h^2 (1 + s/6h + V/12hl); `megatron_paper_flops` is kept for that cross-check.
"""
from __future__ import annotations

import math

from .spec import ModelSpec

RECOMPUTE = ("none", "selective", "full")


def padded_vocab(model: ModelSpec, tp: int = 1, divisible_by: int = 128) -> int:
    """Megatron pads the vocabulary to a multiple of divisible_by * TP."""
    m = divisible_by * tp
    return int(math.ceil(model.vocab / m) * m)


def attention_params(model: ModelSpec) -> int:
    d, h = model.kv_channels, model.hidden
    return h * d * (2 * model.heads + 2 * model.kv_heads)  # q, o: a*d*h; k, v: g*d*h


def mlp_params(model: ModelSpec) -> int:
    return (3 if model.gated_mlp else 2) * model.hidden * model.ffn


def layer_params(model: ModelSpec) -> int:
    """Weights of one transformer layer, two RMSNorm/LayerNorm weight vectors included."""
    return attention_params(model) + mlp_params(model) + 2 * model.hidden


def _vocab(model: ModelSpec, tp: int | None) -> int:
    return model.vocab if tp is None else padded_vocab(model, tp)


def embedding_params(model: ModelSpec, tp: int | None = None) -> int:
    """tp=None: the HF checkpoint's count; tp=t: Megatron's padded vocabulary."""
    return _vocab(model, tp) * model.hidden


def output_params(model: ModelSpec, tp: int | None = None) -> int:
    return 0 if model.tied_embeddings else _vocab(model, tp) * model.hidden


def total_params(model: ModelSpec, tp: int | None = None) -> int:
    """All weights, final norm included; tp=None counts the HF checkpoint, tp=t Megatron's."""
    return (model.layers * layer_params(model) + embedding_params(model, tp)
            + output_params(model, tp) + model.hidden)


def matmul_params(model: ModelSpec) -> int:
    """Weights that take part in a matmul for every token (logits always computed)."""
    return model.layers * (attention_params(model) + mlp_params(model)) + model.vocab * model.hidden


def forward_flops(model: ModelSpec, seq_len: float, seq_len_sq: float | None = None) -> float:
    """F_fwd for one sequence; pass E[s] and E[s^2] to get the mean over a length distribution."""
    s2 = seq_len * seq_len if seq_len_sq is None else seq_len_sq
    dense = 2.0 * seq_len * matmul_params(model)
    attn = 4.0 * model.layers * s2 * model.heads * model.kv_channels
    return dense + attn


def training_flops(model: ModelSpec, seq_len: float, recompute: str = "none",
                   seq_len_sq: float | None = None) -> float:
    """Forward + backward (+ recompute) FLOPs for one sequence."""
    if recompute not in RECOMPUTE:
        raise ValueError(f"recompute must be one of {RECOMPUTE}, got {recompute!r}")
    s2 = seq_len * seq_len if seq_len_sq is None else seq_len_sq
    logits = 2.0 * seq_len * model.vocab * model.hidden
    layers_fwd = forward_flops(model, seq_len, s2) - logits
    core = 4.0 * model.layers * s2 * model.heads * model.kv_channels
    total = 3.0 * (layers_fwd + logits)
    if recompute == "full":
        total += layers_fwd
    elif recompute == "selective":
        total += core
    return total


def decode_flops_per_token(model: ModelSpec, context: float) -> float:
    """One generated token attending to `context` cached tokens: 2N + 4 L ctx a d."""
    return 2.0 * matmul_params(model) + 4.0 * model.layers * context * model.heads * model.kv_channels


def megatron_paper_flops(batch: int, seq_len: int, layers: int, hidden: int, vocab: int,
                         full_recompute: bool = False) -> float:
    """Narayanan et al. 2021: 72 (or 96 with full recompute) B s l h^2 (1 + s/6h + V/(12|16) h l)."""
    if full_recompute:
        return 96.0 * batch * seq_len * layers * hidden**2 * (
            1 + seq_len / (6 * hidden) + vocab / (16 * layers * hidden))
    return 72.0 * batch * seq_len * layers * hidden**2 * (
        1 + seq_len / (6 * hidden) + vocab / (12 * layers * hidden))

"""Hugging Face ⇄ megatron-core names and layouts, per model family.

One mapping serves the converter tools and the live weight sync into the rollout engine.
Megatron names here use *global* layer indices (``decoder.layers.{i}``); :func:`global_names`
translates a pipeline stage's local names.

Layouts (verified against transformers' logits, see tests/test_conversion.py):
- ``linear_qkv`` rows are grouped per query group: for each of the ``ng`` kv groups, that group's
  query heads, then its k head, then its v head (weights and bias alike); a TP shard is a dim-0 chunk.
- ``linear_fc1`` = [gate; up]; TP rank r holds [gate_r; up_r], not a chunk of the concatenation.
- ``linear_proj`` and ``linear_fc2`` split on dim 1; embedding and output layer on (padded) vocab rows.
- Norms are replicated. TE fuses the pre-attention and pre-MLP norms into ``linear_qkv.layer_norm_weight``
  and ``linear_fc1.layer_norm_weight``; the local spec keeps ``input_layernorm`` / ``pre_mlp_layernorm``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from megatron_sgpo.model.hf_config import family_of, head_dim, num_kv_heads, padded_vocab_size

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")

# layer-local megatron suffix -> (HF suffix(es) under model.layers.{i}., layout kind)
_LAYER_RULES = {
    "self_attention.linear_qkv.weight": (
        ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"), "qkv"),
    "self_attention.linear_qkv.bias": (("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
                                       "qkv"),
    "self_attention.linear_qkv.layer_norm_weight": (("input_layernorm.weight",), "replicated"),
    "input_layernorm.weight": (("input_layernorm.weight",), "replicated"),
    "self_attention.q_layernorm.weight": (("self_attn.q_norm.weight",), "replicated"),
    "self_attention.k_layernorm.weight": (("self_attn.k_norm.weight",), "replicated"),
    "self_attention.linear_proj.weight": (("self_attn.o_proj.weight",), "dim1"),
    "mlp.linear_fc1.weight": (("mlp.gate_proj.weight", "mlp.up_proj.weight"), "fc1"),
    "mlp.linear_fc1.layer_norm_weight": (("post_attention_layernorm.weight",), "replicated"),
    "pre_mlp_layernorm.weight": (("post_attention_layernorm.weight",), "replicated"),
    "mlp.linear_fc2.weight": (("mlp.down_proj.weight",), "dim1"),
}
_GLOBAL_RULES = {
    "embedding.word_embeddings.weight": (("model.embed_tokens.weight",), "vocab"),
    "decoder.final_layernorm.weight": (("model.norm.weight",), "replicated"),
    "output_layer.weight": (("lm_head.weight",), "vocab"),
}


@dataclass(frozen=True)
class Rule:
    hf_names: tuple[str, ...]
    kind: str


class WeightMapping:
    """Converts between HF full tensors and megatron TP shards for one model config and TP size."""

    def __init__(self, hf_config: dict, tp: int = 1, make_vocab_size_divisible_by: int = 128):
        self.cfg = hf_config
        self.family = family_of(hf_config)
        self.tp = tp
        self.heads = hf_config["num_attention_heads"]
        self.groups = num_kv_heads(hf_config)
        self.head_dim = head_dim(hf_config)
        self.vocab_size = hf_config["vocab_size"]
        self.padded_vocab = padded_vocab_size(self.vocab_size, make_vocab_size_divisible_by, tp)
        self.tied = bool(hf_config.get("tie_word_embeddings", False))

    # ---- names -------------------------------------------------------------------------------
    def rule(self, mg_name: str) -> Rule:
        """The HF sources and layout of a megatron parameter (global layer index)."""
        m = _LAYER.match(mg_name)
        if m:
            layer, suffix = m.groups()
            if suffix not in _LAYER_RULES:
                raise KeyError(f"no HF mapping for megatron parameter {mg_name!r} ({self.family.name})")
            names, kind = _LAYER_RULES[suffix]
            return Rule(tuple(f"model.layers.{layer}.{n}" for n in names), kind)
        if mg_name not in _GLOBAL_RULES:
            raise KeyError(f"no HF mapping for megatron parameter {mg_name!r} ({self.family.name})")
        names, kind = _GLOBAL_RULES[mg_name]
        if mg_name == "output_layer.weight" and self.tied:
            names = ("model.embed_tokens.weight",)
        return Rule(names, kind)

    # ---- HF -> megatron ----------------------------------------------------------------------
    def full_megatron(self, mg_name: str, hf: dict) -> torch.Tensor:
        """The full (unsharded, vocab-padded) megatron tensor from HF tensors ``hf[name]``."""
        rule = self.rule(mg_name)
        parts = [hf[n] for n in rule.hf_names]
        if rule.kind == "qkv":
            return self._merge_qkv(*parts)
        if rule.kind == "fc1":
            gate, up = parts
            return torch.cat([torch.cat([g, u]) for g, u in zip(gate.chunk(self.tp), up.chunk(self.tp))])
        if rule.kind == "vocab":
            return self._pad_vocab(parts[0])
        return parts[0]

    def shard(self, mg_name: str, full: torch.Tensor, tp_rank: int) -> torch.Tensor:
        """This TP rank's slice of a full megatron tensor (``full_megatron`` output)."""
        kind = self.rule(mg_name).kind
        if kind == "replicated":
            return full
        dim = 1 if kind == "dim1" else 0
        return full.chunk(self.tp, dim=dim)[tp_rank].contiguous()

    def to_megatron(self, mg_name: str, hf: dict, tp_rank: int) -> torch.Tensor:
        return self.shard(mg_name, self.full_megatron(mg_name, hf), tp_rank)

    # ---- megatron -> HF ----------------------------------------------------------------------
    def to_hf(self, mg_name: str, shards: list[torch.Tensor], scratch=None) -> list[tuple[str, torch.Tensor]]:
        """HF (name, full tensor) pairs from all TP ranks' shards of one megatron parameter. From a single shard
        (TP=1) they are views of it where the layout allows, not copies: a weight sync copies each tensor once.
        A tensor that must be copied (shards concatenated, or grouped query heads regrouped) is written into
        ``scratch(hf_name, shape, dtype)`` when given (memory the caller keeps and reuses), else into new memory."""
        rule = self.rule(mg_name)
        names = rule.hf_names
        if rule.kind == "replicated":
            return [(names[0], shards[0])]
        if rule.kind == "dim1":
            return [(names[0], _cat(shards, 1, names[0], scratch))]
        if rule.kind == "vocab":
            return [(names[0], _cat(shards, 0, names[0], scratch)[: self.vocab_size])]
        if rule.kind == "fc1":
            halves = [s.chunk(2) for s in shards]
            return [(name, _cat([h[i] for h in halves], 0, name, scratch)) for i, name in enumerate(names)]
        return list(zip(names, self._split_qkv(_cat(shards, 0, mg_name, scratch), names, scratch)))

    # ---- layouts -----------------------------------------------------------------------------
    def _merge_qkv(self, q, k, v):
        ng, hd = self.groups, self.head_dim
        per_group = self.heads // ng
        tail = q.shape[1:]
        q = q.reshape(ng, per_group * hd, *tail)
        k = k.reshape(ng, hd, *tail)
        v = v.reshape(ng, hd, *tail)
        return torch.cat([q, k, v], dim=1).reshape(-1, *tail)

    def _split_qkv(self, fused, names=None, scratch=None):
        ng, hd = self.groups, self.head_dim
        per_group = self.heads // ng
        tail = fused.shape[1:]
        grouped = fused.reshape(ng, (per_group + 2) * hd, *tail)
        parts = grouped.split([per_group * hd, hd, hd], dim=1)
        if scratch is None or ng == 1:  # one query group: plain row blocks, so views
            return tuple(p.reshape(-1, *tail) for p in parts)
        out = []
        for name, part in zip(names, parts):
            dst = scratch(name, (part.shape[0] * part.shape[1], *tail), part.dtype)
            dst.view(part.shape).copy_(part)
            out.append(dst)
        return tuple(out)

    def _pad_vocab(self, t):
        if t.shape[0] != self.vocab_size:
            raise ValueError(f"vocab tensor has {t.shape[0]} rows but config vocab_size={self.vocab_size}")
        pad = self.padded_vocab - self.vocab_size
        return torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t


def _cat(shards: list[torch.Tensor], dim: int = 0, name: str = "", scratch=None) -> torch.Tensor:
    """torch.cat, without the copy when there is only one shard; into ``scratch(name, shape, dtype)`` if given."""
    if len(shards) == 1:
        return shards[0]
    if scratch is None:
        return torch.cat(shards, dim=dim)
    shape = list(shards[0].shape)
    shape[dim] = sum(s.shape[dim] for s in shards)
    return torch.cat(shards, dim=dim, out=scratch(name, tuple(shape), shards[0].dtype))


def global_names(chunk) -> dict[str, str]:
    """Map a model chunk's parameter names to names with global layer indices.

    Each megatron ``TransformerLayer`` knows its 1-based global ``layer_number``.
    """
    offsets = {}
    for local, layer in enumerate(chunk.decoder.layers):
        offsets[str(local)] = str(layer.layer_number - 1)
    out = {}
    for name, _ in chunk.named_parameters():
        m = _LAYER.match(name)
        out[name] = f"decoder.layers.{offsets[m.group(1)]}.{m.group(2)}" if m else name
    return out

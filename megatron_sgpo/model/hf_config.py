"""What a Hugging Face ``config.json`` says about a model, and whether a parallel layout can split it.

Supported families: Llama, Qwen2/2.5 (QKV bias), Qwen3 (q/k RMSNorm), Mistral.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

from megatron_sgpo.platform.layout import ParallelLayout


@dataclass(frozen=True)
class Family:
    """What distinguishes one supported HF architecture from another."""

    name: str
    qkv_bias: bool  # default when the config has no ``attention_bias`` key
    qk_norm: bool


FAMILIES = {
    "LlamaForCausalLM": Family("llama", qkv_bias=False, qk_norm=False),
    "MistralForCausalLM": Family("mistral", qkv_bias=False, qk_norm=False),
    "Qwen2ForCausalLM": Family("qwen2", qkv_bias=True, qk_norm=False),
    "Qwen3ForCausalLM": Family("qwen3", qkv_bias=False, qk_norm=True),
}


def load_hf_config(path_or_dict) -> dict:
    """An HF config as a dict, from a folder, a config.json path, a dict or a PretrainedConfig."""
    if isinstance(path_or_dict, dict):
        return dict(path_or_dict)
    if hasattr(path_or_dict, "to_dict"):
        return path_or_dict.to_dict()
    path = str(path_or_dict)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path) as f:
        return json.load(f)


def family_of(cfg: dict) -> Family:
    archs = cfg.get("architectures") or []
    for arch in archs:
        if arch in FAMILIES:
            return FAMILIES[arch]
    raise ValueError(f"unsupported architectures {archs}: supported are {sorted(FAMILIES)}")


def head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def num_kv_heads(cfg: dict) -> int:
    return cfg.get("num_key_value_heads") or cfg["num_attention_heads"]


MAX_PORTABLE_TP = 8


def padded_vocab_size(vocab_size: int, divisible_by: int = 128, tp: int = 1) -> int:
    """Rows of the embedding and output layer: a multiple of ``divisible_by × 8``, the same at every TP that divides
    it (1, 2, 4, 8, and 3 or 6 when it happens to divide), so checkpoints reshard across TP unchanged.

    Megatron-LM pads to ``divisible_by × TP``, which ties a checkpoint to its TP; the extra rows here are masked out
    of every softmax (train/logprob.py) and sliced off in HF exports, so they change no result.
    """
    multiple = divisible_by * MAX_PORTABLE_TP
    padded = int(math.ceil(vocab_size / multiple) * multiple)
    if padded % tp:
        raise ValueError(f"tensor parallel size tp={tp} does not divide the padded vocabulary of {padded} rows "
                         f"(vocab_size={vocab_size}, padded to a multiple of {multiple})")
    return padded


def validate_layout(cfg: dict, layout: ParallelLayout, world_size: int | None = None,
                    divisible_by: int = 128) -> None:
    """Fail before any compute when the model cannot be split this way; name the numbers."""
    family_of(cfg)
    heads, kv, layers = cfg["num_attention_heads"], num_kv_heads(cfg), cfg["num_hidden_layers"]
    if heads % layout.tp:
        raise ValueError(f"num_attention_heads={heads} is not divisible by tensor parallel size tp={layout.tp}")
    if kv % layout.tp:
        raise ValueError(f"num_key_value_heads={kv} is not divisible by tensor parallel size tp={layout.tp}")
    if layers % layout.stages:
        raise ValueError(
            f"num_hidden_layers={layers} is not divisible by pp*vpp={layout.pp}*{layout.vpp or 1}={layout.stages}"
        )
    padded_vocab_size(cfg["vocab_size"], divisible_by, layout.tp)
    if world_size is not None:
        layout.data_parallel_size(world_size)


def rope_settings(cfg: dict) -> tuple[float, dict | None]:
    """(theta, scaling dict or None), from transformers 4 (``rope_theta``/``rope_scaling``) or 5 (``rope_parameters``)."""
    params = cfg.get("rope_parameters")
    if params:
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        return float(theta), (params if params.get("rope_type", "default") != "default" else None)
    return float(cfg.get("rope_theta", 10000.0)), cfg.get("rope_scaling") or None

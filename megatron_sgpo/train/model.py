"""Build a megatron-core ``GPTModel`` from a Hugging Face ``config.json``.

Supported families: Llama, Qwen2/2.5 (QKV bias), Qwen3 (q/k RMSNorm), Mistral. The layer spec is
Transformer Engine's when TE imports and CUDA is present (optionally FP8), megatron's local spec
otherwise. Parameters are bf16 on GPU and fp32 on CPU unless the options say otherwise.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron_sgpo.platform import te
from megatron_sgpo.platform.dist import ParallelSizes


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

FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")


@dataclass(frozen=True)
class ModelOptions:
    """Per-run model choices that are not in the HF config."""

    make_vocab_size_divisible_by: int = 128
    dtype: str = "auto"  # auto = bf16 on GPU, fp32 on CPU; or "fp32" / "bf16"
    fp8: str | None = None  # None, "e4m3" or "hybrid"
    fp8_recipe: str = "delayed"
    recompute: str | None = None  # None, "selective" or "full"
    max_sequence_length: int | None = None  # default: the config's max_position_embeddings
    init_weights: bool = True  # False when checkpoint weights overwrite everything (skips random init)

    def __post_init__(self):
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"model dtype must be auto, fp32 or bf16, got {self.dtype!r}")
        if self.fp8 is not None and self.fp8 not in FP8_FORMATS:
            raise ValueError(f"fp8 format must be one of {FP8_FORMATS}, got {self.fp8!r}")
        if self.fp8_recipe not in FP8_RECIPES:
            raise ValueError(f"fp8_recipe must be one of {FP8_RECIPES}, got {self.fp8_recipe!r}")
        if self.recompute not in (None, "selective", "full"):
            raise ValueError(f"recompute must be None, 'selective' or 'full', got {self.recompute!r}")
        if self.make_vocab_size_divisible_by < 1:
            raise ValueError("make_vocab_size_divisible_by must be >= 1")

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[self.dtype]


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


def padded_vocab_size(vocab_size: int, divisible_by: int, tp: int) -> int:
    multiple = divisible_by * tp
    return int(math.ceil(vocab_size / multiple) * multiple)


def validate_layout(cfg: dict, sizes: ParallelSizes, world_size: int | None = None) -> None:
    """Fail before any compute when the model cannot be split this way; name the numbers."""
    family_of(cfg)
    heads, kv, layers = cfg["num_attention_heads"], num_kv_heads(cfg), cfg["num_hidden_layers"]
    if heads % sizes.tp:
        raise ValueError(f"num_attention_heads={heads} is not divisible by tensor parallel size tp={sizes.tp}")
    if kv % sizes.tp:
        raise ValueError(f"num_key_value_heads={kv} is not divisible by tensor parallel size tp={sizes.tp}")
    stages = sizes.pp * (sizes.vpp or 1)
    if layers % stages:
        raise ValueError(
            f"num_hidden_layers={layers} is not divisible by pp*vpp={sizes.pp}*{sizes.vpp or 1}={stages}"
        )
    if world_size is not None:
        sizes.data_parallel_size(world_size)


def rope_settings(cfg: dict) -> tuple[float, dict | None]:
    """(theta, scaling dict or None), from transformers 4 (``rope_theta``/``rope_scaling``) or 5 (``rope_parameters``)."""
    params = cfg.get("rope_parameters")
    if params:
        theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
        return float(theta), (params if params.get("rope_type", "default") != "default" else None)
    return float(cfg.get("rope_theta", 10000.0)), cfg.get("rope_scaling") or None


def _rope_kwargs(cfg: dict) -> dict:
    """Map HF rope settings to GPTModel's arguments; refuse what megatron cannot express."""
    theta, scaling = rope_settings(cfg)
    kwargs = {"rotary_base": theta}
    if not scaling:
        return kwargs
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "default":
        return kwargs
    if kind == "linear":
        kwargs["seq_len_interpolation_factor"] = float(scaling["factor"])
    elif kind == "llama3":
        # megatron hard-codes low=1, high=4, original=8192 (the Llama 3.1/3.3 values)
        fixed = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        for key, value in fixed.items():
            if float(scaling.get(key, value)) != value:
                raise ValueError(f"llama3 rope_scaling {key}={scaling[key]} unsupported by megatron (needs {value})")
        kwargs.update(rope_scaling=True, rope_scaling_factor=float(scaling["factor"]))
    else:
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: linear, llama3)")
    return kwargs


def use_transformer_engine() -> bool:
    return te.guard() and torch.cuda.is_available()


def transformer_config(cfg: dict, sizes: ParallelSizes, options: ModelOptions):
    """megatron ``TransformerConfig`` equivalent to the HF config, for this layout."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    family = family_of(cfg)
    dtype = options.torch_dtype()
    on_gpu = torch.cuda.is_available()
    if options.fp8 and not use_transformer_engine():
        raise ValueError(f"fp8={options.fp8!r} needs Transformer Engine and a CUDA GPU ({te.unavailable_reason() or 'no GPU'})")
    extra = {}
    if options.fp8:
        extra.update(fp8=options.fp8, fp8_recipe=options.fp8_recipe)
    if options.recompute:
        extra.update(recompute_granularity=options.recompute)
        if options.recompute == "full":
            extra.update(recompute_method="uniform", recompute_num_layers=1)
    return TransformerConfig(
        num_layers=cfg["num_hidden_layers"],
        hidden_size=cfg["hidden_size"],
        num_attention_heads=cfg["num_attention_heads"],
        num_query_groups=num_kv_heads(cfg),
        kv_channels=head_dim(cfg),
        ffn_hidden_size=cfg["intermediate_size"],
        normalization="RMSNorm",
        layernorm_epsilon=cfg.get("rms_norm_eps", 1e-6),
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=bool(cfg.get("attention_bias", family.qkv_bias)),
        qk_layernorm=family.qk_norm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.get("initializer_range", 0.02),
        tensor_model_parallel_size=sizes.tp,
        pipeline_model_parallel_size=sizes.pp,
        virtual_pipeline_model_parallel_size=sizes.vpp,
        context_parallel_size=sizes.cp,
        sequence_parallel=sizes.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        # gloo pairs batched isend/irecv wrongly when a rank's previous and next stage coincide
        batch_p2p_comm=on_gpu or sizes.vpp is None,
        variable_seq_lengths=sizes.pp > 1,  # RL micro-batches differ in length: send shapes first
        moe_token_dispatcher_type="alltoall",  # dense models; megatron rejects the default with the line above
        use_cpu_initialization=not on_gpu,
        perform_initialization=options.init_weights,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=on_gpu,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        **extra,
    )


def layer_spec(cfg: dict):
    from megatron.core.models.gpt import gpt_layer_specs

    qk_norm = family_of(cfg).qk_norm
    if use_transformer_engine():
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_norm)
    return gpt_layer_specs.get_gpt_layer_local_spec(qk_layernorm=qk_norm, normalization="RMSNorm")


def build_model(cfg, sizes: ParallelSizes, options: ModelOptions = ModelOptions()) -> list:
    """The GPTModel chunks this rank holds (one per virtual pipeline stage), on this rank's device.

    Call after :func:`megatron_sgpo.platform.dist.init_parallel` with the same ``sizes``.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    cfg = load_hf_config(cfg)
    validate_layout(cfg, sizes)
    config = transformer_config(cfg, sizes, options)
    spec = layer_spec(cfg)
    vocab = padded_vocab_size(cfg["vocab_size"], options.make_vocab_size_divisible_by, sizes.tp)
    max_len = options.max_sequence_length or cfg.get("max_position_embeddings", 4096)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    chunks = []
    for vp_stage in range(sizes.vpp or 1):
        stage = vp_stage if sizes.vpp else None
        model = GPTModel(
            config=config,
            transformer_layer_spec=spec,
            vocab_size=vocab,
            max_sequence_length=max_len,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            share_embeddings_and_output_weights=bool(cfg.get("tie_word_embeddings", False)),
            position_embedding_type="rope",
            vp_stage=stage,
            **_rope_kwargs(cfg),
        )
        chunks.append(model.to(device))
    return chunks

"""Build a megatron-core ``GPTModel`` from a Hugging Face ``config.json``.

The layer spec is Transformer Engine's when TE imports and CUDA is present (optionally FP8), megatron's
local spec otherwise (on CPU with sequence parallelism, with the CPU layer's SP-capable norms). Parameters
are bf16 on GPU and fp32 on CPU unless the options say otherwise.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from megatron_sgpo.choices import check_choices
from megatron_sgpo.model.hf_config import (
    family_of,
    head_dim,
    load_hf_config,
    num_kv_heads,
    padded_vocab_size,
    rope_settings,
    validate_layout,
)
from megatron_sgpo.platform import cpu, te
from megatron_sgpo.platform.layout import ParallelLayout


@dataclass(frozen=True)
class ModelOptions:
    """Per-run model choices that are not in the HF config."""

    make_vocab_size_divisible_by: int = 128
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 on GPU, fp32 on CPU
    recompute: Optional[Literal["selective", "full"]] = None
    max_sequence_length: Optional[int] = None  # default: the config's max_position_embeddings
    init_weights: bool = True  # False when checkpoint weights overwrite everything (skips random init)

    def __post_init__(self):
        check_choices(self)
        if self.make_vocab_size_divisible_by < 1:
            raise ValueError("make_vocab_size_divisible_by must be >= 1")

    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_available() else torch.float32
        return {"fp32": torch.float32, "bf16": torch.bfloat16}[self.dtype]


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


def fused_softmax_available() -> bool:
    """Whether the local spec's fused masked softmax can run: it imports apex's CUDA extension at call time
    (``scaled_upper_triang_masked_softmax_cuda``), so a GPU without apex must use the torch softmax."""
    return torch.cuda.is_available() and importlib.util.find_spec("scaled_upper_triang_masked_softmax_cuda") is not None


def _keep_values(tensor: torch.Tensor) -> None:
    """Init method that leaves ``tensor`` as allocated (weights about to be loaded)."""


def transformer_config(cfg: dict, layout: ParallelLayout, options: ModelOptions):
    """megatron ``TransformerConfig`` equivalent to the HF config, for this layout."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    family = family_of(cfg)
    dtype = options.torch_dtype()
    on_gpu = torch.cuda.is_available()
    if layout.fp8 and not use_transformer_engine():
        raise ValueError(f"fp8={layout.fp8!r} needs Transformer Engine and a CUDA GPU "
                         f"({te.unavailable_reason() or 'no GPU'})")
    extra = {}
    if layout.fp8:
        extra.update(fp8=layout.fp8, fp8_recipe=layout.fp8_recipe or "delayed")
    if not options.init_weights:
        # megatron tags TP-sharded weights (tensor_model_parallel, partition_dim) only inside its init routines, and
        # grad-norm/clipping read those tags: keep the routines, make the random fill a no-op (checkpoint overwrites)
        extra.update(init_method=_keep_values, output_layer_init_method=_keep_values,
                     embedding_init_method=_keep_values)
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
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp,
        context_parallel_size=layout.cp,
        sequence_parallel=layout.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        # Interleaved: one direction per p2p call, as Megatron-LM requires at PP=2 (there a rank's previous and
        # next stage are one rank, and ops to it in one call, batched shapes included, pair in posting order)
        batch_p2p_comm=layout.vpp is None,
        overlap_p2p_comm=layout.vpp is not None,
        variable_seq_lengths=layout.pp > 1,  # RL micro-batches differ in length: send shapes first
        moe_token_dispatcher_type="alltoall",  # dense models; megatron rejects the default with the line above
        use_cpu_initialization=not on_gpu,
        perform_initialization=True,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=fused_softmax_available(),
        persist_layer_norm=False,
        apply_rope_fusion=False,
        **extra,
    )


def _cpu_sequence_parallel(sequence_parallel: bool) -> bool:
    """Whether the local spec needs the CPU layer's SP-capable norm (megatron's own refuses SP)."""
    return sequence_parallel and not torch.cuda.is_available()


def _swap(spec, old, new):
    """``spec`` with every occurrence of module ``old`` in its (nested dataclass) tree replaced by ``new``."""
    if spec is old:
        return new
    if not dataclasses.is_dataclass(spec) or isinstance(spec, type):
        return spec
    return dataclasses.replace(spec, **{f.name: _swap(getattr(spec, f.name), old, new)
                                        for f in dataclasses.fields(spec) if f.init})


def layer_spec(cfg: dict, sequence_parallel: bool = False):
    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    qk_norm = family_of(cfg).qk_norm
    if use_transformer_engine():
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_norm)
    spec = gpt_layer_specs.get_gpt_layer_local_spec(qk_layernorm=qk_norm, normalization="RMSNorm")
    if _cpu_sequence_parallel(sequence_parallel):  # every norm: input, pre-MLP and q/k
        spec = _swap(spec, WrappedTorchNorm, cpu.SequenceParallelNorm)
    return spec


def _decoder_spec(spec, config, stage: Optional[int]):
    """What GPTModel builds its decoder from. From a layer spec megatron takes its default final norm, which
    refuses SP on CPU; there the block is spelled out (as megatron would) with the SP-capable norm last."""
    if use_transformer_engine() or not _cpu_sequence_parallel(config.sequence_parallel):
        return spec
    from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build

    layers = get_num_layers_to_build(config, vp_stage=stage)
    return TransformerBlockSubmodules(layer_specs=[spec] * layers, layer_norm=cpu.SequenceParallelNorm)


def build_model(cfg, layout: ParallelLayout, options: ModelOptions = ModelOptions()) -> list:
    """The GPTModel chunks this rank holds (one per virtual pipeline stage), on this rank's device.

    Call after :func:`megatron_sgpo.platform.dist.init_parallel` with the same layout.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel

    cfg = load_hf_config(cfg)
    validate_layout(cfg, layout)
    config = transformer_config(cfg, layout, options)
    spec = layer_spec(cfg, layout.sequence_parallel)
    vocab = padded_vocab_size(cfg["vocab_size"], options.make_vocab_size_divisible_by, layout.tp)
    max_len = options.max_sequence_length or cfg.get("max_position_embeddings", 4096)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    chunks = []
    for vp_stage in range(layout.vpp or 1):
        stage = vp_stage if layout.vpp else None
        model = GPTModel(
            config=config,
            transformer_layer_spec=_decoder_spec(spec, config, stage),
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

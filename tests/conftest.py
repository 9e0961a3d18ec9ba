"""Shared fixtures: tiny random Hugging Face models of every supported family, saved as safetensors."""
import os

import pytest
import torch

# families -> (transformers config class name, extra config)
FAMILIES = {
    "llama": ("LlamaConfig", {"tie_word_embeddings": False,
                              "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"tie_word_embeddings": False, "head_dim": 8}),
    "mistral": ("MistralConfig", {"tie_word_embeddings": False, "sliding_window": None}),
}


def make_tiny_hf(path: str, family: str, seed: int = 0, layers: int = 4) -> str:
    """A randomly initialised tiny model of ``family`` saved with save_pretrained (safetensors)."""
    import transformers

    cls_name, extra = FAMILIES[family]
    config = getattr(transformers, cls_name)(
        hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=64, rms_norm_eps=1e-6,
        rope_theta=10000.0, **extra,
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():  # random, non-trivial norms and biases so the mapping of each is tested
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {f: make_tiny_hf(os.path.join(root, f), f) for f in FAMILIES}


@pytest.fixture(scope="session")
def tokens():
    return torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(3))

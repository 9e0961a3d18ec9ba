"""Test helpers: a tiny random Llama with a word-level tokenizer, and free ports."""

import torch

from megatron_sgpo.platform.dist import free_port  # noqa: F401  (used by the rollout tests)

VOCAB = 256


def teacher_forced_logprobs(model, prompt, completion, temperature):
    """The engine contract's log-probs, from one forward pass: log_softmax(logits / T) (greedy: T = 1)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1: -1].float()
    if temperature > 0:
        logits = logits / temperature
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0]


def build_tiny_model(path: str, seed: int = 0, eos_token: str | None = "</s>", **overrides) -> str:
    """A random 2-layer Llama; `eos_token=None` gives a tokenizer without EOS (SGLang stops on the tokenizer's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=2048,
               bos_token_id=1, eos_token_id=None, pad_token_id=0, tie_word_embeddings=False)
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.generation_config.eos_token_id = None
    model.save_pretrained(path)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                            eos_token=eos_token).save_pretrained(path)
    return path


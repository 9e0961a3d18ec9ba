"""Write a tiny random-init HF checkpoint of a recipe's model family, for the recipes' tiny-scale copies on CPU.

The shipped GPU recipes train Qwen2.5-7B-Instruct and Llama-3.3-70B-Instruct on English word problems, rendered
with the model's chat template. Their tiny copies (examples/tiny/) keep every key and feature and swap only
sizes, world size and engine, so the stand-in model must read any text and carry a chat template too: a
byte-level tokenizer (256 byte symbols + the family's special tokens, no merges) and a chat template written
in the family's layout (ChatML for Qwen2, header blocks for Llama 3).

    python tools/make_tiny_checkpoint.py qwen2 /tmp/tiny-qwen2
"""
from __future__ import annotations

import argparse
import sys

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAMA3 = ("<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
FAMILIES = {  # transformers config class, extra config, special tokens (eos last), chat template
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": False}, ["<|im_start|>", "<|im_end|>"], CHATML),
    "llama": ("LlamaConfig", {"tie_word_embeddings": False},
              ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], LLAMA3),
}


def byte_level_tokenizer(specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({tok: len(vocab) + i for i, tok in enumerate(specials)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=specials[-1], pad_token=specials[-1],
                                   additional_special_tokens=specials[:-1])


def make(family: str, out: str, seed: int = 0) -> str:
    import torch
    import transformers

    cls, extra, specials, template = FAMILIES[family]
    tokenizer = byte_level_tokenizer(specials)
    tokenizer.chat_template = template
    config = getattr(transformers, cls)(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("family", choices=sorted(FAMILIES))
    p.add_argument("out")
    a = p.parse_args(argv)
    print(make(a.family, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

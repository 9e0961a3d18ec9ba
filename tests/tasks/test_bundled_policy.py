"""The bundled quickstart policy: a small HF Llama folder that loads and already does arithmetic."""
import json

import pytest
import torch

from megatron_sgpo.tasks import arith
from megatron_sgpo.tasks.registry import BUNDLED_POLICY

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def policy():
    tok = transformers.AutoTokenizer.from_pretrained(BUNDLED_POLICY)
    model = transformers.AutoModelForCausalLM.from_pretrained(BUNDLED_POLICY)
    return tok, model.eval()


def test_folder_is_small_and_complete():
    names = {p.name for p in BUNDLED_POLICY.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    total = sum(p.stat().st_size for p in BUNDLED_POLICY.iterdir())
    assert total < 8 * 2**20


def test_config_exercises_gqa_and_tied_embeddings(policy):
    _, model = policy
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.tie_word_embeddings
    assert cfg.num_key_value_heads < cfg.num_attention_heads
    assert cfg.vocab_size <= 64
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.dtype == torch.float32


def test_tokenizer_round_trips_a_prompt_character_by_character(policy):
    tok, _ = policy
    prompt = arith.format_prompt("37+45")
    ids = tok(prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + len(prompt)
    assert tok.decode(ids, skip_special_tokens=True) == prompt
    assert {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id} <= set(range(len(tok)))
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert tok.padding_side == "left"  # batched generation needs left padding


def test_greedy_answers_are_well_formed_and_easy_level_is_solved(policy):
    tok, model = policy
    tok.padding_side = "left"
    items = arith.generate(16, levels=(1, 4, 5), seed=99)
    enc = tok([i.prompt for i in items], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], do_sample=False,
                             max_new_tokens=8, pad_token_id=tok.pad_token_id)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert all(t.strip().isdigit() for t in texts), texts  # integers, then eos
    verifier = arith.ArithVerifier()
    solved = {lv: sum(verifier.score(i, t) for i, t in zip(items, texts) if i.meta["level"] == lv)
              for lv in (1, 4, 5)}
    assert solved[1] >= 14 and solved[5] == 0


def test_training_record_matches_the_documented_spread():
    info = json.loads((BUNDLED_POLICY / "training_info.json").read_text())
    rates = {int(k): v for k, v in info["success_rate_by_level"].items()}
    assert rates[1] > 0.85 and rates[5] < 0.02
    assert any(0.1 < rates[lv] < 0.9 for lv in (2, 3, 4))  # medium prompts exist for sGPO
    assert all(rates[a] >= rates[b] for a, b in zip(range(1, 5), range(2, 6)))

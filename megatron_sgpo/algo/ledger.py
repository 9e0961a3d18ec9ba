"""Compute ledger: FLOPs and tokens of profiling, rollout, training and log-prob passes.

sGPO's claim is about *total* compute, profiling included, so every phase is
accounted with one formula and the totals are checkpointed with the run.

FLOPs of one forward pass over a sequence of T tokens (prompt + response):

    forward(T) = 2 * N * T + attn(T),   attn(T) = 2 * L * d_attn * T * (T + 1)

N is the matmul parameter count below (LM head included, embedding lookup
excluded), L the number of layers, d_attn = heads * head_dim. attn(T) is the
exact causal count: token t attends t positions, QK^T and AV each cost
2 * d_attn * t per layer, so sum_t 4 * L * d_attn * t. Per token this is
2 * L * d_attn * (T + 1), Kaplan et al.'s 2 * n_layer * n_ctx * d_attn.
Generation with a KV cache does the same arithmetic, so inference = forward(T);
training = 3 * forward(T) (backward is twice the forward, i.e. 6N per token
plus 3x attention); an extra old/reference log-prob pass = forward(T).
"""
from __future__ import annotations

from dataclasses import dataclass

PHASES = ("profiling", "rollout", "training", "logprob")


@dataclass(frozen=True)
class ModelDims:
    hidden: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden: int
    vocab_size: int
    tied_embeddings: bool = False
    gated_mlp: bool = True
    qkv_bias: bool = False

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "ModelDims":
        """Read a Hugging Face ``config.json`` dict (Llama, Qwen2/3, Mistral field names)."""
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim") or hidden // heads
        return cls(
            hidden=hidden,
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            ffn_hidden=int(cfg["intermediate_size"]),
            vocab_size=int(cfg["vocab_size"]),
            tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            gated_mlp=cfg.get("hidden_act", "silu") in ("silu", "swiglu"),
            qkv_bias=bool(cfg.get("attention_bias", False)) or cfg.get("model_type") == "qwen2",
        )

    @property
    def d_attn(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """q, k, v, o projections (+ q/k/v bias), MLP (3 matrices if gated, else 2), two norms."""
        h, hd = self.hidden, self.head_dim
        attn = h * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.qkv_bias:
            attn += hd * (self.num_heads + 2 * self.num_kv_heads)
        mlp = (3 if self.gated_mlp else 2) * h * self.ffn_hidden
        return attn + mlp + 2 * h

    @property
    def non_embedding_params(self) -> int:
        """N for the FLOP formulas: layers + final norm + LM head (a matmul even when tied)."""
        return self.num_layers * self.layer_params + self.hidden + self.hidden * self.vocab_size

    @property
    def total_params(self) -> int:
        """Stored parameters: N plus the input embedding unless it is tied to the LM head."""
        return self.non_embedding_params + (0 if self.tied_embeddings else self.hidden * self.vocab_size)


def attention_flops(dims: ModelDims, seq_len: int) -> int:
    """2 * L * d_attn * T * (T + 1): causal QK^T and AV over a T-token sequence."""
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    return 2 * dims.num_layers * dims.d_attn * seq_len * (seq_len + 1)


def forward_flops(dims: ModelDims, seq_len: int) -> int:
    """2 * N * T + attn(T): one forward pass, also the cost of generating it (inference)."""
    return 2 * dims.non_embedding_params * seq_len + attention_flops(dims, seq_len)


def inference_flops(dims: ModelDims, prompt_len: int, response_len: int) -> int:
    return forward_flops(dims, prompt_len + response_len)


def training_flops(dims: ModelDims, seq_len: int) -> int:
    """Forward + backward = 3 * forward = 6 * N * T + 3 * attn(T)."""
    return 3 * forward_flops(dims, seq_len)


def logprob_flops(dims: ModelDims, seq_len: int) -> int:
    """An extra forward for old-policy or reference log-probs."""
    return forward_flops(dims, seq_len)


class ComputeLedger:
    """Cumulative tokens and FLOPs per phase and per step; total == sum of the parts.

    Entries added before the first ``start_step`` (the profiling pass) are
    booked under step -1.
    """

    def __init__(self) -> None:
        self.current_step = -1
        self._steps: dict[int, dict[str, list[int]]] = {}

    def start_step(self, step: int) -> None:
        if step < self.current_step:
            raise ValueError(f"steps must not go backwards: {step} < {self.current_step}")
        self.current_step = step

    def add(self, phase: str, tokens: int, flops: int | float) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if tokens < 0 or flops < 0:
            raise ValueError(f"tokens and flops must be >= 0, got {tokens}, {flops}")
        cell = self._steps.setdefault(self.current_step, {}).setdefault(phase, [0, 0])
        cell[0] += tokens
        cell[1] += flops

    def step_totals(self, step: int) -> dict[str, dict[str, int | float]]:
        d = self._steps.get(step, {})
        return {p: {"tokens": d[p][0], "flops": d[p][1]} for p in PHASES if p in d}

    def phase_totals(self) -> dict[str, dict[str, int | float]]:
        out = {p: {"tokens": 0, "flops": 0} for p in PHASES}
        for d in self._steps.values():
            for p, (tok, fl) in d.items():
                out[p]["tokens"] += tok
                out[p]["flops"] += fl
        return out

    @property
    def total_flops(self) -> int | float:
        return sum(v["flops"] for v in self.phase_totals().values())

    @property
    def total_tokens(self) -> int:
        return sum(v["tokens"] for v in self.phase_totals().values())

    def to_dict(self) -> dict:
        return {
            "current_step": self.current_step,
            "steps": {str(s): {p: list(v) for p, v in d.items()} for s, d in self._steps.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ComputeLedger":
        led = cls()
        led.current_step = int(d["current_step"])
        led._steps = {int(s): {p: list(v) for p, v in ph.items()} for s, ph in d["steps"].items()}
        return led

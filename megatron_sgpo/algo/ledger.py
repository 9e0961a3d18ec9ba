"""Compute ledger: FLOPs and tokens of profiling, rollout, training and log-prob passes.

sGPO's claim is about *total* compute, profiling included, so every phase is booked with the
ledger convention of :mod:`megatron_sgpo.model.flops` (exact causal attention, one formula for
every phase) and the totals are checkpointed with the run.
"""
from __future__ import annotations

PHASES = ("profiling", "rollout", "training", "logprob")


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

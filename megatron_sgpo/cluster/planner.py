"""Enumerate training x engine x placement layouts, reject the unbuildable, rank by step time.

A layout is rejected for the first class of reason it meets: divisibility (with the numbers),
then memory (with the per-GPU breakdown against capacity). Everything feasible is ranked by the
predicted time of one on-policy sGPO step (timing.py). The result is a :class:`LayoutRanking`,
not to be confused with the sGPO sampling plan (``megatron_sgpo.algo.plan.Plan``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product

from megatron_sgpo.model.flops import RECOMPUTE
from megatron_sgpo.platform.layout import ParallelLayout

from .layouts import EngineLayout, Placement, TrainSetup, engine_divisibility, train_divisibility
from .lengths import response_dist, sequences_per_step
from .memory import EngineMemory, StageMemory, colocated_peak, engine_memory, train_memory
from .spec import GIB, PlanInputs
from .timing import StepTime, num_microbatches, profile_seconds, rollout_seconds, step_time, train_gpus

ENGINE_TP_OPTIONS = (1, 2, 4, 8)
VPP_OPTIONS = (None, 2, 4)  # None: no interleaving
CP_OPTIONS = (1, 2)


@dataclass
class Candidate:
    train: TrainSetup
    engine: EngineLayout
    placement: Placement
    reasons: list[str] = field(default_factory=list)
    train_mem: StageMemory | None = None
    engine_mem: EngineMemory | None = None
    peak_bytes: float = 0.0
    peak_phase: str = ""
    time: StepTime | None = None

    @property
    def feasible(self) -> bool:
        return not self.reasons

    def label(self) -> str:
        return f"{self.placement.label()} {self.train.label()} | engines {self.engine.label()}"

    def as_dict(self) -> dict:
        setup, lay = self.train, self.train.layout
        d = {
            "placement": self.placement.label(),
            "train": {"tp": lay.tp, "pp": lay.pp, "vpp": lay.vpp or 1, "cp": lay.cp, "dp": lay.dp,
                      "sequence_parallel": lay.sequence_parallel, "recompute": setup.recompute,
                      "distributed_optimizer": setup.distributed_optimizer,
                      "micro_batch_size": setup.micro_batch_size},
            "engine": {"tp": self.engine.tp, "engines": self.engine.engines},
            "feasible": self.feasible,
            "reasons": list(self.reasons),
        }
        if self.train_mem is not None:
            d["train_memory_gib"] = self.train_mem.as_gib()
        if self.engine_mem is not None:
            d["engine_memory"] = self.engine_mem.as_gib()
        if self.peak_bytes:
            d["peak_gib"] = self.peak_bytes / GIB
            d["peak_phase"] = self.peak_phase
        if self.time is not None:
            d["step_seconds"] = self.time.as_dict()
        return d


@dataclass
class LayoutRanking:
    """Feasible candidates fastest first, the rejected ones with their reasons."""

    feasible: list[Candidate]
    rejected: list[Candidate]
    n_seqs: int
    notes: dict


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def placements(nodes: int) -> list[Placement]:
    out = [Placement(True, nodes, nodes)]
    out += [Placement(False, nodes - e, e) for e in range(1, nodes)]
    return out


def train_setups(gpus: int, gpus_per_node: int) -> list[TrainSetup]:
    """Every TP x CP x PP x VPP x recompute x distopt on `gpus` GPUs with integer DP."""
    out = []
    tps = [t for t in _divisors(gpus_per_node) if t <= 8]
    for tp, cp in product(tps, CP_OPTIONS):
        if gpus % (tp * cp):
            continue
        for pp in _divisors(gpus // (tp * cp)):
            dp = gpus // (tp * cp * pp)
            for vpp in VPP_OPTIONS:
                if vpp and pp == 1:  # interleaving needs a pipeline
                    continue
                lay = ParallelLayout(tp=tp, pp=pp, vpp=vpp, cp=cp, dp=dp, sequence_parallel=tp > 1)
                out += [TrainSetup(lay, recompute=rc, distributed_optimizer=do)
                        for rc, do in product(RECOMPUTE, (True, False))]
    return out


class Planner:
    """Evaluates layouts for one (model, cluster, workload); caches what depends on engines only."""

    def __init__(self, inputs: PlanInputs):
        self.inputs = inputs
        self.dist = response_dist(inputs.workload)
        self.n_seqs = sequences_per_step(inputs.workload)
        self._rollout: dict = {}

    def _engine(self, eng: EngineLayout) -> tuple[EngineMemory, float, float]:
        key = (eng.tp, eng.engines)
        if key not in self._rollout:
            m, cl, w = self.inputs.model, self.inputs.cluster, self.inputs.workload
            em = engine_memory(m, eng, cl.gpu_memory_bytes, w.mem_fraction,
                               cl.engine_workspace_gib * GIB)
            ro = rollout_seconds(m, cl, eng, self.n_seqs, w.prompts_per_step, w.prompt_len,
                                 self.dist, em.kv_tokens) if em.kv_tokens > 0 else float("inf")
            prof = profile_seconds(m, cl, w, eng, self.dist, em.kv_tokens) if em.kv_tokens > 0 else 0
            self._rollout[key] = (em, ro, prof)
        return self._rollout[key]

    def evaluate(self, setup: TrainSetup, eng: EngineLayout, place: Placement) -> Candidate:
        m, cl, w = self.inputs.model, self.inputs.cluster, self.inputs.workload
        c = Candidate(setup, eng, place)
        c.reasons += train_divisibility(m, setup.layout, cl.gpus_per_node, w.max_seq)
        c.reasons += engine_divisibility(m, eng, cl.gpus_per_node)
        gbs = w.train_global_batch  # 0: the whole step, split unevenly by the DP-aware batcher
        dp_mb = setup.layout.dp * setup.micro_batch_size
        if gbs and gbs % dp_mb:
            c.reasons.append(f"train global batch {gbs} not divisible by DP*micro-batch={dp_mb}")
        if c.reasons:
            return c
        cap = cl.gpu_memory_bytes
        m_micro = num_microbatches(w, setup, self.n_seqs)
        c.train_mem = tm = train_memory(m, setup, w.max_seq, m_micro, cl.workspace_gib * GIB,
                                        cl.flash_attention)
        em, ro, prof = self._engine(eng)
        c.engine_mem = em
        budget = w.mem_fraction * cap
        if em.weights > budget:
            c.reasons.append(
                f"engine weights {em.weights / GIB:.1f} GiB/GPU > mem_fraction {w.mem_fraction} x "
                f"{cl.gpu_memory_gib} GiB = {budget / GIB:.1f} GiB (engine TP={eng.tp})")
        elif em.kv_tokens < w.max_seq:
            c.reasons.append(
                f"engine KV pool {em.kv_pool / GIB:.1f} GiB/GPU holds {em.kv_tokens:,.0f} tokens "
                f"< one {w.max_seq}-token sequence (weights {em.weights / GIB:.1f} GiB/GPU at "
                f"mem_fraction {w.mem_fraction})")
        if place.colocated:
            c.peak_bytes, c.peak_phase = colocated_peak(tm, em, w.offload_training_when_colocated,
                                                        cl.engine_residual_gib * GIB)
        else:
            c.peak_bytes, c.peak_phase = max((tm.total, "train"), (em.peak, "rollout"))
        if c.peak_bytes > cap:
            g = tm.as_gib()
            c.reasons.append(
                f"memory {c.peak_bytes / GIB:.1f} GiB > {cl.gpu_memory_gib:.1f} GiB in the "
                f"{c.peak_phase} phase ({tm.stage} stage: weights {g['weights']:.1f}, grads "
                f"{g['grads']:.1f}, optimizer {g['optimizer']:.1f}, activations "
                f"{g['activations']:.1f}, logits {g['logits']:.1f}, workspace {g['workspace']:.1f}; "
                f"engine {em.peak / GIB:.1f})")
        if c.reasons:
            return c
        c.time = step_time(m, cl, w, setup, eng, place, tm, self.dist, self.n_seqs, em.kv_tokens,
                           rollout_s=ro, profile_s=prof)
        return c

    def candidates(self) -> list[Candidate]:
        cl = self.inputs.cluster
        out = []
        for place in placements(cl.nodes):
            eg = cl.world if place.colocated else place.engine_nodes * cl.gpus_per_node
            engines = [EngineLayout(t, eg // t) for t in ENGINE_TP_OPTIONS if eg % t == 0]
            for setup, eng in product(train_setups(train_gpus(cl, place), cl.gpus_per_node), engines):
                out.append(self.evaluate(setup, eng, place))
        return out

    def rank(self) -> LayoutRanking:
        cands = self.candidates()
        ok = sorted((c for c in cands if c.feasible), key=lambda c: c.time.total)
        bad = [c for c in cands if not c.feasible]
        w = self.inputs.workload
        notes = {"sequences_per_step": self.n_seqs,
                 "response_mean_truncated": self.dist.truncated_mean,
                 "response_expected_max": self.dist.expected_max(self.n_seqs),
                 "response_frac_truncated": self.dist.frac_truncated,
                 "max_seq": w.max_seq, "evaluated": len(cands)}
        return LayoutRanking(feasible=ok, rejected=bad, n_seqs=self.n_seqs, notes=notes)


def rank_layouts(inputs: PlanInputs) -> LayoutRanking:
    return Planner(inputs).rank()

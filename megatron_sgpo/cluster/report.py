"""Human and JSON views of a LayoutRanking: the ranked table, and a sample of rejections by reason."""
from __future__ import annotations

import json
import re

from .planner import Candidate, LayoutRanking
from .spec import GIB, PlanInputs

HEADER = ("#", "placement", "training", "SP", "recomp", "distopt", "engines", "mem GiB",
          "KV tok/eng", "rollout", "logprob", "train", "sync", "offload", "profile", "step s")


def _row(i: int, c: Candidate) -> tuple:
    t, setup = c.time, c.train
    return (str(i), c.placement.label(), setup.label(),
            "on" if setup.layout.sequence_parallel else "off", setup.recompute,
            "on" if setup.distributed_optimizer else "off", c.engine.label(),
            f"{c.peak_bytes / GIB:.1f}", f"{c.engine_mem.kv_tokens / 1e3:,.0f}k",
            f"{t.rollout:.1f}", f"{t.logprob:.1f}", f"{t.train:.1f}", f"{t.sync:.1f}",
            f"{t.offload:.1f}", f"{t.profile:.1f}", f"{t.total:.1f}")


def markdown_table(rows: list[tuple], header: tuple = HEADER) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "| " + " | ".join(str(x).ljust(w) for x, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(header), sep, *map(fmt, rows)])


def distinct(candidates: list[Candidate]) -> list[Candidate]:
    """Best variant (recompute, distopt) of each placement x parallel sizes x engines, in order."""
    seen, out = set(), []
    for c in candidates:
        if c.label() not in seen:
            seen.add(c.label())
            out.append(c)
    return out


def top_table(candidates: list[Candidate], top: int = 10) -> str:
    return markdown_table([_row(i + 1, c) for i, c in enumerate(candidates[:top])])


def reason_kind(reason: str) -> str:
    """Reason with its numbers blanked, so rejections group by cause."""
    return re.sub(r"\d+(\.\d+)?", "#", reason.split("(")[0]).strip()


def rejected_sample(rejected: list[Candidate], per_kind: int = 1) -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    out = []
    for c in rejected:
        kind = reason_kind(c.reasons[0])
        if seen.get(kind, 0) < per_kind:
            seen[kind] = seen.get(kind, 0) + 1
            out.append((c.label(), "; ".join(c.reasons)))
    return out


def reason_counts(rejected: list[Candidate]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in rejected:
        k = reason_kind(c.reasons[0])
        counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def text_report(inputs: PlanInputs, ranking: LayoutRanking, top: int = 10,
                checks: list[Candidate] | None = None, all_variants: bool = False) -> str:
    m, cl, w = inputs.model, inputs.cluster, inputs.workload
    shown = ranking.feasible if all_variants else distinct(ranking.feasible)
    n = ranking.notes
    lines = [
        f"model {m.name}: h={m.hidden} L={m.layers} heads={m.heads}/{m.kv_heads} ffn={m.ffn} "
        f"V={m.vocab}",
        f"cluster {cl.name}: {cl.nodes}x{cl.gpus_per_node} GPUs, {cl.gpu_memory_gib} GiB, "
        f"{cl.peak_bf16_tflops} TFLOP/s bf16, MFU {cl.train_mfu}, rollout eff {cl.rollout_efficiency}",
        f"step: {w.prompts_per_step} prompts -> {n['sequences_per_step']} sequences, prompt "
        f"{w.prompt_len}, response mean {n['response_mean_truncated']:.0f} (truncated), expected "
        f"longest {n['response_expected_max']:.0f}, max {w.response_max}",
        f"evaluated {n['evaluated']} layouts: {len(ranking.feasible)} feasible, "
        f"{len(ranking.rejected)} rejected",
        "",
        top_table(shown, top) if shown else "no feasible layout",
    ]
    if checks:
        lines += ["", "checked layouts:"]
        for c in checks:
            if c.feasible:
                rank = next((i + 1 for i, f in enumerate(shown) if f.label() == c.label()), None)
                lines.append(f"  {c.label()}: feasible, rank {rank} of {len(shown)}, peak "
                             f"{c.peak_bytes / GIB:.1f} GiB, step {c.time.total:.1f} s "
                             + " ".join(f"{k}={v:.1f}" for k, v in c.time.as_dict().items()))
            else:
                lines.append(f"  {c.label()}: REJECTED: " + "; ".join(c.reasons))
    lines += ["", "rejections by cause:"]
    lines += [f"  {v:6d}  {k}" for k, v in reason_counts(ranking.rejected).items()]
    lines += ["", "sample of rejected layouts:"]
    lines += [f"  {lab}: {why}" for lab, why in rejected_sample(ranking.rejected)]
    return "\n".join(lines)


def json_report(inputs: PlanInputs, ranking: LayoutRanking, top: int = 10,
                checks: list[Candidate] | None = None, all_variants: bool = False) -> str:
    shown = ranking.feasible if all_variants else distinct(ranking.feasible)
    doc = {
        "inputs": inputs.sources,
        "notes": ranking.notes,
        "top": [c.as_dict() for c in shown[:top]],
        "feasible_count": len(ranking.feasible),
        "rejected_count": len(ranking.rejected),
        "rejections_by_cause": reason_counts(ranking.rejected),
        "rejected_sample": [{"layout": a, "reasons": b} for a, b in rejected_sample(ranking.rejected)],
        "checks": [c.as_dict() for c in checks or []],
    }
    return json.dumps(doc, indent=2)

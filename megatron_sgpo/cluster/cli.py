"""Rank training/engine layouts for an sGPO step on a cluster (see docs/planner.md).

    sgpo plan (or python tools/plan_cluster.py) --model-config examples/configs/llama-3.3-70b-config.json \
        --cluster examples/clusters/h100-8x8-grpo-70b.yaml \
        --check colocated,tp=4,pp=4,engine_tp=8
"""
from __future__ import annotations

import argparse
import sys

import yaml

from megatron_sgpo.cluster import EngineLayout, Placement, Planner, TrainSetup, load_inputs
from megatron_sgpo.cluster.report import json_report, text_report
from megatron_sgpo.platform.layout import ParallelLayout

_INT_KEYS = {"tp", "pp", "vpp", "cp", "engine_tp", "train_nodes", "micro_batch_size"}


def parse_check(spec: str, nodes: int, gpus_per_node: int) -> tuple:
    """'colocated,tp=4,pp=4,engine_tp=8[,vpp=1,cp=1,recompute=none,distopt=1,sp=1]' or
    'train_nodes=6,...' for a split placement."""
    kv = {"recompute": "none", "distopt": "1"}
    colocated = True
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part == "colocated":
            continue
        key, _, val = part.partition("=")
        kv[key] = val
    if "train_nodes" in kv:
        colocated = False
    unknown = set(kv) - _INT_KEYS - {"recompute", "distopt", "sp"}
    if unknown:
        raise SystemExit(f"--check: unknown keys {sorted(unknown)}")
    tn = int(kv.get("train_nodes", nodes))
    place = Placement(colocated, tn, nodes if colocated else nodes - tn)
    tp, pp, cp = int(kv.get("tp", 1)), int(kv.get("pp", 1)), int(kv.get("cp", 1))
    train_gpus = (nodes if colocated else tn) * gpus_per_node
    if train_gpus % (tp * pp * cp):
        raise SystemExit(f"--check {spec}: {train_gpus} GPUs not divisible by TP*PP*CP")
    vpp = int(kv.get("vpp", 1))
    try:
        lay = ParallelLayout(tp=tp, pp=pp, vpp=None if vpp == 1 else vpp, cp=cp,
                             dp=train_gpus // (tp * pp * cp),
                             sequence_parallel=bool(int(kv.get("sp", int(tp > 1)))))
        setup = TrainSetup(lay, recompute=kv["recompute"],
                           distributed_optimizer=bool(int(kv["distopt"])),
                           micro_batch_size=int(kv.get("micro_batch_size", 1)))
    except ValueError as e:
        raise SystemExit(f"--check {spec}: {e}")
    etp = int(kv.get("engine_tp", 8))
    eng_gpus = (nodes if colocated else nodes - tn) * gpus_per_node
    return setup, EngineLayout(etp, eng_gpus // etp), place


def plan_main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model-config", required=True, help="HF config.json")
    ap.add_argument("--cluster", required=True, help="YAML with cluster: and workload: sections")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--all-variants", action="store_true",
                    help="list every recompute/distopt variant, not only the best of each layout")
    ap.add_argument("--check", action="append", default=[],
                    help="evaluate one layout, e.g. colocated,tp=4,pp=4,engine_tp=8")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a workload key (YAML value), e.g. --set prompts_per_step=128")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, val = item.partition("=")
        overrides[key] = yaml.safe_load(val)
    inputs = load_inputs(args.model_config, args.cluster, overrides)
    planner = Planner(inputs)
    ranking = planner.rank()
    cl = inputs.cluster
    checks = [planner.evaluate(*parse_check(s, cl.nodes, cl.gpus_per_node)) for s in args.check]
    report = json_report if args.json else text_report
    print(report(inputs, ranking, args.top, checks, args.all_variants))
    return 0


if __name__ == "__main__":
    sys.exit(plan_main())

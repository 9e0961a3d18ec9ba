"""Everything a run needs, built and validated before any compute: data, verifier, policy, engine."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch.distributed as dist

from megatron_sgpo.algo.ledger import ModelDims
from megatron_sgpo.batch import CostModel
from megatron_sgpo.config import RunConfig
from megatron_sgpo.tasks.dataset import TaskItem, load_jsonl
from megatron_sgpo.tasks.registry import get_task
from megatron_sgpo.tasks.verifiers import get_verifier
from megatron_sgpo.train.model import head_dim, load_hf_config, num_kv_heads, validate_layout
from megatron_sgpo.weights.mapping import WeightMapping


@dataclass
class RunParts:
    items: list[TaskItem]
    eval_items: list[TaskItem]
    by_id: dict
    hf_path: str
    hf_config: dict
    dims: ModelDims
    cost: CostModel
    dp: int
    dp_rank: int
    policy: object
    mapping: WeightMapping
    engine: object = None  # rank 0 only
    runner: object = None  # rank 0 only


def _data(cfg: RunConfig) -> tuple[list[TaskItem], list[TaskItem], str]:
    d = cfg.data
    if d.task == "jsonl":
        items = load_jsonl(d.train_file)
        evals = load_jsonl(d.eval_file) if d.eval_file else []
        if not d.verifier:
            raise ValueError("data.task=jsonl needs data.verifier (e.g. math, exact, gym)")
        return items, evals, d.verifier
    spec = get_task(d.task)
    items = spec.make_items(d.size, d.seed)
    evals = spec.make_items(d.eval_size, d.seed + 10_000) if d.eval_size else []
    return items, evals, d.verifier or spec.verifier


def policy_path(cfg: RunConfig) -> str:
    if cfg.model.hf_path:
        return cfg.model.hf_path
    spec = get_task(cfg.data.task) if cfg.data.task != "jsonl" else None
    if spec is None or spec.policy is None:
        raise ValueError(f"model.hf_path is empty and task {cfg.data.task!r} has no bundled policy")
    return str(spec.policy)


def build_parts(cfg: RunConfig, init_parallel) -> RunParts:
    from megatron.core import parallel_state

    from megatron_sgpo.train.policy import Policy
    from megatron_sgpo.weights.hf_io import HFCheckpoint

    path = policy_path(cfg)
    hf = HFCheckpoint(path)
    hf_config = load_hf_config(hf.config)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    validate_layout(hf_config, cfg.model.parallel, world)  # before any process group exists
    items, eval_items, verifier_name = _data(cfg)
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError("dataset prompt ids are not unique")
    dp = init_parallel(cfg.model.parallel, seed=cfg.run.seed)
    # every parameter is overwritten by the checkpoint below: skip megatron's random initialisation
    options = dataclasses.replace(cfg.model.options, init_weights=False)
    policy = Policy(hf_config, cfg.model.parallel, dp, options, cfg.optim)
    policy.load_hf(hf)
    dims = ModelDims.from_hf_config(hf_config)
    cost = CostModel.from_dims(hf_config["hidden_size"], hf_config["num_hidden_layers"],
                               hf_config["num_attention_heads"], head_dim(hf_config),
                               hf_config["intermediate_size"], hf_config["vocab_size"], kv_heads=num_kv_heads(hf_config))
    parts = RunParts(items, eval_items, {it.id: it for it in items + eval_items}, path, hf_config, dims, cost, dp,
                     parallel_state.get_data_parallel_rank(), policy,
                     WeightMapping(hf_config, cfg.model.parallel.tp, cfg.model.options.make_vocab_size_divisible_by))
    if dist.get_rank() == 0:
        from transformers import AutoTokenizer

        from megatron_sgpo.rollout_groups import GroupRunner

        parts.engine = _engine(cfg, path)
        parts.runner = GroupRunner(parts.engine, AutoTokenizer.from_pretrained(path), get_verifier(verifier_name), dims)
    return parts


def _engine(cfg: RunConfig, path: str):
    if cfg.rollout.engine == "local":
        from megatron_sgpo.rollout.local import LocalEngine

        return LocalEngine(path)
    from megatron_sgpo.rollout.sglang import SGLangClient

    r = cfg.rollout
    return SGLangClient(r.url, tp_size=r.tp_size, weight_sync=r.weight_sync, bucket_bytes=r.bucket_mb * 2**20)

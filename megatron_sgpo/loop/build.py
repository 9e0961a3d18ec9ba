"""Everything a run needs, built and validated before any compute: data, verifier, policy, engine."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from megatron_sgpo.batch import CostModel
from megatron_sgpo.config import RunConfig, check_platform
from megatron_sgpo.model.flops import ModelShape
from megatron_sgpo.model.hf_config import load_hf_config, validate_layout
from megatron_sgpo.model.mapping import WeightMapping
from megatron_sgpo.platform.dist import init_parallel, run_on_rank0
from megatron_sgpo.platform.layout import ParallelLayout
from megatron_sgpo.tasks.dataset import TaskItem, load_jsonl
from megatron_sgpo.tasks.registry import get_task


class InputError(ValueError):
    """A dataset or checkpoint the config points to is unreadable, malformed, or does not fit the layout."""


@dataclass
class RunParts:
    items: list[TaskItem]
    eval_items: list[TaskItem]
    by_id: dict
    hf_path: str
    shape: ModelShape
    cost: CostModel
    layout: ParallelLayout  # with dp resolved from the world size
    dp_rank: int
    policy: object
    mapping: WeightMapping
    reference: object = None  # the frozen reference policy, when the loss has a KL term
    engine: object = None  # rank 0 only
    runner: object = None  # rank 0 only


def _data(cfg: RunConfig) -> tuple[list[TaskItem], list[TaskItem], str]:
    d = cfg.data
    if d.task == "jsonl":
        items = load_jsonl(d.train_file)
        evals = load_jsonl(d.eval_file) if d.eval_file else []
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
        raise InputError(f"model.hf_path is empty and task {cfg.data.task!r} has no bundled policy")
    return str(spec.policy)


def build_parts(cfg: RunConfig) -> RunParts:
    """Read and check the inputs, then start the process groups, the policy and (on rank 0) the engine."""
    from megatron.core import parallel_state

    from megatron_sgpo.model.hf_io import HFCheckpoint
    from megatron_sgpo.train.policy import Policy
    from megatron_sgpo.train.reference import ReferencePolicy

    check_platform(cfg)
    path = policy_path(cfg)
    try:
        hf = HFCheckpoint(path)
        hf_config = load_hf_config(hf.config)
        layout = cfg.model.parallel.with_world(int(os.environ.get("WORLD_SIZE", "1")))
        validate_layout(hf_config, layout)  # before any process group exists
        items, eval_items, verifier_name = _data(cfg)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        raise InputError(str(exc)) from exc
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise InputError("dataset prompt ids are not unique")
    init_parallel(layout, seed=cfg.run.seed)
    # every parameter is overwritten by the checkpoint below: skip megatron's random initialisation
    options = dataclasses.replace(cfg.model.options, init_weights=False)
    t = cfg.train
    policy = Policy(hf_config, layout, layout.dp, options, cfg.optim,
                    total_steps=t.steps * t.mini_batches * t.ppo_epochs)
    if cfg.model.megatron_path:
        _load_megatron(policy, hf_config, cfg.model.megatron_path, path)
    else:
        policy.load_hf(hf)
    shape = ModelShape.from_hf_config(hf_config)
    parts = RunParts(items, eval_items, {it.id: it for it in items + eval_items}, path, shape,
                     CostModel.from_shape(shape), layout, parallel_state.get_data_parallel_rank(), policy,
                     WeightMapping(hf_config, layout.tp, cfg.model.options.make_vocab_size_divisible_by),
                     ReferencePolicy(policy) if cfg.loss.kl_coef > 0 else None)
    run_on_rank0("rollout engine start", lambda: _start_rollout(parts, cfg, verifier_name))
    return parts


def _load_megatron(policy, hf_config: dict, megatron_path: str, hf_path: str) -> None:
    """The policy's weights from a megatron checkpoint, which must be of the model ``hf_path`` describes."""
    from megatron_sgpo.model.convert import load_megatron_checkpoint

    theirs = load_hf_config(megatron_path)
    differ = [k for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                          "vocab_size") if theirs.get(k) != hf_config.get(k)]
    if differ:
        raise InputError(f"model.megatron_path {megatron_path} holds another model than model.hf_path {hf_path}: "
                         + ", ".join(f"{k} {theirs.get(k)} vs {hf_config.get(k)}" for k in differ))
    load_megatron_checkpoint(policy.modules(), megatron_path)
    policy.optimizer.reload_model_params()  # the fp32 main params megatron keeps in the optimizer


def uses_chat_template(mode: str, system_prompt: str, tokenizer, where: str) -> bool:
    """``data.chat_template`` resolved against the tokenizer: auto uses the template when there is one."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if mode == "always" and not has_template:
        raise InputError(f"data.chat_template=always, but the tokenizer in {where} has no chat template")
    use = mode == "always" or (mode == "auto" and has_template)
    if system_prompt and not use:
        raise InputError(f"data.system_prompt is set, but the tokenizer in {where} has no chat template")
    return use


def _start_rollout(parts: RunParts, cfg: RunConfig, verifier_name: str) -> None:
    """Rank 0: the engine, and the runner that renders prompts (chat template or not) and scores groups."""
    from transformers import AutoTokenizer

    from megatron_sgpo.rollout.engine import ENGINES, RolloutEngine
    from megatron_sgpo.rollout.groups import GroupRunner
    from megatron_sgpo.tasks.verifiers import get_verifier

    tokenizer = AutoTokenizer.from_pretrained(parts.hf_path)
    use_template = uses_chat_template(cfg.data.chat_template, cfg.data.system_prompt, tokenizer, parts.hf_path)
    engine = ENGINES.resolve(cfg.rollout.engine)(cfg.rollout, parts.hf_path)
    if not isinstance(engine, RolloutEngine):
        raise TypeError(f"rollout.engine={cfg.rollout.engine} made a {type(engine).__name__}, not a RolloutEngine")
    parts.engine = engine
    parts.runner = GroupRunner(engine, tokenizer, get_verifier(verifier_name), parts.shape, use_template,
                               cfg.data.system_prompt)
